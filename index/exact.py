"""Exact inner-product k-NN: the ground truth every recall figure is measured against.

It streams the database in chunks and merges per-chunk top-k lists, so it runs
over a folder of any size in bounded memory; the time spent in the searches
themselves is returned too, because "x times faster than exact" must compare
against exact search on the same queries in the same run. A GPU (with faiss'
GPU build) is used when present.
"""
from __future__ import annotations

import time
from typing import Iterable

import faiss
import numpy as np


def _gpu_resources():
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    return faiss.StandardGpuResources()


def exact_knn(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Top-``k`` by inner product over ``(rows, vectors)`` chunks.

    ``exclude[i]`` (a global row, or -1) is removed from query ``i``'s answer:
    that is how a query drawn from the corpus is held out of it. Returns
    ``(scores [nq,k], rows [nq,k], seconds in search)``; missing entries are -1."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    extra = 0 if exclude is None else 1
    heap = faiss.ResultHeap(queries.shape[0], k + extra, keep_max=True)
    res = _gpu_resources()
    spent = 0.0
    for rows, vecs in chunks:
        if len(rows) == 0:
            continue
        kk = min(k + extra, len(rows))
        t0 = time.perf_counter()
        if res is not None:
            scores, local = faiss.knn_gpu(res, queries, vecs, kk, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            scores, local = faiss.knn(queries, vecs, kk, metric=faiss.METRIC_INNER_PRODUCT)
        spent += time.perf_counter() - t0
        heap.add_result(scores, np.where(local >= 0, rows[np.maximum(local, 0)], -1))
    heap.finalize()
    scores, ids = heap.D, heap.I
    if exclude is not None:
        scores, ids = drop_excluded(scores, ids, exclude, k)
    return scores, ids, spent


def drop_excluded(scores: np.ndarray, ids: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove ``exclude[i]`` from row ``i`` of a (k+1)-wide answer; keep the first ``k``."""
    hit = ids == np.asarray(exclude)[:, None]
    # A stable sort on the hit mask moves the excluded entry to the end, order otherwise kept.
    order = np.argsort(hit, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)[:, :k]
    return scores, ids


def recall_per_query(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Per query, the fraction of the true top-``k`` that the first ``k`` answers contain."""
    k = min(k, truth.shape[1], found.shape[1])
    out = np.ones(len(truth))
    for i, (got, want) in enumerate(zip(found[:, :k], truth[:, :k])):
        want = want[want >= 0]
        if len(want):
            out[i] = len(np.intersect1d(got, want)) / len(want)
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean recall@k over the queries."""
    return float(recall_per_query(found, truth, k).mean()) if len(truth) else 1.0
