"""Near-duplicate images among retrieved pairs.

The web repeats images: the same photo under several captions, resized or
re-encoded. Training on ten copies of one image is training on one image
with ten times the weight, so the retrieved pairs whose *image* embeddings
have cosine similarity >= ``spec.DEFAULT_DEDUP_THRESHOLD`` (0.94, clip-retrieval's
``deduplicate`` threshold) are grouped (transitively: connected components of
that relation) and collapsed into the group's best-scoring pair, which keeps
the union of their classes and queries.

Only pairs among the retrieved rows count, so the comparison runs among them
and never touches the corpus index: up to ``SMALL`` rows, exactly (all
pairs); above, the retrieved vectors are put into a temporary inverted file
(float16 codes, the image index's own coarse quantizer when it has one, else
k-means over the retrieved set) and each is range-searched in its
``PROBES`` nearest cells. Near-duplicates at cosine >= 0.9 sit in the same or
an adjacent cell, so this finds the pairs an all-pairs scan would (tested
against it) at a cost linear in the rows. It replaced one corpus-index query
per retrieved row, which at 10M rows cost as much as the task's search
(docs/scale.md). Vectors are read in ``CHUNK``-row blocks, so memory is the
float16 copy of the retrieved set plus one block.
"""
from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np

from index.vectors import MIN_NORM

SMALL = 20_000  # rows up to which the exact all-pairs comparison is cheaper than clustering them
PROBES = 3  # cells each retrieved vector is compared in
CHUNK = 65_536  # vectors read at a time


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
        if self._vectors(rows[:1]) is None:
            return None
        if len(rows) <= SMALL:
            vecs, has = self._vectors(rows)
            where = np.flatnonzero(has)  # positions with an image vector; the others join no group
            flat = faiss.IndexFlatIP(vecs.shape[1])
            flat.add(vecs[where])
            return _pairs(flat, vecs[where], where, threshold)
        return self._edges_via_cells(rows, threshold)

    def _edges_via_cells(self, rows: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        blocks = []  # (positions, float16 unit vectors) per CHUNK rows: half the float32 copy
        for lo in range(0, len(rows), CHUNK):
            vecs, has = self._vectors(rows[lo : lo + CHUNK])
            blocks.append((lo + np.flatnonzero(has), vecs[has].astype(np.float16)))
        quantizer = self._quantizer(blocks, len(rows))
        cells = faiss.IndexIVFScalarQuantizer(quantizer, quantizer.d, quantizer.ntotal,
                                              faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False)
        cells.train(np.zeros((1, quantizer.d), np.float32))  # quantizer trained, fp16 codes learn nothing
        cells.nprobe = min(PROBES, quantizer.ntotal)
        for positions, vecs in blocks:
            if len(positions):
                cells.add_with_ids(vecs.astype(np.float32), positions)
        pairs = [_pairs(cells, vecs.astype(np.float32), positions, threshold) for positions, vecs in blocks]
        return np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])

    def _quantizer(self, blocks: list, n: int) -> faiss.Index:
        """The image index's coarse quantizer when it works on raw vectors, else k-means over ~sqrt(n) cells."""
        mod = self.searcher.modalities.get("image")
        if mod is not None:
            top = faiss.downcast_index(mod.index)
            ivf = faiss.try_extract_index_ivf(top)
            if (ivf is not None and not isinstance(top, faiss.IndexPreTransform)
                    and ivf.metric_type == faiss.METRIC_INNER_PRODUCT):
                return ivf.quantizer
        nlist = max(1, int(np.sqrt(n)))
        step = max(1, n // (32 * nlist))  # ~32 training vectors per cell
        sample = np.concatenate([vecs[::step] for _, vecs in blocks]).astype(np.float32)
        kmeans = faiss.Kmeans(sample.shape[1], nlist, niter=10, seed=1, spherical=True, max_points_per_centroid=64)
        kmeans.train(sample)
        return kmeans.index


def _pairs(index: faiss.Index, vecs: np.ndarray, positions: np.ndarray, threshold: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(positions[i], id)`` for every other vector of ``index`` within ``threshold`` of ``vecs[i]``;
    ``index`` ids are positions."""
    if len(vecs) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lims, _, found = index.range_search(np.ascontiguousarray(vecs, dtype=np.float32), float(threshold))
    a = np.repeat(positions, np.diff(lims).astype(np.int64)).astype(np.int64)
    b = positions[found] if isinstance(index, faiss.IndexFlat) else found.astype(np.int64)
    keep = a != b
    return a[keep], b[keep]
