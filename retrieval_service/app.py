"""The retrieval service: FastAPI app over one or more index folders.

    app = create_app(ServiceConfig(indices={"demo": Path("out/demo/index")}))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # what `react serve` does

Routes: ``/v1/retrieve`` + ``/v1/jobs/...`` (task retrieval as jobs),
``/v1/search`` (+ ``/v1/search/upload``), ``/v1/indices`` (+ reload),
``/healthz``, ``/readyz``, ``/metrics``, and clip-retrieval's
``/knn-service``, ``/indices-list``, ``/metadata`` (``compat.py``).
Blocking work (encoding, search, Arrow, parquet) runs in the threadpool.
"""
# No `from __future__ import annotations`: the routes take request models built per service
# (api_models.request_models), which FastAPI must see as objects, not as names to resolve.

import asyncio
import json
import logging
import signal
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal, Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from react.errors import ReactError
from retrieval_service.api_models import (Deleted, IndexInfo, InlineResult, JobInfo, Ready, SearchResponse, errors,
                                          request_models)
from retrieval_service.batcher import Batchers
from retrieval_service.config import ServiceConfig
from retrieval_service.errors import ServiceError
from retrieval_service.guard import Guard
from retrieval_service.images import decode_base64
from retrieval_service.jobs import JobStore, check_result
from retrieval_service.metrics import Metrics
from retrieval_service.queries import (check_k, check_modality, check_text, embed_image, embed_text, embed_vector,
                                       knn)
from retrieval_service.registry import IndexRegistry
from retrieval_service.task import validate_spec

log = logging.getLogger("react.serve")


def _error(status: int, message: str, detail=None, headers: Optional[dict] = None) -> JSONResponse:
    body = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


