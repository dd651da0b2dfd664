"""Merging the hits of many queries into one row per corpus pair, vectorized.

A task of 1,000 classes x 80 templates x k = 50 yields 4M ``(query, row,
score)`` hits. Everything here works on flat numpy arrays (one float sort,
then integer sorts), never on a per-hit Python object, so merging 4M hits
costs about 5 s and a few hundred MB.

Rows are labelled with every class (and every query) that retrieved them,
ordered by how well: ``classes[0]`` is the class whose best query scored the
row highest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Hits:
    """Flat search results: hit i is corpus ``row[i]`` found by ``query[i]`` with ``score[i]``."""

    row: np.ndarray    # int64 global row ids
    score: np.ndarray  # float32 cosine similarity
    query: np.ndarray  # int32 query number (class * n_templates + template)

    @classmethod
    def empty(cls) -> "Hits":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int32))

    @classmethod
    def concat(cls, parts: list["Hits"]) -> "Hits":
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.row for p in parts]), np.concatenate([p.score for p in parts]),
                   np.concatenate([p.query for p in parts]))

    def __len__(self) -> int:
        return int(self.row.size)

    def select(self, mask: np.ndarray) -> "Hits":
        return Hits(self.row[mask], self.score[mask], self.query[mask])


def from_search(scores: np.ndarray, rows: np.ndarray, first_query: int) -> Hits:
    """Flatten one batch of ``[nq, k]`` search answers; drops the -1 padding."""
    nq, k = rows.shape
    query = np.repeat(np.arange(first_query, first_query + nq, dtype=np.int32), k)
    row, score = rows.reshape(-1), scores.reshape(-1).astype(np.float32)
    keep = row >= 0
    return Hits(row[keep].astype(np.int64), score[keep], query[keep])


@dataclass
class Labels:
    """A ragged label list per output row: ``values[offsets[i]:offsets[i+1]]`` belong to row i."""

    offsets: np.ndarray  # int64 [n_rows + 1]
    values: np.ndarray   # int32 label ids (class or query numbers), best first
    scores: np.ndarray   # float32 best score of each (row, label) pair


@dataclass
class Merged:
    """One entry per distinct corpus row, best similarity first."""

    row: np.ndarray         # int64 [n]
    similarity: np.ndarray  # float32 [n], best over all hits
    hits: np.ndarray        # int32 [n], hits that found the row
    classes: Labels
    queries: Labels | None

    def __len__(self) -> int:
        return int(self.row.size)


def _labels(row_pos: np.ndarray, label: np.ndarray, n_rows: int, n_labels: int, score: np.ndarray) -> Labels:
    """Distinct ``(row, label)`` pairs grouped by row (rows in position order), labels
    within a row best first. Hits must come sorted by score, best first: then the
    first occurrence of a pair is its best hit and its index is its rank."""
    key = row_pos.astype(np.int64) * n_labels + label
    pair_key, first = np.unique(key, return_index=True)  # stable: first occurrence = best hit
    pair_row, pair_label = pair_key // n_labels, (pair_key % n_labels).astype(np.int32)
    order = np.argsort(pair_row * max(1, len(key)) + first)  # by row, then by rank
    counts = np.bincount(pair_row, minlength=n_rows)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return Labels(offsets, pair_label[order], score[first[order]].astype(np.float32))


def merge(hits: Hits, n_templates: int, n_queries: int, with_queries: bool = True,
          query_class: np.ndarray | None = None) -> Merged:
    """One row per distinct corpus row: best similarity, hit count, classes and queries that found it.

    ``query_class`` (int, one per query): the class each query counts for -- tasks whose queries also
    search a class's aliases or example images (retrieval_service.examples); default ``query // n_templates``.

    Cost: one float sort and three integer sorts of the hits (about 5 s for 4M hits on 2 cores)."""
    order = np.argsort(-hits.score, kind="stable")  # best hit first; every later "first" is a "best"
    row, score, query = hits.row[order], hits.score[order], hits.query[order]
    uniq, first, inverse, counts = np.unique(row, return_index=True, return_inverse=True, return_counts=True)
    # Output order: best similarity first (rank of the best hit; ties keep the search order).
    out_order = np.argsort(first, kind="stable")
    position = np.empty(len(uniq), np.int64)
    position[out_order] = np.arange(len(uniq))
    row_pos = position[inverse.reshape(-1)]
    if query_class is None:
        n_classes, cls = max(1, -(-n_queries // max(1, n_templates))), query // n_templates
    else:
        n_classes, cls = max(1, int(query_class.max(initial=0)) + 1), query_class[query]
    classes = _labels(row_pos, cls, len(uniq), n_classes, score)
    queries = _labels(row_pos, query, len(uniq), max(1, n_queries), score) if with_queries else None
    return Merged(uniq[out_order], score[first[out_order]].astype(np.float32), counts[out_order].astype(np.int32),
                  classes, queries)


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label (the smallest member) of each of ``n`` nodes joined by edges ``a[i]-b[i]``.

    Min-label propagation with pointer jumping: vectorized, converges in a few
    rounds for the small, shallow groups near-duplicates form."""
    labels = np.arange(n, dtype=np.int64)
    if a.size == 0:
        return labels
    while True:
        m = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]  # pointer jumping: follow each label to its own label
        if np.array_equal(new, labels):
            return labels
        labels = new


def collapse_rows(hits: Hits, rows: np.ndarray, similarity: np.ndarray, edge_a: np.ndarray,
                  edge_b: np.ndarray) -> tuple[Hits, dict[int, int]]:
    """Re-point every hit of a near-duplicate group at the group's best-scoring row.

    ``rows``/``similarity`` are the merged rows; ``edge_a``/``edge_b`` index
    into them. Returns the re-pointed hits (a second :func:`merge` then unions
    the group's classes and queries) and ``{keeper_row: group_size}`` for
    groups of two or more."""
    comp = connected_components(len(rows), edge_a, edge_b)
    # Keeper per component: highest similarity, then lowest row id.
    order = np.lexsort((rows, -similarity, comp))
    first = np.r_[True, comp[order][1:] != comp[order][:-1]]
    keeper_of_comp = np.empty(len(rows), np.int64)
    keeper_of_comp[comp[order][first]] = rows[order][first]
    keeper = keeper_of_comp[comp]
    sorter = np.argsort(rows)
    hit_pos = sorter[np.searchsorted(rows, hits.row, sorter=sorter)]
    sizes = np.bincount(comp, minlength=len(rows))
    groups = {int(keeper_of_comp[c]): int(sizes[c]) for c in np.flatnonzero(sizes > 1)}
    return Hits(keeper[hit_pos], hits.score, hits.query), groups
