"""The browse page (``GET /``) and the corpus images it shows.

- ``GET /`` and ``GET /static/{app.js,coverage.js,style.css}``: a plain HTML/JS page (no
  build step, no CDN) that sends a task to ``POST /v1/retrieve`` inline and
  shows, per class, a grid of thumbnails plus the coverage table (with an
  ``= alias`` row per alias and a ``cut`` column under a per-class quota).
- ``GET /v1/indices/{name}/images``: whether the index's corpus images are on
  this machine (the page asks once per index instead of failing per image).
- ``GET /v1/indices/{name}/rows/{row}/image``: the image of one row
  (``retrieval_service.corpus_images`` finds it and refuses what it must).

Key policy: the page's own four files are public -- a browser cannot attach
an API key to a navigation, and they hold no data -- so they are served by
:class:`PublicPage`, a middleware placed *outside* the key guard (added after
``Guard``: Starlette runs the last added middleware first). Everything the
page fetches (indices, retrieve, images) goes through the guard like any
other API call; the page sends the key it keeps in ``localStorage`` as
``X-API-Key`` and turns image responses into blob URLs, since an ``<img>``
cannot send a header.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from retrieval_service.corpus_images import IMAGE_TYPES, ImageRoots, local_file, media_type, row_image_path, tar_member
from retrieval_service.errors import not_found
from retrieval_service.http.models import IndexImages, errors

STATIC = Path(__file__).parent / "static"
# name -> media type; the only files the page routes serve (a dict lookup, never a path join of user input)
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "coverage.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
# The page talks only to this origin; remote thumbnails (a row's url) may come from anywhere over http(s).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data: http: https:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _page_file(name: str):
    async def endpoint(request: Request) -> Response:
        return FileResponse(STATIC / name, media_type=PAGE_FILES[name], headers=PAGE_HEADERS)
    return endpoint


# Served by PublicPage, ahead of the guard (see the module docstring).
page = Router(routes=[Route("/", _page_file("index.html"), methods=["GET", "HEAD"])]
              + [Route(f"/static/{name}", _page_file(name), methods=["GET", "HEAD"]) for name in PAGE_FILES])
PAGE_PATHS = frozenset(route.path for route in page.routes)


class PublicPage:
    """Pure ASGI: GET/HEAD of exactly the page's paths go to ``page``, all else to the guarded app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in PAGE_PATHS and scope["method"] in ("GET", "HEAD"):
            await page(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def router() -> APIRouter:
    """The guarded API routes the page uses; one router (and one root cache) per app."""
    api = APIRouter()
    roots = ImageRoots()

    @api.get("/v1/indices/{name}/images", response_model=IndexImages, responses=errors(401, 404, 503))
    async def index_images(name: str, request: Request) -> dict:
        idx = request.app.state.registry.get(name)
        root = await run_in_threadpool(roots.get, idx)
        return {"index": idx.name, "local": root.local, "form": root.form, "reason": root.reason,
                "image_url": f"/v1/indices/{idx.name}/rows/{{row}}/image" if root.local else None}

    @api.get("/v1/indices/{name}/rows/{row}/image", response_class=Response, responses={
        200: {"description": "the row's image from the local corpus",
              "content": {media: {"schema": {"type": "string", "format": "binary"}}
                          for media in sorted(set(IMAGE_TYPES.values()))}},
    } | errors(401, 403, 404, 503))
    async def row_image(name: str, row: int, request: Request) -> Response:
        idx = request.app.state.registry.get(name)  # a dictionary key: 404 when unknown
        root = await run_in_threadpool(roots.get, idx)
        if not root.local:
            raise not_found(f"index {idx.name!r} serves no images: {root.reason}")
        ref = row_image_path(idx, row)
        headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if root.form == "webdataset":
            media = media_type(ref.partition(":")[2])
            return Response(await run_in_threadpool(tar_member, root.base, ref), media_type=media, headers=headers)
        path = await run_in_threadpool(local_file, root.base, ref, row)
        return FileResponse(path, media_type=media_type(ref), headers=headers)  # streamed in chunks

    return api
