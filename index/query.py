"""One search routine for tuning, evaluation and serving, so a recall measured
at build time is the recall users get.

Beyond faiss' own knobs (``efSearch``, ``nprobe``, ``quantizer_efSearch``) a
search plan may carry three of ours:

- ``shift``: for text queries against an image index, move the query by the
  corpus' mean image-minus-text offset (the modality gap) before the graph or
  coarse quantizer sees it; the answer is then re-scored with the original query.
- ``rerank``: fetch ``rerank x k`` candidates and re-score them exactly with the
  stored vectors before cutting to ``k``.
- ``scan``: ``"int8"`` scores an IVF-SQ8 index's lists with an int8 GEMM in batched
  searches (``index.batched_ivf``); ``"float"`` (the default) with faiss' own arithmetic.
  Batches too small for the list-major scan, and other index types, use faiss' scan.
- ``probes``: ``"exact"`` picks a batched IVF search's lists by one GEMM against every
  centroid instead of the coarse quantizer's graph (the true nearest lists, so more
  recall per probed list); ``"index"`` (the default) asks the quantizer.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, NamedTuple

import faiss
import numpy as np

from index import batched_ivf
from index.exact import drop_excluded
from index.factory import as_float32, set_search_params
from react.errors import ReactError


class RangeHits(NamedTuple):
    """Per query, the rows scoring above a radius: ``rows[i]`` those kept (a memory budget may cut
    them short), ``counts[i]`` how many there were."""

    rows: list[np.ndarray]
    counts: np.ndarray

    def cut_short(self) -> np.ndarray:
        """Queries whose kept rows are fewer than their count."""
        return self.counts > np.array([len(r) for r in self.rows], np.int64)


SCANS = ("float", "int8")
PROBES = ("index", "exact")


@dataclass
class QuerySet:
    """Query vectors and, for queries drawn from the corpus, the row each must not find."""

    name: str  # "t2i", "t2t", or where user queries came from
    vectors: np.ndarray  # float32 [nq, d], unit rows
    exclude: np.ndarray | None = None  # global row per query, held out of its own answer

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def normalize(x: np.ndarray) -> np.ndarray:
    x = as_float32(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms < 1e-6):
        bad = int((~np.isfinite(norms) | (norms < 1e-6)).sum())
        raise ReactError(f"{bad} query vector(s) are NaN, infinite or zero")
    return x / norms


# make_direct_map() marks the map as built before it fills it: a thread that checked direct_map.no() while
# another was building read a half-filled map ("invalid key", "-1 entry in direct_map"): a 500 on the first
# concurrent deduplicated searches after every reload (issue 16, benchmarks/service_churn.py). Every
# reconstructor of every index builds and checks under this one lock until it has seen its map complete.
_DIRECT_MAP_LOCK = threading.Lock()


def reconstructor(index: faiss.Index) -> Callable[[np.ndarray], np.ndarray]:
    """Exact stored vectors by faiss id (indices with Flat codes only). Thread-safe."""
    ivf = faiss.try_extract_index_ivf(index)
    ready = ivf is None

    def stored(ids: np.ndarray) -> np.ndarray:
        nonlocal ready
        if not ready:
            with _DIRECT_MAP_LOCK:
                if ivf.direct_map.no():
                    ivf.make_direct_map()  # id -> (list, offset), 8 bytes per vector: built on first use only
                ready = True
        return index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    return stored


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    params: dict,
    ids: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    stored: Callable[[np.ndarray], np.ndarray] | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)`` of the top ``k`` (clamped to the index size; -1 pads).

    ``ids`` maps faiss ids to global rows when the build skipped rows;
    ``stored(faiss_ids)`` returns exact vectors for re-ranking."""
    scores, rows, _ = search_range(index, queries, k, params, ids, shift, stored, exclude)
    return scores, rows


