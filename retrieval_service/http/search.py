"""``POST /v1/search`` (a text, a base64 image or an embedding) and ``POST /v1/search/upload`` (a file).

Text and embedding queries go through the cross-request batchers when they are
on (``retrieval_service.batched``, on the event loop, no threadpool hop);
images, and every query with ``--no-batching``, are searched on their own in
the threadpool (``queries.search_one``).
"""
# No `from __future__ import annotations`: the routes take request models built per service.
from typing import Literal, Optional

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from retrieval_service import batched
from retrieval_service.errors import ServiceError
from retrieval_service.http.models import SearchResponse, errors
from retrieval_service.images import decode_base64
from retrieval_service.queries import search_one
from retrieval_service.service import RetrievalService


def router(svc: RetrievalService, SearchRequest: type) -> APIRouter:
    """The search routes; ``SearchRequest`` states ``svc``'s limits (``models.request_models``)."""
    cfg, registry, metrics, batchers = svc.cfg, svc.registry, svc.metrics, svc.batchers
    api = APIRouter()

    @api.post("/v1/search", response_model=SearchResponse,
              responses=errors(400, 401, 404, 409, 413, 422, 503))
    async def search(req: SearchRequest) -> dict:
        given = [f for f in ("text", "image", "embedding") if getattr(req, f) is not None]
        if len(given) != 1:
            raise ServiceError(f"give exactly one of text, image, embedding (got {', '.join(given) or 'none'})")
        idx = registry.get(req.index)
        raw = decode_base64(req.image, cfg.max_image_bytes) if req.image is not None else None
        if batchers is not None and raw is None:  # batched with concurrent requests' queries, no threadpool hop
            return await batched.search(idx, req.text, req.embedding, req.k, req.modality, cfg, metrics, batchers)
        if batchers is not None:
            batchers.release_encode()  # an image: the text encode worker need not wait for it
        return await run_in_threadpool(search_one, idx, cfg, metrics, req.k, req.modality, req.text, raw,
                                       req.embedding)

    @api.post("/v1/search/upload", response_model=SearchResponse,
              responses=errors(400, 401, 404, 409, 413, 422, 503))
    async def search_upload(file: UploadFile = File(..., description="the query image (within the size and pixel "
                                                                       "limits)"),
                            k: int = Form(10, ge=1, le=cfg.max_search_k),
                            modality: Literal["image", "text"] = Form("image"),
                            index: Optional[str] = Form(None)) -> dict:
        idx = registry.get(index)
        raw = await file.read(cfg.max_image_bytes + 1)
        return await run_in_threadpool(search_one, idx, cfg, metrics, k, modality, None, raw, None)

    return api
