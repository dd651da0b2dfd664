"""``/healthz`` (the process answers), ``/readyz`` (every index loaded) and Prometheus ``/metrics``."""
from fastapi import APIRouter
from fastapi.responses import Response

from retrieval_service.http.errors import error_response
from retrieval_service.http.models import Ready, errors
from retrieval_service.service import RetrievalService


def router(svc: RetrievalService) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/readyz", response_model=Ready, responses=errors(503))
    async def readyz():
        if svc.registry.ready.is_set():
            return {"ready": True, "indices": svc.registry.names()}
        return error_response(503, svc.registry.load_error or "indices are loading")

    @api.get("/metrics", response_class=Response, responses={
        200: {"description": "Prometheus text exposition format",
              "content": {"text/plain": {"schema": {"type": "string"}}}},
    } | errors(401))
    async def metrics_endpoint() -> Response:
        svc.refresh_job_gauges()
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    return api
