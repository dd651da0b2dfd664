"""``GET /v1/indices`` (what is served) and ``POST /v1/indices/{name}/reload`` (admin: re-open an index
folder; the new one is loaded fully, then swapped in, and requests in flight finish on the old one)."""
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from retrieval_service.http.models import IndexInfo, errors
from retrieval_service.service import RetrievalService


def router(svc: RetrievalService) -> APIRouter:
    api = APIRouter()
    registry = svc.registry

    @api.get("/v1/indices", response_model=list[IndexInfo], responses=errors(401, 503))
    async def indices() -> list[dict]:
        return [registry.get(name).info() for name in registry.names()]

    @api.post("/v1/indices/{name}/reload", response_model=IndexInfo, responses=errors(401, 404, 409, 413, 503))
    async def reload(name: str) -> dict:
        return (await run_in_threadpool(registry.reload, name)).info()

    return api
