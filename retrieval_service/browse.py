"""The browse page (``GET /``) and the corpus images it shows.

    add_browse(app)    # in create_app, after the Guard middleware is added

- ``GET /`` and ``GET /static/{app.js,style.css}``: a plain HTML/JS page (no
  build step, no CDN) that sends a task to ``POST /v1/retrieve`` inline and
  shows, per class, a grid of thumbnails plus the coverage table.
- ``GET /v1/indices/{name}/images``: whether the index's corpus images are on
  this machine (the page asks once per index instead of failing per image).
- ``GET /v1/indices/{name}/rows/{row}/image``: the image of one row.

Key policy: the page's own three files are public -- a browser cannot attach
an API key to a navigation, and they hold no data -- so they are served by
:class:`PublicPage`, a middleware placed *outside* the key guard. Everything
the page fetches (indices, retrieve, images) goes through the guard like any
other API call; the page sends the key it keeps in ``localStorage`` as
``X-API-Key`` and turns image responses into blob URLs, since an ``<img>``
cannot send a header.

Where images come from: a row's ``image_path`` as ``react embed`` stored it,
relative to the corpus the embedding folder was made from (index.json
``embeddings`` -> embed.json ``input``/``input_form``). The client only ever
names an index (looked up) and a row number (bounds-checked); a stored path
that resolves outside the corpus folder, or is not an image, is refused.
"""
from __future__ import annotations

import json
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from retrieval_service.api_models import IndexImages, errors
from retrieval_service.errors import ServiceError, not_found

STATIC = Path(__file__).parent / "static"
# name -> media type; the only files the page routes serve (a dict lookup, never a path join of user input)
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".bmp": "image/bmp", ".gif": "image/gif"}
CORPUS_FORMS = ("parquet", "imagefolder", "webdataset")  # embed.json input forms whose image_path is a local file
MAX_TAR_MEMBER = 64 << 20  # a webdataset image is read into memory; anything bigger is not a thumbnail
# The page talks only to this origin; remote thumbnails (a row's url) may come from anywhere over http(s).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data: http: https:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class ImageRoot:
    """Where the image_path values of one index's rows live, or why they cannot be served."""

    form: Optional[str]
    base: Optional[Path]      # resolved folder the paths are relative to (webdataset: the shard folder)
    reason: Optional[str] = None

    @property
    def local(self) -> bool:
        return self.base is not None


def _find(path: Path, anchors: list[Path]) -> Optional[Path]:
    """An absolute path as it is; a relative one (recorded from the cwd of `react embed`) tried
    against the current folder and the embedding folder's ancestors, as index models are."""
    if path.is_absolute():
        return path if path.exists() else None
    for base in anchors:
        if (base / path).exists():
            return base / path
    return None


def locate_images(searcher) -> ImageRoot:
    """Follow index.json -> embed.json -> the corpus input; never raises (a missing link is a reason)."""
    if "image_path" not in searcher.rowmeta.column_names:
        return ImageRoot(None, None, "the index's metadata has no image_path column")
    emb = searcher.manifest.get("embeddings")
    if not emb:
        return ImageRoot(None, None, "index.json records no embedding folder")
    try:
        embed = json.loads((Path(emb) / "embed.json").read_text())
    except (OSError, ValueError) as exc:
        return ImageRoot(None, None, f"cannot read {emb}/embed.json ({exc.__class__.__name__})")
    form, given = embed.get("input_form"), embed.get("input")
    if form not in CORPUS_FORMS or not given:
        return ImageRoot(form, None, f"the embeddings were made from {form or 'unknown'} input, not local images")
    found = _find(Path(given).expanduser(), [Path.cwd(), *Path(emb).resolve().parents])
    if found is None:
        return ImageRoot(form, None, f"the corpus {given} is not on this machine")
    base = found if found.is_dir() else found.parent  # parquet: paths are relative to the parquet's folder
    return ImageRoot(form, base.resolve())


