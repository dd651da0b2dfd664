"""Spark sessions for the stages that run past one machine (index build, download).

The LAION tool chain runs on Spark, so the project does too: a user's active
session (a notebook on a cluster) is used as it is; otherwise one is made for
the job and stopped after it -- the master given (``local[N]``,
``spark://HOST:PORT``, ``yarn``, ``k8s://URL``), UI off, local scratch in a
temporary folder, Python workers on this interpreter (they must import faiss,
img2dataset and this package; on a cluster set PYSPARK_PYTHON to the
executors' environment yourself).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from react.errors import ReactError

MASTER_RE = re.compile(r"^(local(\[(\d+|\*)(,\d+)?\])?|spark://[^/\s]+|yarn|k8s://\S+)$")
CONNECT_TIMEOUT_S = 5.0
_ERROR_LINE = re.compile(r"^\s*([\w.]+(Error|Exception|Interrupt|Exit)): \S")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line. Spark's errors carry the worker's whole
    Python traceback (and Java's) as text: their last ``SomethingError: ...``
    line is the cause."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if _ERROR_LINE.match(line)]
    text = causes[-1] if causes else f"{exc.__class__.__name__}: {lines[0] if lines else ''}"
    return text[:limit]


def check_master(master: str) -> None:
    """Refuse, before any work, a missing pyspark or a malformed or unreachable master."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ReactError("--spark-master needs pyspark: pip install 'react-clip[spark]'") from None
    if not MASTER_RE.match(master):
        raise ReactError(f"--spark-master {master!r}: expected local[N], spark://HOST:PORT, yarn or k8s://URL")
    if not master.startswith("spark://"):
        return
    for hostport in master[len("spark://"):].split(","):  # standalone HA: several masters
        host, _, port = hostport.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except (OSError, ValueError) as exc:
            raise ReactError(f"--spark-master {master}: cannot reach {hostport} "
                             f"({exc.__class__.__name__}: {exc})") from None


@contextmanager
def spark_session(master: str, app: str, work: Path, driver_memory: str = "1g") -> Iterator[Any]:
    """The active session, or one made for the block (see the module doc); yields it."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    for key in saved:
        os.environ.setdefault(key, sys.executable)
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="spark-", dir=work))
    builder = (SparkSession.builder.master(master).appName(app)
               .config("spark.ui.enabled", "false")
               .config("spark.task.maxFailures", "2")  # a bad input fails fast instead of four times
               .config("spark.driver.memory", driver_memory))  # the JVM only schedules; Python workers work
    if master.startswith("local"):
        builder = builder.config("spark.local.dir", str(scratch))  # executors elsewhere use their own disks
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 -- py4j / JVM start-up failures, named on one line
        raise ReactError(f"cannot start a Spark session on {master} ({one_line(exc)})") from None
    try:
        session.sparkContext.setLogLevel("ERROR")
        yield session
    finally:
        session.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(scratch, ignore_errors=True)
