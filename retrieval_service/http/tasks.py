"""Task retrieval over HTTP: ``POST /v1/retrieve`` and its jobs (``/v1/jobs``, ``/v1/jobs/{id}``,
``/v1/jobs/{id}/subset.parquet``, ``DELETE /v1/jobs/{id}``).

A task runs as a job (202 + ``Location``) unless it is small and asks for
``inline`` rows; jobs and their subsets live under ``--state-dir``
(``retrieval_service.jobs``), the work itself is ``TaskRetriever.run``.
"""
# No `from __future__ import annotations`: the routes take request models built per service.
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from retrieval_service.errors import ServiceError
from retrieval_service.examples import check_examples
from retrieval_service.http.models import Deleted, InlineResult, JobInfo, errors
from retrieval_service.images import decode_base64
from retrieval_service.jobs import check_result
from retrieval_service.service import RetrievalService
from retrieval_service.spec import TaskSpec, validate_spec


def task_spec(req, limits) -> TaskSpec:
    """The checked task of a RetrieveRequest; templates name a built-in set or are given as a list;
    example images arrive as base64 (decoded as /v1/search decodes a query image)."""
    from react.templates import TEMPLATE_SETS

    if isinstance(req.templates, str) and req.templates.lower() not in TEMPLATE_SETS:
        # A name only: the service never opens a file a client names.
        raise ServiceError(f"templates: unknown set {req.templates!r} (known: {', '.join(TEMPLATE_SETS)}; "
                           "or send a list)")
    examples = {}
    for name, images in (req.examples or {}).items():
        examples[name] = []
        for i, data in enumerate(images):
            try:
                examples[name].append(decode_base64(data, limits.max_example_bytes))
            except ServiceError as exc:
                raise ServiceError(f"examples[{name!r}][{i}]: {exc}", exc.status) from None
    return validate_spec(req.classes, req.templates, req.k, req.mode, req.threshold, req.dedup_threshold,
                         limits, aliases=req.aliases, per_class=req.per_class,
                         include_queries=req.include_queries, exclude=list(req.exclude),
                         exclude_threshold=req.exclude_threshold, examples=examples, example_mode=req.example_mode)


def job_info(job) -> dict:
    """A job as the API shows it: its public fields, progress in [0, 1], the result's URL once done."""
    info = job.public()
    info["progress"] = round(info["done"] / info["total"], 4) if info.get("total") else 0.0
    if info["state"] == "done":
        info["result_url"] = f"/v1/jobs/{job.id}/subset.parquet"
    return info


def inline_answer(result) -> JSONResponse:
    """A small task's rows (without the queries column) and report in the response body."""
    table = result.table
    return JSONResponse({"rows": table.drop_columns(["queries"] if "queries" in table.column_names else [])
                         .to_pylist(), "report": result.report()}, status_code=200)


def router(svc: RetrievalService, RetrieveRequest: type) -> APIRouter:
    """The task routes; ``RetrieveRequest`` states ``svc``'s limits (``models.request_models``)."""
    cfg, registry, jobs = svc.cfg, svc.registry, svc.jobs
    api = APIRouter()

    @api.post("/v1/retrieve", status_code=202, responses={200: {"model": InlineResult}, 202: {"model": JobInfo}}
              | errors(400, 401, 404, 409, 413, 422, 429, 503))
    async def retrieve(req: RetrieveRequest):
        idx = registry.get(req.index)
        spec = task_spec(req, cfg.task_limits)
        exclusion = idx.exclusion(spec.exclude)
        if spec.examples:
            idx.require_model()  # 409 now, not a failed job
            await run_in_threadpool(check_examples, spec)  # an undecodable example: 400 naming it
        if req.inline and spec.n_queries <= cfg.inline_max_queries:
            return inline_answer(await run_in_threadpool(idx.retriever.run, spec, None, None, exclusion))
        request = req.model_dump() | {"index": idx.name, "templates": spec.templates, "classes": spec.classes,
                                      "examples": {c: len(v) for c, v in spec.examples.items()}}  # counts, not bytes

        def work(job):
            return idx.retriever.run(spec, jobs.progress_fn(job), job.cancel.is_set, exclusion)

        job = jobs.submit(request, work, spec.n_queries)
        return JSONResponse(job_info(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @api.get("/v1/jobs", response_model=list[JobInfo], responses=errors(401))
    async def list_jobs() -> list[dict]:
        return [job_info(jobs.get(j["id"])) for j in jobs.list()]

    @api.get("/v1/jobs/{job_id}", response_model=JobInfo, responses=errors(401, 404))
    async def job_status(job_id: str) -> dict:
        return job_info(jobs.get(job_id))

    @api.get("/v1/jobs/{job_id}/subset.parquet", response_class=Response, responses={
        200: {"description": "the subset (img2dataset reads it as it is)",
              "content": {"application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}}},
    } | errors(401, 404, 409, 410))
    async def job_result(job_id: str) -> FileResponse:
        path = check_result(jobs.get(job_id))
        return FileResponse(path, media_type="application/vnd.apache.parquet", filename="subset.parquet")

    @api.delete("/v1/jobs/{job_id}", response_model=Deleted, responses=errors(401, 404))
    async def delete_job(job_id: str) -> dict:
        await run_in_threadpool(jobs.delete, job_id)
        return {"deleted": job_id}

    return api
