"""Exact probe assignment for a batched IVF search: each query's ``nprobe`` nearest lists by
one GEMM against every centroid, where the coarse quantizer would walk a graph.

An HNSW quantizer over 4,096 centroids, at the efSearch that keeps it fast, misses some
of a query's true nearest lists; at 10M CLIP-like rows that cost ~0.012 recall@50 at
the same nprobe (index/batched_ivf.py). For a batch of thousands of queries the GEMM
is also cheaper than the graph walk. With hundreds of thousands of lists the GEMM grows
with them, so it is a search parameter (``probes: exact``) that the tuner measures.
"""
from __future__ import annotations

import faiss
import numpy as np

__all__ = ["centroid_view", "nearest_lists"]


def centroid_view(quantizer: faiss.Index) -> np.ndarray | None:
    """A zero-copy [nlist, d] view of an inner-product flat (or HNSW-flat) quantizer's
    centroids; None for any other quantizer."""
    q = faiss.downcast_index(quantizer)
    if isinstance(q, faiss.IndexHNSWFlat):
        q = faiss.downcast_index(q.storage)
    if type(q) not in (faiss.IndexFlatIP, faiss.IndexFlat) or q.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return faiss.rev_swig_ptr(q.get_xb(), q.ntotal * q.d).reshape(q.ntotal, q.d)


PROBE_ROWS = 1024  # queries scored against every centroid at once ([1024, nlist] float32)


def nearest_lists(x: np.ndarray, centroids: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``nprobe`` highest-scoring centroids, as the quantizer's ``search`` returns
    them: (scores [nq, nprobe] float32, list numbers [nq, nprobe] int64), unordered within a row
    (the scan does not care)."""
    scores = np.empty((len(x), nprobe), np.float32)
    lists = np.empty((len(x), nprobe), np.int64)
    for s in range(0, len(x), PROBE_ROWS):
        sims = x[s:s + PROBE_ROWS] @ centroids.T
        top = np.argpartition(sims, len(centroids) - nprobe, axis=1)[:, -nprobe:]
        lists[s:s + PROBE_ROWS] = top
        scores[s:s + PROBE_ROWS] = np.take_along_axis(sims, top, axis=1)
    return scores, lists
