"""clip-retrieval's back-end API, so its clients (``ClipClient``, the front-end) work unchanged.

- ``GET /indices-list`` -> ``["name", ...]``
- ``POST /knn-service`` with ``text`` | ``image`` (base64) | ``image_url`` |
  ``embedding_input``, ``modality`` (``image``: the image index, ``text``: the
  text index), ``num_images``, ``num_result_ids``, ``indice_name``,
  ``deduplicate`` -> a JSON list of ``{"url", "caption", "similarity", "id"}``
  (plus ``key``).
- ``POST /metadata`` with ``ids`` and ``indice_name`` -> ``[{"id", "metadata"}]``.

Options this service does not have (``use_safety_model``,
``use_violence_detector``, ``aesthetic_score``/``aesthetic_weight``,
``use_mclip``, or any unknown field) are accepted and ignored: every result
then carries a ``warning`` field, and the response an ``X-React-Warning``
header, so the answer keeps the list shape existing clients parse.
``image_url`` is fetched only when the operator started the service with
``--allow-image-url``, within the image size limit and a timeout.

Bodies are JSON whatever their Content-Type says, as on clip-retrieval's
back-end (Flask's ``get_json(force=True)``): its own ``ClipClient`` posts
``data=json.dumps(...)`` with no Content-Type at all (``JsonBodies``).
"""
# No `from __future__ import annotations`: see app.py (request models built per service).
import json
from typing import Optional

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from retrieval_service.errors import ServiceError
from retrieval_service.http.compat_models import IGNORED_OPTIONS, KnnHit, MetadataRow, compat_models
from retrieval_service.http.models import errors
from retrieval_service.images import decode_base64, fetch_url
from retrieval_service.queries import check_k, check_modality, check_text, embed_image, embed_text, embed_vector, knn
from retrieval_service.service import RetrievalService


def header_value(text: str, limit: int = 1000) -> str:
    """``text`` as a legal HTTP header value: printable ASCII only (anything else, a client's control
    character included, becomes '?'), no surrounding whitespace, at most ``limit`` characters. h11
    refuses any other value and the connection then closes without an answer (issue 16, the fuzzer)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit]).strip()


COMPAT_POSTS = frozenset({"/knn-service", "/metadata"})
_NOT_JSON = {b"", b"text/plain", b"application/x-www-form-urlencoded"}  # ClipClient; curl -d


class JsonBodies:
    """Pure ASGI: declares the body of a compat POST JSON when its Content-Type is absent, text/plain or
    form-encoded, so FastAPI parses and validates it as the documented JSON model (the OpenAPI schema
    and the answers stay those of a JSON request) instead of answering 422 "valid dictionary"."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in COMPAT_POSTS:
            ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if ctype.split(b";")[0].strip().lower() in _NOT_JSON:
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        await self.app(scope, receive, send)


def ignored_options(req) -> list[str]:
    """The clip-retrieval options (and unknown fields) a /knn-service request sets that this service lacks."""
    ignored = [k for k, off in IGNORED_OPTIONS.items() if getattr(req, k) not in (off, None, "", "")]
    # An unknown option's name is the client's string: quoted unless it is a plain identifier ("" too).
    ignored += [n if n.isidentifier() else json.dumps(n) for n in sorted(req.model_extra or {})]
    return ignored


def knn_answer(svc: RetrievalService, req) -> tuple[list[dict], list[str]]:
    """One /knn-service request (blocking: run it in the threadpool) -> (results, warnings)."""
    cfg, metrics = svc.cfg, svc.metrics
    warnings = []
    ignored = ignored_options(req)
    if ignored:
        warnings.append(f"ignored options not supported by this service: {', '.join(ignored)}")
    idx = svc.registry.get(req.indice_name)
    modality = check_modality(idx, req.modality)
    num_images = check_k(req.num_images, cfg, "num_images")
    fetch = check_k(req.num_result_ids, cfg, "num_result_ids") if req.num_result_ids is not None else num_images
    if req.text:  # clip-retrieval's order of precedence: text, image, image_url, embedding
        vec, kind = embed_text(idx, check_text(req.text, cfg), metrics), "text"
    elif req.image:
        vec, kind = embed_image(idx, decode_base64(req.image, cfg.max_image_bytes), cfg, metrics), "image"
    elif req.image_url:
        raw = fetch_url(req.image_url, cfg.allow_image_url, cfg.max_image_bytes, cfg.image_url_timeout_s)
        vec, kind = embed_image(idx, raw, cfg, metrics), "image"
    elif req.embedding_input is not None:
        vec, kind = embed_vector(idx, req.embedding_input), "embedding"
    else:
        raise ServiceError("give one of text, image, image_url, embedding_input")
    hits, warning = knn(idx, vec, num_images, modality, "text" if kind == "text" else "image", metrics,
                        deduplicate=req.deduplicate, fetch=max(fetch, num_images))
    if warning:
        warnings.append(warning)
    results = []
    for h in hits:
        item = {"url": h["url"] if h["url"] is not None else h["image_path"], "caption": h["caption"],
                "similarity": h["similarity"], "id": h["row"], "key": h["key"]}
        if warnings:
            item["warning"] = "; ".join(warnings)
        results.append(item)
    return results, warnings


def router(svc: RetrievalService, dim: Optional[int] = None) -> APIRouter:
    """``/indices-list``, ``/knn-service`` and ``/metadata``, with request models stating ``svc``'s limits
    (``dim``: every index's dimension, None when they differ). The app adds :class:`JsonBodies` too."""
    registry, batchers = svc.registry, svc.batchers
    KnnRequest, MetadataRequest = compat_models(svc.cfg.max_search_k, svc.cfg.limits.max_text_chars, dim)
    api = APIRouter()

    @api.get("/indices-list", responses=errors(401))
    async def indices_list() -> list[str]:
        return registry.names()

    @api.post("/knn-service", response_model=list[KnnHit], responses=errors(400, 401, 403, 404, 409, 413, 422, 503,
                                                                          504))
    async def knn_service(req: KnnRequest) -> JSONResponse:
        if batchers is not None and not req.text:
            batchers.release_encode()  # the encode worker need not wait for this request
        results, warnings = await run_in_threadpool(knn_answer, svc, req)
        headers = {"X-React-Warning": header_value("; ".join(warnings))} if warnings else None
        return JSONResponse(results, headers=headers)

    @api.post("/metadata", response_model=list[MetadataRow], responses=errors(400, 401, 404, 413, 422, 503))
    async def metadata(req: MetadataRequest) -> list[dict]:
        idx = registry.get(req.indice_name)
        bad = [i for i in req.ids if not 0 <= i < idx.searcher.rows]
        if bad:  # like GET /v1/indices/{name}/rows/{row}/image: an unknown row is not found
            raise ServiceError(f"ids: {bad[0]} is not a row of index {idx.name!r} (0..{idx.searcher.rows - 1})", 404)
        rows = idx.searcher.metadata(req.ids, columns=[c for c in ("key", "url", "caption")
                                                        if c in idx.searcher.rowmeta.column_names]).to_pylist()
        return [{"id": i, "metadata": m} for i, m in zip(req.ids, rows)]

    return api