def _allowed_methods(app: FastAPI, path: str) -> str:
    """The Allow header of a 405: every method some route serves at ``path`` (Starlette's own names
    only the first matching route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


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


def _validation_message(exc: RequestValidationError) -> tuple[int, str, list]:
    errors = exc.errors()
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed JSON body", detail
    # A union (templates: a set name or a list) reports every branch: name the branch whose type matched.
    informative = [e for e in errors
                   if not str(e.get("type", "")).endswith("_type") and e.get("type") != "literal_error"]
    first = (informative or errors or [{}])[0]
    # pydantic names union branches in the location ("list[str]", "literal['a','b']"): not a field
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body" and not (isinstance(p, str) and "[" in p))
    where = where or "body"
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")  # a model validator's own message
    return 422, f"{where}: {msg}", detail


def create_app(cfg: ServiceConfig, load_in_background: bool = True) -> FastAPI:
    metrics = Metrics()
    batchers = Batchers(cfg.batch_max, cfg.batch_wait_ms / 1000, metrics.observe_batch,
                        cfg.batch_threads) if cfg.batching else None
    registry = IndexRegistry(cfg.indices, cfg.models, cfg.device, metrics, batchers)
    jobs = JobStore(cfg.state_dir, cfg.job_workers, cfg.max_active_jobs)
    models = request_models(cfg.max_search_k, cfg.limits, common_dim(cfg.indices))
    SearchRequest, RetrieveRequest = models.SearchRequest, models.RetrieveRequest

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=_load_quietly, args=(registry, cfg.gc_freeze), name="react-load",
                                  daemon=True)
        loader.start()
        if not load_in_background:
            await run_in_threadpool(loader.join)
        try:  # SIGHUP reloads every index; only possible where uvicorn runs in the main thread
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: threading.Thread(target=registry.reload_all, daemon=True).start())
        except (RuntimeError, ValueError, NotImplementedError):
            pass
        yield
        jobs.shutdown()
        if batchers is not None:
            batchers.close()

    app = FastAPI(title="react-clip retrieval service", version="1", lifespan=lifespan)
    app.state.cfg, app.state.registry, app.state.jobs, app.state.metrics = cfg, registry, jobs, metrics

    @app.exception_handler(ReactError)
    async def react_error(request: Request, exc: ReactError):
        return _error(getattr(exc, "status", 400), str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        status, message, detail = _validation_message(exc)
        return _error(status, message, detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(app, request.url.path)
        return _error(exc.status_code, str(exc.detail), headers=headers or None)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):  # a bug: logged with its traceback, answered as JSON
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {exc.__class__.__name__}")

    # --- health ---------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses=errors(503))
    async def readyz():
        if registry.ready.is_set():
            return {"ready": True, "indices": registry.names()}
        return _error(503, registry.load_error or "indices are loading")

    @app.get("/metrics", response_class=Response, responses={
        200: {"description": "Prometheus text exposition format",
              "content": {"text/plain": {"schema": {"type": "string"}}}},
    } | errors(401))
    async def metrics_endpoint() -> Response:
        for state in ("queued", "running", "done", "failed", "cancelled"):
            metrics.jobs.labels(state).set(jobs.counts().get(state, 0))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    # --- indices --------------------------------------------------------------------------------
    @app.get("/v1/indices", response_model=list[IndexInfo], responses=errors(401, 503))
    async def indices() -> list[dict]:
        return [registry.get(name).info() for name in registry.names()]

    @app.post("/v1/indices/{name}/reload", response_model=IndexInfo, responses=errors(401, 404, 409, 413, 503))
    async def reload(name: str) -> dict:
        return (await run_in_threadpool(registry.reload, name)).info()

    # --- single queries -------------------------------------------------------------------------
    def _search(idx, req_k: int, modality: str, text=None, raw: Optional[bytes] = None, embedding=None):
        check_k(req_k, cfg)
        check_modality(idx, modality)
        if text is not None:
            vec, kind = embed_text(idx, check_text(text, cfg), metrics), "text"
        elif raw is not None:
            vec, kind = embed_image(idx, raw, cfg, metrics), "image"
        else:
            vec, kind = embed_vector(idx, embedding), "embedding"
        hits, _ = knn(idx, vec, req_k, modality, "text" if kind == "text" else "image", metrics)
        return {"index": idx.name, "modality": modality, "query": kind, "k": req_k, "results": hits}

    @app.post("/v1/search", response_model=SearchResponse,
              responses=errors(400, 401, 404, 409, 413, 422, 503))
    async def search(req: SearchRequest) -> dict:
        given = [f for f in ("text", "image", "embedding") if getattr(req, f) is not None]
        if len(given) != 1:
            raise ServiceError(f"give exactly one of text, image, embedding (got {', '.join(given) or 'none'})")
        idx = registry.get(req.index)
        raw = decode_base64(req.image, cfg.max_image_bytes) if req.image is not None else None
        if batchers is not None and raw is None:  # batched with concurrent requests' queries, no threadpool hop
            from retrieval_service import batched

            return await batched.search(idx, req.text, req.embedding, req.k, req.modality, cfg, metrics, batchers)
        if batchers is not None:
            batchers.release_encode()  # an image: the text encode worker need not wait for it
        return await run_in_threadpool(_search, idx, req.k, req.modality, req.text, raw, req.embedding)

    @app.post("/v1/search/upload", response_model=SearchResponse,
              responses=errors(400, 401, 404, 409, 413, 422, 503))
    async def search_upload(file: UploadFile = File(..., description="the query image (within the size and pixel "
                                                                       "limits)"),
                            k: int = Form(10, ge=1, le=cfg.max_search_k),
                            modality: Literal["image", "text"] = Form("image"),
                            index: Optional[str] = Form(None)) -> dict:
        idx = registry.get(index)
        raw = await file.read(cfg.max_image_bytes + 1)
        return await run_in_threadpool(_search, idx, k, modality, None, raw, None)

    # --- task retrieval -------------------------------------------------------------------------
    def _spec(req: RetrieveRequest):
        from react.templates import TEMPLATE_SETS

        if isinstance(req.templates, str) and req.templates.lower() not in TEMPLATE_SETS:
            # A name only: the service never opens a file a client names.
            raise ServiceError(f"templates: unknown set {req.templates!r} (known: {', '.join(TEMPLATE_SETS)}; "
                               "or send a list)")
        return validate_spec(req.classes, req.templates, req.k, req.mode, req.threshold, req.dedup_threshold,
                             cfg.limits, include_queries=req.include_queries)

    def _job_info(job) -> dict:
        info = job.public()
        info["progress"] = round(info["done"] / info["total"], 4) if info.get("total") else 0.0
        if info["state"] == "done":
            info["result_url"] = f"/v1/jobs/{job.id}/subset.parquet"
        return info

    @app.post("/v1/retrieve", status_code=202, responses={200: {"model": InlineResult}, 202: {"model": JobInfo}}
              | errors(400, 401, 404, 409, 413, 422, 429, 503))
    async def retrieve(req: RetrieveRequest):
        idx = registry.get(req.index)
        spec = _spec(req)
        if req.inline and spec.n_queries <= cfg.inline_max_queries:
            result = await run_in_threadpool(idx.retriever.run, spec)
            return JSONResponse({"rows": result.table.drop_columns(["queries"] if "queries" in
                                                                   result.table.column_names else []).to_pylist(),
                                 "report": result.report()}, status_code=200)
        request = req.model_dump() | {"index": idx.name, "templates": spec.templates, "classes": spec.classes}

        def work(job):
            return idx.retriever.run(spec, jobs.progress_fn(job), job.cancel.is_set)

        job = jobs.submit(request, work, spec.n_queries)
        return JSONResponse(_job_info(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs", response_model=list[JobInfo], responses=errors(401))
    async def list_jobs() -> list[dict]:
        return [_job_info(jobs.get(j["id"])) for j in jobs.list()]

    @app.get("/v1/jobs/{job_id}", response_model=JobInfo, responses=errors(401, 404))
    async def job_status(job_id: str) -> dict:
        return _job_info(jobs.get(job_id))

    @app.get("/v1/jobs/{job_id}/subset.parquet", response_class=Response, responses={
        200: {"description": "the subset (img2dataset reads it as it is)",
              "content": {"application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}}},
    } | errors(401, 404, 409, 410))
    async def job_result(job_id: str) -> FileResponse:
        path = check_result(jobs.get(job_id))
        return FileResponse(path, media_type="application/vnd.apache.parquet", filename="subset.parquet")

    @app.delete("/v1/jobs/{job_id}", response_model=Deleted, responses=errors(401, 404))
    async def delete_job(job_id: str) -> dict:
        await run_in_threadpool(jobs.delete, job_id)
        return {"deleted": job_id}

    if cfg.api_keys:
        _declare_api_keys(app)
    from retrieval_service.compat import add_compat_routes

    add_compat_routes(app, cfg, registry, metrics, batchers, models.dim)
    if batchers is not None:
        from retrieval_service.batched import Announce

        app.add_middleware(Announce, batchers=batchers)
    app.add_middleware(Guard, api_keys=cfg.api_keys, max_body=cfg.max_body_bytes, metrics=metrics)
    from retrieval_service.browse import add_browse  # after Guard: the page's own files bypass it
    add_browse(app)
    return app


def _declare_api_keys(app: FastAPI) -> None:
    """With --api-key-file the OpenAPI schema says so: a bearer token or X-API-Key on every operation but
    the health checks (what Guard enforces), so clients and schema-driven tests know to send one."""
    from retrieval_service.guard import OPEN_PATHS

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


def _load_quietly(registry: IndexRegistry, gc_freeze: bool = False) -> None:
    try:
        registry.load_all()
    except Exception:
        pass  # any failure is recorded in registry.load_error (and logged there); /readyz reports it
    if gc_freeze:
        import gc

        # What is loaded now (models, tokenizer vocabularies, the framework) lives as long as the
        # process: moved out of the collector's view, a full collection no longer walks its ~430k
        # objects with the GIL held (up to 0.9 s measured). 16 text clients, 100k index: p99 114 ms
        # frozen, 457 ms not (medians of 4 alternating runs, same q/s). Reloaded indices are not
        # frozen, so an old index's reference cycles can still be collected.
        gc.collect()
        gc.freeze()
