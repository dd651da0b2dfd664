"""One img2dataset run ("round") into a staging folder.

img2dataset writes into ``SHARDS_DIR/.react-download/staging-*``; a watcher
thread checks each shard as soon as its stats file appears and commits it
into SHARDS_DIR (first round), or holds it until the whole round is done
(retry rounds, which only count once complete). img2dataset's own chatter
(prints, tqdm, its worker processes' stdout) goes to
``.react-download/img2dataset.log``; the terminal gets one progress bar.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from react.errors import ReactError
from react.progress import progress

from download.options import DownloadOptions
from download.shardsdir import BrokenShard, ShardInfo, ShardsDir, check_shard, shard_files

LOG_NAME = "img2dataset.log"
POLL_S = 0.25
# img2dataset is a library here: no telemetry, no progress bars of its own
QUIET_ENV = {"WANDB_MODE": "disabled", "WANDB_SILENT": "true", "TQDM_DISABLE": "1"}


@dataclass
class Round:
    index: int
    table: pa.Table            # img2dataset's input: kept columns, caption, url
    first_shard: int
    todo: list[int]            # the shard ids this run must produce
    columns: list[str]         # save_additional_columns
    rows: int                  # rows this run attempts (the progress total)
    rewrite: tuple[Callable, Callable] | None = None  # (tar, parquet) transforms on commit
    commit_each: bool = True   # else all at the end, or none


def run_round(folder: ShardsDir, rnd: Round, opts: DownloadOptions, label: str) -> dict[int, ShardInfo]:
    """Run img2dataset over ``rnd.table``; returns the shards it committed.
    Raises ReactError when img2dataset leaves a shard undone."""
    import warnings

    with warnings.catch_warnings():  # its resizer imports the deprecated imghdr
        warnings.simplefilter("ignore", DeprecationWarning)
        import img2dataset

    staging = folder.new_staging()
    folder.seed(staging)
    inputs = folder.work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    url_list = inputs / f"round-{rnd.index}.parquet"
    pq.write_table(rnd.table, url_list)
    if rnd.first_shard and max(folder.shards, default=-1) + 1 != rnd.first_shard:
        raise ReactError(f"internal: round {rnd.index} must start at shard {rnd.first_shard}")

    log = folder.work / LOG_NAME
    watcher = _Watcher(folder, staging, rnd, label)
    with progress() as bar:
        watcher.task = bar.add_task(label, total=rnd.rows, unit="img")
        watcher.bar = bar
        watcher.start()
        try:
            with _quiet(log), _distributor_session(opts, folder.work):
                img2dataset.download(
                    url_list=str(url_list), output_folder=str(staging), input_format="parquet", url_col="url",
                    caption_col="caption", save_additional_columns=list(rnd.columns),
                    incremental_mode="incremental" if rnd.first_shard == 0 else "extend",
                    **opts.img2dataset_kwargs(len(rnd.todo)))
        except (ReactError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 -- img2dataset's own failure, named
            from download.spark import one_line

            raise ReactError(f"img2dataset failed: {one_line(exc)} (log: {log})") from None
        finally:
            watcher.stop()
    if watcher.error is not None:
        raise watcher.error
    missing = [s for s in rnd.todo if s not in watcher.done]
    if missing:
        again = "--resume" if rnd.index == 0 else "--retry-failed"
        raise ReactError(f"img2dataset left {len(missing)} of {len(rnd.todo)} shard(s) undone (log: {log}); "
                         f"run again with {again}")
    if not rnd.commit_each:
        for shard_id in sorted(watcher.done):
            folder.commit(staging, shard_id, watcher.done[shard_id], rnd.rewrite)
    shutil.rmtree(staging, ignore_errors=True)
    url_list.unlink(missing_ok=True)
    return watcher.done


class _Watcher(threading.Thread):
    """Commits each shard of the round once img2dataset has written its stats."""

    def __init__(self, folder: ShardsDir, staging: Path, rnd: Round, label: str) -> None:
        super().__init__(daemon=True, name="shard-watcher")
        self.folder, self.staging, self.rnd, self.label = folder, staging, rnd, label
        self.done: dict[int, ShardInfo] = {}
        self.error: BaseException | None = None
        self.bar = self.task = None
        self.ok = self.failed = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(POLL_S):
                self.sweep()
            self.sweep()  # whatever finished last
        except BaseException as exc:  # noqa: BLE001 -- handed to the main thread
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def sweep(self) -> None:
        for shard_id in self.rnd.todo:
            if shard_id in self.done or not shard_files(self.staging, shard_id)[2].exists():
                continue
            try:
                info = check_shard(self.staging, shard_id)
            except BrokenShard:
                continue  # stats still being written, or img2dataset failed the shard: look again / undone
            if self.rnd.commit_each:
                self.folder.commit(self.staging, shard_id, info, self.rnd.rewrite)
            self.done[shard_id] = info
            self.ok += info.successes
            self.failed += info.count - info.successes
            if self.bar is not None:
                self.bar.update(self.task, advance=info.count,
                                description=f"{self.label} ({self.ok} ok, {self.failed} failed)")


def _distributor_session(opts: DownloadOptions, work: Path):
    """The Spark session of a pyspark round, made inside ``_quiet`` so the JVM's
    output goes to the log too; nothing for the other distributors."""
    if opts.distributor != "pyspark":
        return nullcontext()
    from download.spark import spark_session

    return spark_session(opts.spark_master, opts.worker_processes(), work)


@contextmanager
def _quiet(log: Path) -> Iterator[None]:
    """Everything img2dataset and its worker processes print (its progress
    lines, tqdm, warnings, tracebacks) goes to ``log`` -- file descriptors 1
    and 2 and sys.stdout/stderr alike -- while our progress bar keeps drawing
    on the real stderr. Telemetry and tqdm are switched off for the spawned
    workers, and img2dataset's SIGINT handler (which exits 0) is undone."""
    from react.progress import console

    saved_env = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    saved_sigint = signal.getsignal(signal.SIGINT)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_fds = os.dup(1), os.dup(2)
    real_stderr = os.fdopen(os.dup(2), "w", buffering=1)
    pinned = getattr(console, "_file", None)
    console.file = real_stderr
    fh = open(log, "a", buffering=1)
    os.dup2(fh.fileno(), 1)
    os.dup2(fh.fileno(), 2)
    try:
        with redirect_stdout(fh), redirect_stderr(fh):
            yield
    except SystemExit:  # img2dataset's SIGINT handler: an interrupt, not a success
        raise KeyboardInterrupt from None
    finally:
        fh.flush()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        console.file = pinned
        real_stderr.close()
        fh.close()
        signal.signal(signal.SIGINT, saved_sigint)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
