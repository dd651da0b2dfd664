"""Retrieval jobs: queued, run in worker threads, kept on disk until deleted.

A job is a folder ``STATE_DIR/jobs/<id>/`` with ``request.json``,
``job.json`` (state, progress, report; rewritten atomically) and, once done,
``subset.parquet``. Jobs belong to the service, not to a connection: a
client that disconnects finds its job later by id. On restart, finished jobs
are served again; jobs that were queued or running are marked failed
("interrupted"), since their worker is gone.

Ids are 32 random hex digits, checked against that pattern before they
name any folder.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from react.errors import ReactError
from react.schemas import write_text
from retrieval_service.errors import ServiceError, not_found
from retrieval_service.task import TaskCancelled, TaskResult, write_subset

log = logging.getLogger("react.serve")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
ACTIVE = ("queued", "running")
SUBSET = "subset.parquet"
PROGRESS_WRITE_S = 1.0  # job.json is rewritten at most this often for progress alone


class Job:
    def __init__(self, root: Path, job_id: str, info: dict) -> None:
        self.root, self.id, self.info = root, job_id, info
        self.cancel = threading.Event()
        self._written = 0.0

    @property
    def dir(self) -> Path:
        return self.root / self.id

    @property
    def subset(self) -> Path:
        return self.dir / SUBSET

    def save(self, force: bool = True) -> None:
        now = time.time()
        if force or now - self._written >= PROGRESS_WRITE_S:
            if self.dir.is_dir():
                write_text(self.dir / "job.json", json.dumps(self.info, indent=1) + "\n")
            self._written = now

    def update(self, **fields) -> None:
        self.info.update(fields)
        self.save()

    def public(self) -> dict:
        return dict(self.info)


class JobStore:
    def __init__(self, state_dir: Path, workers: int = 1, max_active: int = 16) -> None:
        self.root = Path(state_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_active = max_active
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="react-job")
        self._recover()

    def _recover(self) -> None:
        for d in sorted(self.root.iterdir()):
            if not (d.is_dir() and JOB_ID.match(d.name)):
                continue
            try:
                info = json.loads((d / "job.json").read_text())
            except (OSError, json.JSONDecodeError):
                shutil.rmtree(d, ignore_errors=True)  # a job that never got its first write
                continue
            job = Job(self.root, d.name, info)
            if info.get("state") in ACTIVE:
                job.update(state="failed", error="interrupted: the service stopped before the job finished",
                           finished=time.time())
            self._jobs[d.name] = job

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in list(self._jobs.values()):
            out[job.info["state"]] = out.get(job.info["state"], 0) + 1
        return out

    def submit(self, request: dict, work: Callable[[Job], TaskResult], total: int) -> Job:
        with self._lock:
            active = sum(1 for j in self._jobs.values() if j.info["state"] in ACTIVE)
            if active >= self.max_active:
                raise ServiceError(f"{active} jobs are queued or running (at most {self.max_active}); retry later", 429)
            job_id = secrets.token_hex(16)
            (self.root / job_id).mkdir()
            write_text(self.root / job_id / "request.json", json.dumps(request, indent=1) + "\n")
            job = Job(self.root, job_id, {"id": job_id, "state": "queued", "stage": "queued", "done": 0,
                                          "total": total, "created": time.time(), "started": None,
                                          "finished": None, "error": None, "report": None})
            job.save()
            self._jobs[job_id] = job
        self._pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], TaskResult]) -> None:
        if job.cancel.is_set():
            return
        job.update(state="running", stage="starting", started=time.time())
        try:
            result = work(job)
            if job.cancel.is_set():
                raise TaskCancelled("task cancelled")
            write_subset(result, job.subset)
            job.update(state="done", stage="done", finished=time.time(), report=result.report(),
                       rows=result.table.num_rows)
        except TaskCancelled:
            job.info.update(state="cancelled", finished=time.time())
        except ReactError as exc:
            job.update(state="failed", error=str(exc), finished=time.time())
        except Exception as exc:
            if job.cancel.is_set():  # deleted while it ran (its folder went away under it): not a crash
                job.info.update(state="cancelled", finished=time.time())
            else:  # a bug: keep the service up, say so in the job
                log.exception("job %s crashed", job.id)
                job.update(state="failed", error=f"internal error: {exc.__class__.__name__}: {exc}",
                           finished=time.time())
        finally:
            if job.id not in self._jobs:
                # DELETE came while it ran: whatever it wrote since (job.json, the subset: writing re-creates
                # the folder) must go too, or the deleted job comes back at the next start (issue 16, fuzzer).
                shutil.rmtree(job.dir, ignore_errors=True)

    def progress_fn(self, job: Job) -> Callable[[str, int, int], None]:
        def report(stage: str, done: int, total: int) -> None:
            job.info.update(stage=stage, done=done, total=total)
            job.save(force=False)
        return report

    def get(self, job_id: str) -> Job:
        if not isinstance(job_id, str) or not JOB_ID.match(job_id) or job_id not in self._jobs:
            raise not_found(f"no job {job_id!r}")
        return self._jobs[job_id]

    def list(self) -> list[dict]:
        return [j.public() for j in sorted(self._jobs.values(), key=lambda j: j.info["created"])]

    def delete(self, job_id: str) -> None:
        """Cancel (if queued or running) and remove a job with its result."""
        job = self.get(job_id)
        job.cancel.set()
        with self._lock:
            self._jobs.pop(job_id, None)
        shutil.rmtree(job.dir, ignore_errors=True)

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            if job.info["state"] in ACTIVE:
                job.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def check_result(job: Job) -> Path:
    if job.info["state"] != "done":
        raise ServiceError(f"job {job.id} is {job.info['state']}; its subset is not ready", 409)
    if not job.subset.is_file():
        raise ServiceError(f"job {job.id}: result file is missing", 410)
    return job.subset
