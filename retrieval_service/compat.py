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
from __future__ import annotations

from typing import Optional

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from retrieval_service.batcher import Batchers
from retrieval_service.config import ServiceConfig
from retrieval_service.errors import ServiceError
from retrieval_service.images import decode_base64, fetch_url
from retrieval_service.metrics import Metrics
from retrieval_service.queries import check_k, check_modality, check_text, embed_image, embed_text, embed_vector, knn
from retrieval_service.registry import IndexRegistry

# Options clip-retrieval has and this service accepts without acting on them (value that means "off").
IGNORED_OPTIONS = {"use_safety_model": False, "use_violence_detector": False, "aesthetic_score": None,
                   "aesthetic_weight": None, "use_mclip": False}


class KnnRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown options: ignored with a warning, never an error

    text: Optional[str] = None
    image: Optional[str] = None
    image_url: Optional[str] = None
    embedding_input: Optional[list[float]] = None
    modality: str = "image"
    num_images: int = Field(40, description="results returned")
    num_result_ids: Optional[int] = Field(None, description="results searched (before deduplication)")
    indice_name: Optional[str] = None
    deduplicate: bool = True
    use_safety_model: Optional[bool] = False
    use_violence_detector: Optional[bool] = False
    aesthetic_score: Optional[float | str] = None
    aesthetic_weight: Optional[float | str] = None
    use_mclip: Optional[bool] = False


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    ids: list[int]
    indice_name: Optional[str] = None


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


def add_compat_routes(app: FastAPI, cfg: ServiceConfig, registry: IndexRegistry, metrics: Metrics,
                      batchers: Batchers | None = None) -> None:
    app.add_middleware(JsonBodies)

    @app.get("/indices-list")
    async def indices_list() -> list[str]:
        return registry.names()

    def _knn(req: KnnRequest) -> tuple[list[dict], list[str]]:
        warnings = []
        ignored = [k for k, off in IGNORED_OPTIONS.items() if getattr(req, k) not in (off, None, "", "")]
        ignored += sorted(req.model_extra or {})
        if ignored:
            warnings.append(f"ignored options not supported by this service: {', '.join(ignored)}")
        idx = registry.get(req.indice_name)
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

    @app.post("/knn-service")
    async def knn_service(req: KnnRequest) -> JSONResponse:
        if batchers is not None and not req.text:
            batchers.release_encode()  # the encode worker need not wait for this request
        results, warnings = await run_in_threadpool(_knn, req)
        headers = {"X-React-Warning": "; ".join(warnings)[:1000].encode("ascii", "replace").decode()} if warnings else None
        return JSONResponse(results, headers=headers)

    @app.post("/metadata")
    async def metadata(req: MetadataRequest) -> list[dict]:
        idx = registry.get(req.indice_name)
        if len(req.ids) > cfg.max_search_k:
            raise ServiceError(f"ids: at most {cfg.max_search_k} per request")
        bad = [i for i in req.ids if not 0 <= i < idx.searcher.rows]
        if bad:
            raise ServiceError(f"ids: {bad[0]} is not a row of index {idx.name!r} (0..{idx.searcher.rows - 1})")
        rows = idx.searcher.metadata(req.ids, columns=[c for c in ("key", "url", "caption")
                                                        if c in idx.searcher.rowmeta.column_names]).to_pylist()
        return [{"id": i, "metadata": m} for i, m in zip(req.ids, rows)]
