"""How much is there? Per class, how many corpus pairs lie above a similarity.

A user choosing ``k`` (or wondering whether REACT can help at all: the
PatchCamelyon failure in the paper) needs to know, before downloading, how
many pairs the corpus holds for each class above the similarity they care
about. ``Abundance`` collects it while the task's queries are searched:

- **range search** where faiss answers it exhaustively enough to count: Flat
  indices, inverted files (within the probed lists, so an estimate at
  nprobe < nlist; a batch against an inner-product IVF is counted by the
  search's own list-major scan, ``Searcher.search_range``: faiss' IVF range
  search would scan every probed list again, query by query, which at 10M rows
  took longer than the whole task had), and HNSW with Flat storage up to ``BRUTE_MAX_ROWS`` rows
  (HNSW's own range search only returns what its beam visits, ~efSearch
  results, so its Flat storage is scanned instead). A query whose range
  holds more than ``k`` pairs means *k is too small*.
- otherwise the **top-k tail**: the pairs among the top k that lie above the
  cut; when a query's k-th hit is still above it the count is a lower bound
  and k is too small.

A class's count is the number of unique pairs above the cut over all its
queries (templates). Fewer than ``ALMOST_NOTHING`` means the corpus has
(almost) nothing for it. At a low cut a big corpus has billions of pairs above
it, so rows are kept only up to ``ROWS_KEPT_MAX`` (the searches are told how many
more fit); every pair is still counted per query, and a class whose rows were cut
short reports its count as a lower bound.
"""
from __future__ import annotations

import faiss
import numpy as np

from index.factory import set_search_params
from index.query import RangeHits, normalize

BRUTE_MAX_ROWS = 250_000   # HNSW storage scanned exhaustively up to this size (~0.1 ms a query at 512 dims)
ROWS_KEPT_MAX = 2_000_000  # rows kept for the per-class union; beyond it counts become lower bounds
RANGE_PAIRS_MAX = 8_000_000  # pairs one faiss range_search call may return at worst (128 MiB)
ALMOST_NOTHING = 10        # fewer pairs above the cut than the coverage score averages


def _range_index(index: faiss.Index) -> faiss.Index | None:
    """The index to range-search for counting, or None where counting needs the top-k tail."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        storage = faiss.downcast_index(inner.storage)
        return storage if isinstance(storage, faiss.IndexFlat) and inner.ntotal <= BRUTE_MAX_ROWS else None
    if isinstance(inner, faiss.IndexFlat) or faiss.try_extract_index_ivf(index) is not None:
        return index
    return None


def inner_product_radius(cut: float) -> float:
    """faiss keeps results strictly beyond the radius; the epsilon makes the cut inclusive."""
    return cut - 1e-6


def range_rows(searcher, modality: str, vecs: np.ndarray, cut: float, max_hits: int | None = None
               ) -> RangeHits | None:
    """Per query, the global rows scoring at least ``cut`` (at most ``max_hits`` kept in all, every one
    counted); None when the index cannot be range-searched."""
    mod = searcher.modalities[modality]
    if mod.params.get("shift"):
        return None  # shifted queries are re-scored from stored vectors: no radius applies
    target = _range_index(mod.index)
    if target is None:
        return None
    l2 = mod.entry.get("metric") == "l2"
    radius = 2.0 * (1.0 - cut) + 1e-6 if l2 else inner_product_radius(cut)
    if target is mod.index:
        set_search_params(target, mod.params)  # nprobe of an inverted file
    ivf = faiss.try_extract_index_ivf(target)
    reach = target.ntotal if ivf is None else min(target.ntotal, 4 * target.ntotal * ivf.nprobe // ivf.nlist)
    step = max(1, RANGE_PAIRS_MAX // max(reach, 1))  # queries per call: its result stays bounded
    room = np.iinfo(np.int64).max if max_hits is None else max_hits
    ids = mod.ids
    vecs = normalize(vecs)
    out, counts = [], np.zeros(len(vecs), np.int64)
    for s in range(0, len(vecs), step):
        try:
            lims, _, found = target.range_search(vecs[s:s + step], float(radius))
        except RuntimeError:
            return None
        counts[s:s + step] = np.diff(lims)
        for i in range(len(lims) - 1):
            fids = found[lims[i] : lims[i + 1]]
            if len(fids) > room:
                fids, room = fids[:0], 0  # counted, not kept: the class's count becomes a lower bound
            room -= len(fids)
            out.append(np.asarray(ids)[fids] if ids is not None else fids.astype(np.int64))
    return RangeHits(out, counts)


class Abundance:
    """Accumulates, chunk by chunk, the pairs above each modality's cut per class."""

    def __init__(self, n_classes: int, query_class: np.ndarray, k: int, cuts: dict[str, float]) -> None:
        # query_class[q]: the class query q counts for (aliases and example images count for their class)
        self.query_class, self.k, self.cuts = query_class, k, cuts
        self.rows: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
        self.widest = np.zeros(n_classes, np.int64)       # most pairs above the cut for one query
        self.k_too_small = np.zeros(n_classes, bool)
        self.lower_bound = np.zeros(n_classes, bool)
        self.kept = 0
        self.methods: set[str] = set()

    def room(self) -> int:
        """How many more rows the per-class union keeps."""
        return max(0, ROWS_KEPT_MAX - self.kept)

    def radius(self, modality: str) -> float | None:
        """What a search that can count on the way (``Searcher.search_range``) should count above."""
        return inner_product_radius(self.cuts[modality]) if modality in self.cuts else None

    def add(self, searcher, modality: str, lo: int, vecs: np.ndarray, scores: np.ndarray, rows: np.ndarray,
            ranges: RangeHits | None = None) -> None:
        """Queries ``lo ..`` (their vectors, and their unthresholded top-k answer); ``ranges``: the
        rows above ``radius(modality)`` per query, if the search counted them (``max_hits=room()``)."""
        if modality not in self.cuts:
            return
        cut = self.cuts[modality]
        hits = ranges if ranges is not None else range_rows(searcher, modality, vecs, cut, self.room())
        if hits is None:
            self.methods.add("top-k tail")
            above = (scores >= cut) & (rows >= 0)
            full = above[:, -1] if above.shape[1] >= self.k else np.zeros(len(above), bool)
            found = [rows[i][above[i]] for i in range(len(rows))]
            hits = RangeHits(found, np.array([len(f) for f in found], np.int64))
            for i in np.flatnonzero(full):
                c = int(self.query_class[lo + i])
                self.k_too_small[c] = self.lower_bound[c] = True
        else:
            self.methods.add("range search")
        short = hits.cut_short()
        for i, got in enumerate(hits.rows):
            c = int(self.query_class[lo + i])
            self.widest[c] = max(self.widest[c], int(hits.counts[i]))
            if hits.counts[i] > self.k:
                self.k_too_small[c] = True
            if not short[i] and self.kept + len(got) <= ROWS_KEPT_MAX:
                self.rows[c].append(got)
                self.kept += len(got)
            else:
                self.lower_bound[c] = True

    def per_class(self) -> list[dict]:
        out = []
        for c, parts in enumerate(self.rows):
            n = int(np.unique(np.concatenate(parts)).size) if parts else 0
            n = max(n, int(self.widest[c]))
            out.append({"pairs_above": n, "pairs_above_lower_bound": bool(self.lower_bound[c]),
                        "k_too_small": bool(self.k_too_small[c]), "almost_nothing": n < ALMOST_NOTHING and not self.lower_bound[c]})
        return out
