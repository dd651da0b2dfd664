"""Partial indices on Spark executors, merged on disk by the driver.

The LAION tool chain already runs on Spark (autofaiss built 1.3B vectors on
100 executors the same way), so past one machine ``react index build
--spark-master URL`` hands the slow part -- encoding every vector and filling
its inverted lists -- to Spark: the driver trains one quantizer, each task
clones it and adds one slice of the embedding folder, writing a partial index
next to the others; the driver then merges their lists on disk exactly as a
single-process build does (:mod:`index.ondisk`). Faiss ids are global rows,
so the result does not depend on which executor built which slice.

Executors read the embedding folder and write partial indices through plain
paths: on a cluster both must be on a filesystem every node mounts at the
same path (NFS, a FUSE-mounted bucket), and every node needs this package.
"""
from __future__ import annotations

import re
from pathlib import Path

import faiss

from index.ondisk import Unit, add_partial, partial_path, unit_vectors, units
from index.vectors import EmbeddingFolder
from react.errors import ReactError
from react.progress import console
from react.spark import check_master, one_line, spark_session

__all__ = ["check_master", "spark_partials"]

def _task(root: str, rows_per_part: list[int], dim: int, modality: str, trained_file: str, work: str):
    """What each Spark task runs: its slices into partial indices (cloudpickled to the executor)."""

    def run(todo):
        folder = EmbeddingFolder(Path(root), rows_per_part, dim, None, None)
        trained = faiss.read_index(trained_file)
        for number, unit in todo:
            count = add_partial(trained, *unit_vectors(folder, modality, tuple(unit)), partial_path(Path(work), number))
            yield number, count

    return run


def spark_partials(master: str, trained_file: Path, folder: EmbeddingFolder, modality: str, work: Path,
                   chunk: int) -> list[Path]:
    """Build the missing partial indices on Spark; returns every partial index path in order."""
    plan: list[tuple[int, Unit]] = list(enumerate(units(folder, chunk)))
    todo = [(n, u) for n, u in plan if not partial_path(work, n).is_file()]
    if todo:
        try:
            with spark_session(master, "react index build", work / "spark") as session:
                sc = session.sparkContext
                slices = min(len(todo), max(1, sc.defaultParallelism) * 4)
                run = _task(str(folder.root.resolve()), list(folder.rows_per_part), folder.dim, modality,
                            str(trained_file.resolve()), str(work.resolve()))
                with console.status(f"Spark ({master}): {len(todo)} partial {modality} indices in {slices} tasks"):
                    done = sc.parallelize(todo, slices).mapPartitions(run).collect()
        except ReactError:
            raise
        except Exception as exc:  # py4j / PySpark errors carry the executor's traceback as text
            found = re.search(r"ReactError: (.+)", str(exc))
            raise ReactError(found.group(1).strip() if found else f"Spark job failed: {one_line(exc)}") from None
        console.print(f"Spark built {len(done)} partial {modality} indices ({sum(c for _, c in done):,} vectors)")
    paths = [partial_path(work, n) for n, _ in plan]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ReactError(f"Spark finished but {len(missing)} partial indices are missing from {work} "
                         f"(first: {missing[0]}); is {work} on a filesystem every executor shares?")
    return paths
