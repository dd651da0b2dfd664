"""The retrieval service's FastAPI app over one or more index folders.

    app = create_app(ServiceConfig(indices={"demo": Path("out/demo/index")}))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # what `react serve` does

One router per concern, included in this order (the OpenAPI schema's):
``health`` (``/healthz``, ``/readyz``, ``/metrics``), ``indices``
(``/v1/indices`` + reload), ``search`` (``/v1/search`` + ``/upload``),
``tasks`` (``/v1/retrieve`` + ``/v1/jobs/...``), ``compat`` (clip-retrieval's
``/knn-service``, ``/indices-list``, ``/metadata``) and ``browse`` (the page
and the corpus images it shows). The state they share is one
:class:`~retrieval_service.service.RetrievalService`. Blocking work
(encoding, search, Arrow, parquet) runs in the threadpool.
"""
# No `from __future__ import annotations`: the routes take request models built per service
# (models.request_models), which FastAPI must see as objects, not as names to resolve.

import asyncio
import json
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from retrieval_service.config import ServiceConfig
from retrieval_service.http import browse, compat, health, indices, search, tasks
from retrieval_service.http.errors import install_error_handlers
from retrieval_service.http.middleware import OPEN_PATHS, Announce, Guard
from retrieval_service.http.models import request_models
from retrieval_service.service import RetrievalService


def common_dim(indices: dict[str, Path]) -> Optional[int]:
    """The embedding dimension every index folder's index.json records, or None when they differ
    (or one cannot be read yet): the request schema then leaves an embedding's length to the index."""
    dims = set()
    for path in indices.values():
        try:
            dims.add(int(json.loads((Path(path) / "index.json").read_text())["dim"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return dims.pop() if len(dims) == 1 else None


def create_app(cfg: ServiceConfig, load_in_background: bool = True) -> FastAPI:
    svc = RetrievalService(cfg)
    models = request_models(cfg.max_search_k, cfg.task_limits, common_dim(cfg.indices))
    app = FastAPI(title="react-clip retrieval service", version="1", lifespan=_lifespan(svc, load_in_background))
    app.state.cfg, app.state.registry, app.state.jobs, app.state.metrics = cfg, svc.registry, svc.jobs, svc.metrics
    install_error_handlers(app)
    for api in (health.router(svc), indices.router(svc), search.router(svc, models.SearchRequest),
                tasks.router(svc, models.RetrieveRequest), compat.router(svc, models.dim), browse.router()):
        app.include_router(api)
    if cfg.api_keys:
        _declare_api_keys(app)
    # Starlette runs the last added middleware first: PublicPage (the page's own files, no key), Guard (keys,
    # body size, metrics), Announce (to the batchers), JsonBodies (compat bodies are JSON), then the routes.
    app.add_middleware(compat.JsonBodies)
    if svc.batchers is not None:
        app.add_middleware(Announce, batchers=svc.batchers)
    app.add_middleware(Guard, api_keys=cfg.api_keys, max_body=cfg.max_body_bytes, metrics=svc.metrics)
    app.add_middleware(browse.PublicPage)
    return app


def _lifespan(svc: RetrievalService, load_in_background: bool):
    """Load the indices (in a thread: /readyz says when), reload them all on SIGHUP, close on shutdown."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = svc.start_loading()
        if not load_in_background:
            await run_in_threadpool(loader.join)
        try:  # SIGHUP reloads every index; only possible where uvicorn runs in the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, svc.reload_all_later)
        except (RuntimeError, ValueError, NotImplementedError):
            pass
        yield
        svc.close()
    return lifespan


def _declare_api_keys(app: FastAPI) -> None:
    """With --api-key-file the OpenAPI schema says so: a bearer token or X-API-Key on every operation but
    the health checks (what Guard enforces), so clients and schema-driven tests know to send one."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            for path in OPEN_PATHS:
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = []
        return app.openapi_schema

    app.openapi = openapi