class _Roots:
    """ImageRoot per loaded index object; a reload (new generation) is looked up afresh."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], ImageRoot] = {}
        self._lock = threading.Lock()

    def get(self, idx) -> ImageRoot:
        key = (idx.name, idx.generation)
        with self._lock:
            root = self._cache.get(key)
        if root is None:
            root = locate_images(idx.searcher)
            with self._lock:
                # Drop older generations of this index: they are no longer served.
                self._cache = {k: v for k, v in self._cache.items() if k[0] != idx.name} | {key: root}
        return root


def _row_image_path(idx, row: int) -> str:
    if not 0 <= row < idx.searcher.rows:
        raise not_found(f"index {idx.name!r} has no row {row} (rows 0..{idx.searcher.rows - 1})")
    value = idx.searcher.metadata(np.asarray([row]), columns=["image_path"]).column(0)[0].as_py()
    if not value:
        raise not_found(f"row {row} of index {idx.name!r} has no image_path")
    return str(value)


def _media_type(name: str) -> str:
    media = IMAGE_TYPES.get(Path(name).suffix.lower())
    if media is None:
        raise ServiceError(f"{Path(name).suffix or 'no extension'}: not an image type this service serves", 403)
    return media


def _inside(base: Path, rel: str) -> Path:
    """``base / rel`` resolved (symlinks included), refused when it leaves ``base``."""
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise ServiceError("the row's image_path leaves the corpus folder; refused", 403)
    return path


def _local_file(base: Path, ref: str, row: int) -> Path:
    _media_type(ref)  # refuse non-images before touching the disk
    path = _inside(base, ref)
    if not path.is_file():
        raise not_found(f"the image of row {row} is missing on disk")
    return path


def _tar_member(base: Path, ref: str) -> bytes:
    """``shard.tar:member`` (what the webdataset reader records) -> the member's bytes."""
    shard, sep, member = ref.partition(":")
    if not sep or not member:
        raise not_found(f"image_path {ref!r} is not shard:member")
    path = _inside(base, shard)
    if not path.is_file():
        raise not_found("the row's shard is missing")
    with tarfile.open(path) as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise not_found("the row's member is missing from its shard") from None
        if not info.isfile() or info.size > MAX_TAR_MEMBER:
            raise ServiceError("the row's member is not a servable image file", 403)
        return tar.extractfile(info).read()


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


def make_router() -> APIRouter:
    """The guarded API routes the page uses; one router (and one root cache) per app."""
    router = APIRouter()
    roots = _Roots()

    @router.get("/v1/indices/{name}/images", response_model=IndexImages, responses=errors(401, 404, 503))
    async def index_images(name: str, request: Request) -> dict:
        idx = request.app.state.registry.get(name)
        root = await run_in_threadpool(roots.get, idx)
        return {"index": idx.name, "local": root.local, "form": root.form, "reason": root.reason,
                "image_url": f"/v1/indices/{idx.name}/rows/{{row}}/image" if root.local else None}

    @router.get("/v1/indices/{name}/rows/{row}/image", response_class=Response, responses={
        200: {"description": "the row's image from the local corpus",
              "content": {media: {"schema": {"type": "string", "format": "binary"}}
                          for media in sorted(set(IMAGE_TYPES.values()))}},
    } | errors(401, 403, 404, 503))
    async def row_image(name: str, row: int, request: Request) -> Response:
        idx = request.app.state.registry.get(name)  # a dictionary key: 404 when unknown
        root = await run_in_threadpool(roots.get, idx)
        if not root.local:
            raise not_found(f"index {idx.name!r} serves no images: {root.reason}")
        ref = _row_image_path(idx, row)
        headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if root.form == "webdataset":
            media = _media_type(ref.partition(":")[2])
            return Response(await run_in_threadpool(_tar_member, root.base, ref), media_type=media, headers=headers)
        path = await run_in_threadpool(_local_file, root.base, ref, row)
        return FileResponse(path, media_type=_media_type(ref), headers=headers)  # streamed in chunks

    return router


def add_browse(app: FastAPI) -> None:
    """Mount the page and its routes; call after ``app.add_middleware(Guard, ...)`` so that
    PublicPage wraps the guard (Starlette runs the last added middleware first)."""
    app.include_router(make_router())
    app.add_middleware(PublicPage)
