"""Several ``react customize`` runs at once, each in its own process.

On a CPU, two runs of one torch thread each finish sooner than the same two runs one
after the other with two threads: the demo's tower is small (65 tokens of width 128), so
a second thread adds less than a second process does, and one run's image decoding
overlaps the other's compute. Measured on the 2-core machine with the demo's recipe for
100 steps: 90 s for one run with 2 threads, 152 s for two runs at once with 1 thread
each (180 s one after the other). On a GPU the runs go one at a time: they would only
queue on the one device.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from react.errors import ReactError
from react.progress import console

POLL_S = 1.0


@dataclass(frozen=True)
class Job:
    name: str
    argv: list[str]   # a ``react`` command line, without the program name
    run_dir: Path     # where the run writes log.jsonl (its progress)
    steps: int


def plan_slots(requested: int | None) -> tuple[int, int]:
    """(runs at once, torch threads per run) for ``react demo --parallel-runs``."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested is None:
        requested = 1 if torch.cuda.is_available() else min(2, cpus)
    if requested < 1:
        raise ReactError(f"--parallel-runs {requested}: give 1 or more")
    return requested, max(1, cpus // requested)


def _last_step(run_dir: Path) -> int:
    """The latest logged step of a run (0 before its first log line)."""
    try:
        lines = (run_dir / "log.jsonl").read_bytes().splitlines()
        return int(json.loads(lines[-1]).get("step", 0)) if lines else 0
    except (OSError, ValueError, AttributeError):
        return 0


def _log_path(logs: Path, name: str) -> Path:
    """LOGS/NAME.log, with a run name's path separators flattened (sweeps name runs MODE/RECIPE)."""
    return logs / f"{name.replace('/', '_')}.log"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_parallel(jobs: list[Job], slots: int, threads: int, logs: Path) -> dict[str, float]:
    """Run ``jobs``, ``slots`` at a time, each ``react ARGV`` in a child process whose BLAS and
    OpenMP pools have ``threads`` threads (pass ``--threads`` in a customize ARGV for torch's);
    its output goes to ``logs/NAME.log`` (``/`` in NAME becomes ``_``). A failed run stops the
    others and raises one line naming it and its log; so do Ctrl-C and SIGTERM (re-raised).
    Returns each job's wall seconds."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending, running, started, walls = list(jobs), {}, {}, {}
    previous = _exit_on_sigterm()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bars = {job.name: progress.add_task(f"customize {job.name}", total=job.steps, start=False) for job in jobs}
        try:
            while pending or running:
                while pending and len(running) < slots:
                    job = pending.pop(0)
                    log = open(_log_path(logs, job.name), "w")
                    proc = subprocess.Popen([sys.executable, "-m", "react", *job.argv], stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
                    running[job.name], started[job.name] = (job, proc, log), time.time()
                    progress.start_task(bars[job.name])
                time.sleep(POLL_S)
                for name, (job, proc, log) in list(running.items()):
                    progress.update(bars[name], completed=min(job.steps, _last_step(job.run_dir)))
                    if proc.poll() is None:
                        continue
                    log.close()
                    del running[name]
                    walls[name] = round(time.time() - started[name], 1)
                    if proc.returncode != 0:
                        path = _log_path(logs, name)
                        raise ReactError(f"run failed: react {' '.join(job.argv)} (exit {proc.returncode}; "
                                         f"log {path}: {_tail(path)})")
                    progress.update(bars[name], completed=job.steps)
        finally:
            for job, proc, log in running.values():  # a failure or Ctrl-C: stop the rest, keep their checkpoints
                proc.terminate()
                proc.wait()
                log.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return walls


def _run_in_process(job: Job) -> None:
    from react.cli import run

    if run(job.argv) != 0:
        raise ReactError(f"run failed: react {' '.join(job.argv)}")


def run_jobs(jobs: list[Job], parallel: int | None, logs: Path,
             in_process: Callable[[Job], None] = _run_in_process) -> dict:
    """Run ``jobs`` (``react customize`` command lines without ``--threads``) the way
    ``--parallel-runs`` asks: several at once in child processes when there is more than
    one slot and more than one job, each given ``--threads`` (a run's key leaves it out:
    it changes only float rounding); otherwise one after the other through ``in_process``.
    Returns {"walls": {name: seconds}, "parallel": whether they ran at once, "at_once": slots,
    "threads": threads per child, "seconds": total}."""
    slots, threads = plan_slots(parallel)
    started = time.time()
    walls: dict[str, float] = {}
    at_once = slots > 1 and len(jobs) > 1
    if at_once:
        extra = ["--threads", str(threads)]
        walls = run_parallel([Job(j.name, j.argv + extra, j.run_dir, j.steps) for j in jobs], slots, threads, logs)
    else:
        for job in jobs:
            t0 = time.time()
            in_process(job)
            walls[job.name] = round(time.time() - t0, 1)
    return {"walls": walls, "parallel": at_once, "at_once": slots, "threads": threads,
            "seconds": round(time.time() - started, 1)}


def _exit_on_sigterm():
    """Make SIGTERM (a job scheduler's stop, ``timeout``) unwind like Ctrl-C, so the children are
    stopped too rather than left training; returns the handler to restore (None off the main thread)."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: signals are not ours to handle
        return None
