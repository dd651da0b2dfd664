"""``react download --distributor pyspark``: the Spark session img2dataset runs on.

img2dataset 1.47's pyspark distributor uses ``SparkSession.getActiveSession()``
and, when there is none, makes its own: ``local[processes]`` with 16 GB of
driver memory and Spark's web UI, its Python workers started with whatever
``python3`` is on the PATH (not this virtual environment, so they cannot
import img2dataset). Here, when no session is active, one is made for the
round and stopped after it: ``local[N]`` (N = ``--processes``) or the
``--spark-master`` given, UI off, scratch files in a temporary folder, workers
on this interpreter. A session the caller already has (a notebook on a
cluster) is used as it is.
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
from typing import Iterator

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
    """Refuse, before anything is downloaded, a malformed or unreachable master."""
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
def spark_session(master: str | None, processes: int, work: Path) -> Iterator[None]:
    """An active session for img2dataset during the block (see the module doc)."""
    from pyspark.sql import SparkSession

    if SparkSession.getActiveSession() is not None:
        yield
        return
    master = master or f"local[{processes}]"
    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    # Workers must import img2dataset and this package: run them on this interpreter
    # (on a cluster, set PYSPARK_PYTHON to the executors' environment yourself).
    for key in saved:
        os.environ.setdefault(key, sys.executable)
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="spark-", dir=work))
    builder = (SparkSession.builder.master(master).appName("react download")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.memory", "1g"))  # the JVM only schedules; Python workers download
    if master.startswith("local"):
        builder = builder.config("spark.local.dir", str(scratch))  # executors elsewhere use their own disks
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 -- py4j / JVM start-up failures, named on one line
        raise ReactError(f"--distributor pyspark: cannot start a Spark session on {master} ({one_line(exc)})") from None
    try:
        session.sparkContext.setLogLevel("ERROR")
        yield
    finally:
        session.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(scratch, ignore_errors=True)
