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

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from react.spark import check_master, one_line, spark_session as _session

__all__ = ["check_master", "one_line", "spark_session"]


@contextmanager
def spark_session(master: str | None, processes: int, work: Path) -> Iterator[None]:
    """An active session for img2dataset during the block (see the module doc)."""
    with _session(master or f"local[{processes}]", "react download", work):
        yield
