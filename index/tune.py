"""Tuning to a recall target on the real query distribution.

REACT searches an image index with *text* embeddings; recall measured with
database vectors as queries (what faiss' auto-tuner does) overstates it
badly. So the queries here are held-out caption embeddings (T2I against an
image index, T2T against a text index) or the user's own, ground truth is
exact search over the same vectors, and the tuner walks the knob
(``efSearch`` or ``nprobe``) upward until recall@k reaches the target.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from index.defaults import N_QUERIES, SEED
from index.exact import exact_knn, recall_per_query
from index.factory import Candidate, knob_grid, with_knob
from index.query import QuerySet, normalize, search
from index.vectors import EmbeddingFolder
from react.errors import ReactError

MIN_TIMING_S = 0.2


def default_queries(folder: EmbeddingFolder, modality: str, n: int = N_QUERIES, seed: int = SEED) -> QuerySet:
    """Caption embeddings of ``n`` corpus pairs, each held out of its own answer."""
    rows = folder.sample_rows(n, seed=seed + 1)
    rows, vecs = folder.gather("text", rows)
    if len(rows) == 0:
        raise ReactError(f"{folder.root}: no usable text embeddings to draw queries from")
    return QuerySet("t2i" if modality == "image" else "t2t", vecs, exclude=rows)


def load_queries(spec: str | Path, dim: int, n: int = N_QUERIES, seed: int = SEED) -> QuerySet:
    """``--queries``: a ``.npy`` of query vectors, or an embedding folder (its text side)."""
    path = Path(spec)
    if path.is_dir():
        other = EmbeddingFolder.open(path)
        qs = default_queries(other, "image", n, seed)
        vecs = qs.vectors
    elif path.is_file():
        try:
            vecs = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ReactError(f"--queries {path}: not a readable .npy ({exc.__class__.__name__})") from None
        if vecs.ndim != 2 or vecs.shape[0] == 0:
            raise ReactError(f"--queries {path}: expected a non-empty [n, dim] array, got shape {vecs.shape}")
    else:
        raise ReactError(f"--queries not found: {path}")
    if vecs.shape[1] != dim:
        raise ReactError(f"--queries {path}: dimension {vecs.shape[1]} != the embeddings' {dim}")
    return QuerySet(path.name, normalize(vecs))


@dataclass
class Truth:
    scores: np.ndarray
    rows: np.ndarray
    exact_qps: float


def ground_truth(chunks: Callable, queries: QuerySet, k: int) -> Truth:
    """Exact top-k of ``queries`` over ``chunks()`` (an iterable of (rows, vectors))."""
    scores, rows, spent = exact_knn(chunks(), queries.vectors, k, queries.exclude)
    return Truth(scores, rows, len(queries) / max(spent, 1e-9))


def timed(fn: Callable[[], object]) -> float:
    """Best-of-repeats seconds for ``fn``, repeating until MIN_TIMING_S has passed."""
    best, total, reps = float("inf"), 0.0, 0
    while reps < 2 or (total < MIN_TIMING_S and reps < 20):
        t0 = time.perf_counter()
        fn()
        spent = time.perf_counter() - t0
        best, total, reps = min(best, spent), total + spent, reps + 1
    return best


MARGIN_Z = 1.645  # one-sided 95 %


def margin(per_query: np.ndarray) -> float:
    """How far the mean recall of these queries may sit above that of unseen ones
    from the same distribution (one-sided 95 % bound on the standard error): the
    tuner asks for ``target + margin`` so the setting holds for new queries."""
    if len(per_query) < 2:
        return 0.0
    return MARGIN_Z * float(per_query.std(ddof=1)) / np.sqrt(len(per_query))


@dataclass
class Point:
    params: dict
    recall: float
    qps: float | None
    lower: float  # recall minus the margin: what unseen queries can count on

    def to_json(self) -> dict:
        return {"params": self.params, "recall": round(self.recall, 4), "recall_lower": round(self.lower, 4),
                "qps": None if self.qps is None else round(self.qps, 1)}


def sweep(searcher: Callable, candidate: Candidate, queries: QuerySet, truth: Truth, k: int, n: int,
          target: float | None, variants: list[dict] | None = None) -> list[Point]:
    """Recall@k (and queries/s) along the knob grid for each search variant.

    ``searcher(queries, k, params, exclude)`` is :func:`index.query.search` bound
    to an index. With a ``target`` each variant stops at the first knob value
    that reaches it; without, the whole grid is walked (for ``index eval``)."""
    points: list[Point] = []
    grid = knob_grid(candidate, k, n) or [None]
    for variant in variants or [{}]:
        for value in grid:
            params = with_knob(candidate, value) | variant
            found = searcher(queries.vectors, k, params, queries.exclude)[1]
            per_query = recall_per_query(found, truth.rows, k)
            recall = float(per_query.mean())
            lower = recall - margin(per_query)
            reached = target is not None and lower >= target
            qps = None  # only settings that could be picked are timed
            if target is None or reached or value == grid[-1]:
                qps = len(queries) / timed(lambda: searcher(queries.vectors, k, params, None))
            points.append(Point(params, recall, qps, lower))
            if reached:
                break
    return points


def pick(points: list[Point], target: float) -> tuple[Point, bool]:
    """The fastest point that meets the target, else the most accurate one."""
    timed_points = [p for p in points if p.qps is not None]
    good = [p for p in timed_points if p.lower >= target]
    if good:
        return max(good, key=lambda p: p.qps), True
    return max(timed_points, key=lambda p: (p.recall, p.qps)), False


def bind(index, ids=None, shift=None, stored=None) -> Callable:
    """``search`` with the index-side arguments fixed."""
    return lambda q, k, params, exclude=None: search(index, q, k, params, ids=ids, shift=shift,
                                                     stored=stored, exclude=exclude)
