"""Near-duplicate images among retrieved pairs.

The web repeats images: the same photo under several captions, resized or
re-encoded. Training on ten copies of one image is training on one image
with ten times the weight, so the retrieved pairs whose *image* embeddings
have cosine similarity >= ``DEFAULT_DEDUP_THRESHOLD`` (0.94, clip-retrieval's
``deduplicate`` threshold) are grouped (transitively: connected components of
that relation) and collapsed into the group's best-scoring pair, which keeps
the union of their classes and queries.

Neighbours are found through the corpus' own image index: each retrieved
pair's image vector (read back exactly from a Flat-coded index, else from the
embedding folder) is searched with ``NEIGHBOURS`` results, and only neighbours
that were themselves retrieved count. That costs one index query per
retrieved pair -- linear, unlike an all-pairs comparison -- and finds groups
of up to ``NEIGHBOURS`` copies directly (larger groups still connect through
their members). Without an image index the comparison is exact among the
retrieved pairs, up to ``MAX_FLAT`` of them.
"""
from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np

from index.vectors import MIN_NORM

DEFAULT_DEDUP_THRESHOLD = 0.94
NEIGHBOURS = 16
CHUNK = 8192
MAX_FLAT = 100_000


class NearDuplicates:
    """Finds near-duplicate pairs among retrieved rows of one index folder."""

    def __init__(self, searcher) -> None:
        self.searcher = searcher
        self.unavailable: str | None = None  # why collapse was skipped, once known
        self._lock = threading.Lock()
        self._fetch = None

    def _vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Exact unit image vectors of global ``rows`` and the mask of rows that have one, or None
        when the folder has none. A row whose image vector was NaN/zero (skipped by the index
        build) can still be a text-side hit: it gets a zero vector and ``False``, never another
        row's vector, so it joins no group."""
        with self._lock:  # first use builds a direct map / opens the folder: once, not per thread
            if self._fetch is None:
                self._fetch = self._make_fetch()
            fetch = self._fetch
        if fetch is False:
            return None
        vecs, has = fetch(np.asarray(rows, dtype=np.int64))
        vecs = np.asarray(vecs, dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            norms = np.linalg.norm(vecs, axis=1)
        has = has & np.isfinite(norms) & (norms > MIN_NORM)
        out = np.zeros_like(vecs)
        out[has] = vecs[has] / norms[has, None]
        return out, has

    def _make_fetch(self):
        """``rows -> (vectors, has_vector)``."""
        mod = self.searcher.modalities.get("image")
        if mod is not None and mod.candidate.exact_codes:
            from index.query import reconstructor

            stored, ids = reconstructor(mod.index), mod.ids
            if ids is None:  # every row is in the index
                return lambda rows: (stored(rows), np.ones(len(rows), bool))
            dim = mod.index.d

            def fetch(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                # ids are the increasing global rows the index holds; a row missing from
                # them lands on its successor's position, hence the equality check.
                pos = np.minimum(np.searchsorted(ids, rows), len(ids) - 1)
                has = ids[pos] == rows if len(ids) else np.zeros(len(rows), bool)
                vecs = np.zeros((len(rows), dim), np.float32)
                if has.any():
                    vecs[has] = stored(pos[has])
                return vecs, has

            return fetch
        emb = self.searcher.embeddings
        if emb and Path(emb).is_dir():
            from index.vectors import EmbeddingFolder

            folder = EmbeddingFolder.open(emb)
            return lambda rows: (folder.take("image", rows), np.ones(len(rows), bool))  # NaN rows: caught by norm
        self.unavailable = (f"near-duplicate collapse skipped: {self.searcher.root} has no exact image vectors "
                            "(no Flat-coded image index, no embedding folder)")
        return False

    def edges(self, rows: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Pairs ``(a, b)`` of positions into ``rows`` whose images are >= ``threshold`` similar."""
        if "image" in self.searcher.modalities:
            if self._vectors(rows[:1]) is None:
                return None
            return self._edges_via_index(rows, threshold)
        if len(rows) > MAX_FLAT:
            self.unavailable = f"near-duplicate collapse skipped: no image index and {len(rows)} rows > {MAX_FLAT}"
            return None
        fetched = self._vectors(rows)
        if fetched is None:
            return None
        vecs, has = fetched
        where = np.flatnonzero(has)  # positions with an image vector; the others join no group
        flat = faiss.IndexFlatIP(vecs.shape[1])
        flat.add(vecs[where])
        lims, _, found = flat.range_search(vecs[where], float(threshold))
        a = np.repeat(np.arange(len(where)), np.diff(lims))
        keep = a != found
        return where[a[keep]].astype(np.int64), where[found[keep]].astype(np.int64)

    def _edges_via_index(self, rows: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        sorter = np.argsort(rows)
        sorted_rows = rows[sorter]
        out_a, out_b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        k = min(NEIGHBOURS, self.searcher.modalities["image"].index.ntotal)
        for lo in range(0, len(rows), CHUNK):
            vecs, has = self._vectors(rows[lo : lo + CHUNK])
            if not has.any():
                continue
            scores, found = self.searcher.search(vecs[has], k, modality="image", query_modality="image")
            a = np.repeat(lo + np.flatnonzero(has), found.shape[1])
            b_row, s = found.reshape(-1), scores.reshape(-1)
            pos = np.searchsorted(sorted_rows, b_row)
            pos = np.minimum(pos, len(sorted_rows) - 1)
            retrieved = (sorted_rows[pos] == b_row) & (b_row >= 0) & (s >= threshold)
            b = sorter[pos]
            keep = retrieved & (b != a)
            out_a.append(a[keep])
            out_b.append(b[keep])
        return np.concatenate(out_a).astype(np.int64), np.concatenate(out_b).astype(np.int64)
