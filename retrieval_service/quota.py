"""The per-class quota (``react retrieve --per-class N``, ``per_class`` in the API).

A frequent class can fill a subset with thousands of pairs while a rare one
gets a few dozen; training then sees mostly the frequent one. After merging,
exclusion and near-duplicate collapse, each class keeps at most N of its
pairs -- the best by the class's own similarity (its best query's score on
the pair; ties by row id, so the cut is deterministic). The quota acts on
``(pair, class)`` labels: a pair cut from one class but kept by another stays
in the subset, labelled only with the class that kept it; a pair every one
of its classes cut leaves the subset.

k stays per query: it bounds what a class can gather (k x its queries x the
indices searched), N then caps what it keeps.
"""
from __future__ import annotations

import numpy as np

from retrieval_service.merge import Hits, Merged


def quota_cuts(merged: Merged, n_classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(row, class)`` labels beyond each class's best ``per_class``, as keys ``row * n_classes + class``
    (sorted), and the number cut per class."""
    labels = merged.classes
    rows = np.repeat(merged.row, np.diff(labels.offsets))
    cls = labels.values.astype(np.int64)
    order = np.lexsort((rows, -labels.scores, cls))  # by class, best pair first, then lowest row
    sorted_cls = cls[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_cls, sorted_cls, side="left")
    cut = order[rank >= per_class]
    return np.sort(rows[cut] * n_classes + cls[cut]), np.bincount(cls[cut], minlength=n_classes)


def drop_labels(hits: Hits, query_class: np.ndarray, n_classes: int, keys: np.ndarray) -> Hits:
    """``hits`` without those of the cut ``(row, class)`` labels (``keys`` from :func:`quota_cuts`)."""
    if keys.size == 0:
        return hits
    return hits.select(~np.isin(hits.row * n_classes + query_class[hits.query], keys))