def search_range(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    params: dict,
    ids: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    stored: Callable[[np.ndarray], np.ndarray] | None = None,
    exclude: np.ndarray | None = None,
    radius: float | None = None,
    max_hits: int | None = None,
) -> tuple[np.ndarray, np.ndarray, RangeHits | None]:
    """``search``, plus with a ``radius`` the global rows of every scanned vector scoring above it,
    per query, when the batched IVF scan answered (it counts them from the scores it computed
    anyway); None otherwise, and for shifted searches, whose scan scores are not the query's.
    At most ``max_hits`` rows are kept over the batch; the counts stay complete."""
    queries = as_float32(queries)
    extra = 0 if exclude is None else 1
    k = min(k, index.ntotal - extra) if index.ntotal > extra else 0
    if k <= 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), None
    set_search_params(index, params)
    scan = params.get("scan", "float")
    if scan not in SCANS:
        raise ReactError(f"search parameter scan={scan!r}: use one of {', '.join(SCANS)}")
    probes = params.get("probes", "index")
    if probes not in PROBES:
        raise ReactError(f"search parameter probes={probes!r}: use one of {', '.join(PROBES)}")
    rerank = max(1, int(params.get("rerank", 1)))
    shifted = bool(params.get("shift")) and shift is not None
    probe = normalize(queries + shift) if shifted else queries
    fetch = min((k + extra) * rerank, index.ntotal)
    scores, found, ranged = _ann(index, probe, fetch, int8=scan == "int8", exact_probes=probes == "exact",
                                 radius=None if shifted else radius, max_hits=max_hits)
    if (rerank > 1 or shifted) and stored is not None:
        scores, found = _rescore(queries, found, stored)
    elif shifted:
        raise ReactError("a shifted search needs the stored vectors to re-score")
    scores, found = scores[:, : k + extra], found[:, : k + extra]
    rows = np.where(found >= 0, (ids[np.maximum(found, 0)] if ids is not None else found), -1)
    if exclude is not None:
        scores, rows = drop_excluded(scores, rows, exclude, k)
    ranges = None
    if ranged is not None:
        lims, hit, counts = ranged
        hit = np.asarray(ids)[hit] if ids is not None else hit
        ranges = RangeHits([hit[lims[i]:lims[i + 1]] for i in range(len(queries))], counts)
    return scores, rows, ranges


def _ann(index: faiss.Index, queries: np.ndarray, k: int, int8: bool = False, exact_probes: bool = False,
         radius: float | None = None, max_hits: int | None = None
         ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """faiss' search, or for a batch over an IVF-Flat/SQ8 index the list-major GEMM
    search, which scans exactly the same candidates (same scores up to rounding,
    same rows; with ``int8``, SQ8 scores rounded as batched_ivf says), and counts
    what lies above ``radius`` on the way."""
    if len(queries) >= batched_ivf.MIN_QUERIES and batched_ivf.supports(index):
        return batched_ivf.batched_ivf_scan(index, queries, k, int8=int8, exact_probes=exact_probes, radius=radius,
                                            max_hits=max_hits)
    return (*index.search(queries, k), None)


RESCORE_ROWS = 65536  # stored vectors gathered at once: 128 MiB of float32 at d=512, whatever the batch


def _rescore(queries: np.ndarray, found: np.ndarray, stored: Callable) -> tuple[np.ndarray, np.ndarray]:
    valid = found >= 0
    safe = np.where(valid, found, found.max(initial=0))  # padded slots re-score a real vector, then drop
    exact = np.empty(found.shape, np.float32)
    step = max(1, RESCORE_ROWS // max(found.shape[1], 1))
    for s in range(0, len(found), step):
        block = safe[s : s + step]
        vecs = stored(block.reshape(-1)).reshape(block.shape[0], block.shape[1], -1)
        exact[s : s + step] = np.einsum("qd,qfd->qf", queries[s : s + step], vecs)
    exact[~valid] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(found, order, axis=1)
