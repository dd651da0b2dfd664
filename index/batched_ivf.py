"""List-major batched search of an inner-product IVF index (Flat or SQ8 codes), using BLAS.

Why: faiss' ``IndexIVF.search`` scans the probed lists query by query with a
per-vector SIMD kernel, so at the nprobe that CLIP-like text queries need for
recall@50 >= 0.95 (64-128 of 4096 lists) it is only 2-4x faster than exact
``IndexFlatIP``, which is one big BLAS GEMM. For a *batch* of queries the same
work can be reordered list-major: assign probes with the index's coarse
quantizer, invert the assignment to "which queries probe list l", and score each
list against all of its queries at once with one GEMM ``Q_l @ X_l.T``. Each
list is then read from memory once per batch instead of once per probing query,
and the arithmetic runs in a cache-blocked GEMM kernel. The candidate set is
exactly faiss' (same quantizer, same nprobe, exact float32 scores), so the
results equal ``index.search`` at the same nprobe up to float rounding ties.

The list vectors are numpy views of the index's own inverted lists (zero copy,
no extra memory; on-disk lists are views of the memory-mapped file). 8-bit
scalar-quantized lists (``SQ8``, ``SQ8_uniform``; by residual or not) are
scored without decoding them one by one: faiss decodes a code byte as
``vmin + (c + 0.5) / 255 * vdiff``, so ``q . x = q . vmin + 0.5 sum(q')
+ q' . c`` with ``q' = q * vdiff / 255`` -- one GEMM of the scaled queries
against the list's codes converted to float, plus a per-query constant (and
``q . centroid`` when codes are residuals). That is the arithmetic faiss does,
reordered, so the answers again equal ``index.search`` up to float rounding;
at 10M rows it turns the SQ8 scan, which was faiss' per-query kernel reading
every probed list once per query, into one read of each list per batch.

``int8=True`` (search parameter ``scan: int8``) scores SQ8 lists in integers instead:
each scaled query ``q'`` is rounded to int8 with its own scale ``s`` (``max |q'| / 127``),
the codes are shifted to int8 (``c - 128``, one XOR), and ``q' . c`` becomes ``s (q8 .
(c - 128)) + 128 sum(q')``, one int8 GEMM with int32 sums (``torch._int_mm``: AMX / VNNI
where the CPU has them). The heaps keep those int32 sums in each query's unit ``s`` (plus
the residual bias ``q . centroid / s``, rounded), so no float pass runs over the
``[queries, list]`` block -- at batch 16,000 a broadcast multiply-add cost as much as the
GEMM; only the final ``k`` per query are turned into float scores. Scores differ from
faiss' by the query's rounding (about 4e-4 in cosine at d=512, the size of SQ8's own
error), so the answers are no longer faiss' exactly: the tuner measures this variant's
recall like any other.

``exact_probes=True`` (search parameter ``probes: exact``) picks each query's lists by one
GEMM against every centroid of a flat or HNSW-flat quantizer instead of its graph search:
the true nearest lists, worth ~0.012 recall@50 at the same nprobe at 10M rows, for a GEMM
that a big batch makes cheaper than the graph walk.

Per-query top-k is kept in faiss heaps
(``HeapArray.addn_query_subset_with_ids``, C++); with ``threads > 1`` lists are
shared out dynamically to that many Python threads (numpy and faiss release the
GIL), each with its own heaps and a single-threaded BLAS, merged at the end.
"""
from __future__ import annotations

import itertools
import threading

import faiss
import numpy as np

from index import ivf_probes
from index.one_thread import one_thread

__all__ = ["batched_ivf_scan", "batched_ivf_search", "supports"]

MIN_QUERIES = 32  # below this lists are shared by too few queries for a GEMM to beat faiss' scan

_CHUNK = 32  # lists handed to a worker at a time
_QUERY_BLOCK = 1024  # queries of one list scored at once (a GEMM this tall runs at full speed)


class _Lists:
    """How to score one inverted list of ``ivf`` against a block of queries."""

    def __init__(self, ivf: faiss.IndexIVF, x: np.ndarray, int8: bool = False,
                 coarse: np.ndarray | None = None) -> None:
        """``coarse``: each query's largest ``q . centroid`` over its probes (bounds the int8 sums)."""
        self.d = ivf.d
        self.sq = type(ivf) is faiss.IndexIVFScalarQuantizer
        self.int8 = False
        self.torch = None  # the int8 path's module, imported once here rather than per list
        if not self.sq:
            self.x, self.const, self.residual = x, None, False
            return
        trained = faiss.vector_to_array(ivf.sq.trained).astype(np.float32)
        vmin, vdiff = trained[: len(trained) // 2], trained[len(trained) // 2:]  # [d] each, or [1] if uniform
        self.x = np.ascontiguousarray(x * (vdiff / 255.0), dtype=np.float32)
        self.const = (x @ np.broadcast_to(vmin, (self.d,)) + 0.5 * self.x.sum(axis=1)).astype(np.float32)
        self.residual = bool(ivf.by_residual)
        if int8:
            self._int8_units(coarse)

    def _int8_units(self, coarse: np.ndarray | None) -> None:
        """Set up the int8 scan, whose heaps hold int32 scores in each query's own unit ``s``.

        Its score is ``s (q8 . (c - 128) + b_l) + const8`` with ``b_l = rint(q . centroid_l / s)``: the
        ``[m, n_l]`` block needs no float pass at all (a broadcast multiply and add cost as much as
        the GEMM), only an int32 add of ``b_l`` for residual codes; ``s`` and ``const8`` are applied to
        the final ``k`` per query. Rounding ``b_l`` moves a score by ``s / 2``, far below the query's
        own rounding. Where int32 could overflow (a tiny SQ range), the float path is used instead."""
        import torch

        scale = np.maximum(np.abs(self.x).max(axis=1), np.finfo(np.float32).tiny) / 127.0
        q8 = np.rint(self.x / scale[:, None]).astype(np.int8)
        bound = 128.0 * np.abs(q8).sum(axis=1, dtype=np.float64)
        if self.residual and coarse is not None:
            bound += np.abs(coarse) / scale
        if bound.max() >= 2.0 ** 30:
            return
        self.int8, self.torch = True, torch
        self.q8 = torch.from_numpy(q8)
        self.unit = scale.astype(np.float64)
        self.const8 = self.const + 128.0 * self.x.sum(axis=1, dtype=np.float64)

    @property
    def dtype(self) -> type:
        """Type of the scores this scorer hands to the heaps."""
        return np.int32 if self.int8 else np.float32

    def threshold(self, radius: float) -> np.ndarray:
        """Per query, the heap-unit score that a vector must exceed to score above ``radius``."""
        if not self.int8:
            return np.full(len(self.x), radius, np.float32)
        # an integer score exceeds t exactly when it exceeds floor(t)
        return np.clip(np.floor((radius - self.const8) / self.unit), -2.0 ** 31, 2.0 ** 31 - 1).astype(np.int64)

    def to_scores(self, vals: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The heaps' values [nq, k] as float32 inner products; empty slots as -FLT_MAX."""
        if not self.int8:
            return vals
        scores = (self.unit[:, None] * vals + self.const8[:, None]).astype(np.float32)
        scores[ids < 0] = -np.finfo(np.float32).max
        return scores

    def scratch(self, rows: int):
        """One worker's buffer for a widened (float) or shifted (int8) list of up to ``rows`` codes."""
        if not self.sq:
            return None
        if self.int8:
            return self.torch.empty((rows, self.d), dtype=self.torch.uint8)
        return np.empty((rows, self.d), np.float32)

    def load(self, codes, n_l: int, buf):
        """List codes as the GEMM's operand [n_l, d]: float32 (Flat: a view of the list), SQ8 codes
        widened into ``buf`` (this worker's scratch: a fresh array would page-fault its 5 MB on
        every list), or shifted to int8 into ``buf`` (one XOR)."""
        if not self.sq:
            return faiss.rev_swig_ptr(codes, n_l * self.d * 4).view(np.float32).reshape(n_l, self.d)
        raw = faiss.rev_swig_ptr(codes, n_l * self.d).reshape(n_l, self.d)
        if self.int8:
            return self.torch.bitwise_xor(self.torch.from_numpy(raw), 128, out=buf[:n_l]).view(self.torch.int8)
        np.copyto(buf[:n_l], raw, casting="unsafe")
        return buf[:n_l]

    def scores(self, qi: np.ndarray, coarse: np.ndarray, xl) -> np.ndarray:
        """[len(qi), n_l] scores of one loaded list ``xl`` for queries ``qi``; ``coarse``: their
        ``q . centroid`` from the quantizer's search, the residual codes' bias (as faiss uses it).

        The float GEMM is written list-side first (``X_l @ Q^T``): with the few queries a list
        gets from a 1,000-query batch, OpenBLAS runs that shape ~1.6x faster than ``Q @ X_l^T``.
        The int8 one query-side first: its [m, n_l] product is already in the heaps' order."""
        if self.int8:
            s = self.torch._int_mm(self.q8[self.torch.from_numpy(qi)], xl.T).numpy()
            if self.residual:
                b = np.rint(coarse / self.unit[qi]).astype(np.int32)
                np.add(s, b[:, None], out=s)  # numpy: torch's broadcast int32 add is ~8x slower here
            return s
        s = np.ascontiguousarray((xl @ self.x[qi].T).T)
        if self.sq:
            s += (self.const[qi] + coarse if self.residual else self.const[qi])[:, None]
        return s


_SQ_TYPES = (faiss.ScalarQuantizer.QT_8bit, faiss.ScalarQuantizer.QT_8bit_uniform)


def _ivf_ip(index: faiss.Index) -> tuple[faiss.IndexIVF, list]:
    """The IndexIVF (IP, Flat or SQ8 codes) inside ``index`` and the query transforms before it."""
    index = faiss.downcast_index(index)
    chain = []
    if isinstance(index, faiss.IndexPreTransform):
        chain = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
        index = faiss.downcast_index(index.index)
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError as e:
        raise ValueError(f"no IVF index inside {type(index).__name__}") from e
    if type(ivf) is faiss.IndexIVFFlat:
        if ivf.code_size != ivf.d * 4:
            raise ValueError("unexpected IVF-Flat code size")
    elif type(ivf) is faiss.IndexIVFScalarQuantizer:
        if ivf.sq.qtype not in _SQ_TYPES or ivf.code_size != ivf.d:
            raise ValueError("IVF scalar quantizer must be SQ8 or SQ8_uniform")
    else:  # IVFFlatDedup / IVFPQ / ... store other codes
        raise ValueError(f"IVF part is {type(ivf).__name__}, need IndexIVFFlat or an SQ8 IndexIVFScalarQuantizer")
    if type(index) is not type(ivf):  # IDMap / Refine / ... change ids or scores
        raise ValueError(f"{type(index).__name__} wrapper around the IVF is not supported")
    if ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError("IVF index must use METRIC_INNER_PRODUCT")
    return ivf, chain


def supports(index: faiss.Index) -> bool:
    """Whether ``batched_ivf_search`` can answer for ``index`` (an IP IndexIVFFlat or IVF-SQ8)."""
    try:
        _ivf_ip(index)
    except ValueError:
        return False
    return True


def batched_ivf_search(
    index: faiss.Index, queries: np.ndarray, k: int, nprobe: int | None = None, threads: int | None = None,
    int8: bool = False, exact_probes: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search of ``queries`` [nq, d] probing ``nprobe`` lists each.

    ``index`` is an IndexIVFFlat or SQ8 IndexIVFScalarQuantizer with METRIC_INNER_PRODUCT, possibly behind an
    IndexPreTransform (e.g. built by ``index_factory("IVF4096_HNSW32,Flat", ..., IP)``);
    anything else raises ValueError. ``nprobe`` defaults to the index's own. Probes come from the index's own quantizer
    (an HNSW quantizer's efSearch is used as set). ``threads`` defaults to
    ``faiss.omp_get_max_threads()``. Returns (scores [nq, k] float32, descending;
    ids [nq, k] int64, the index's ids), padded with (-3.4e38, -1) when fewer than
    ``k`` vectors were scanned -- the same as ``index.search`` with ``nprobe``.
    ``int8``: score SQ8 lists with an int8 GEMM (module docstring); ignored for Flat lists.
    ``exact_probes``: the ``nprobe`` lists whose centroids score highest, by one GEMM against
    all of them, instead of the quantizer's own (graph) search; for an IP flat or HNSW-flat
    quantizer (others are asked as usual).
    """
    scores, ids, _ = batched_ivf_scan(index, queries, k, nprobe, threads, int8, exact_probes)
    return scores, ids


def batched_ivf_scan(
    index: faiss.Index, queries: np.ndarray, k: int, nprobe: int | None = None, threads: int | None = None,
    int8: bool = False, exact_probes: bool = False, radius: float | None = None, max_hits: int | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """``batched_ivf_search``, and with a ``radius`` also every scanned vector scoring above it,
    from the same scores: ``(lims [nq + 1], ids, counts [nq])``, lims and ids as faiss'
    ``range_search`` returns them (query ``i``'s ids are ``ids[lims[i]:lims[i + 1]]``; within
    the probed lists, like faiss' own IVF range search, which would scan every probed list a
    second time, per query). ``max_hits`` bounds the ids kept (16 bytes each, in memory until
    the scan ends: at a low radius a batch can have billions); ``counts`` are always complete,
    so a query whose count exceeds its ids was cut short."""
    ivf, chain = _ivf_ip(index)
    x = np.ascontiguousarray(queries, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != index.d:
        raise ValueError(f"queries must be [nq, {index.d}]")
    for vt in chain:
        x = np.ascontiguousarray(vt.apply(x), dtype=np.float32)
    if k <= 0:
        raise ValueError("k must be positive")
    nq = x.shape[0]
    nprobe = max(1, min(int(nprobe or ivf.nprobe), ivf.nlist))
    threads = max(1, threads or faiss.omp_get_max_threads())
    if nq == 0 or ivf.ntotal == 0:
        empty = (np.zeros(nq + 1, np.int64), np.zeros(0, np.int64), np.zeros(nq, np.int64)) if radius is not None \
            else None
        return np.full((nq, k), -np.finfo(np.float32).max, np.float32), np.full((nq, k), -1, np.int64), empty
    scan = _Scan(ivf, x, nprobe, k, threads, int8, exact_probes, radius, max_hits)
    if threads == 1:
        scan.work(0)
    else:
        pool = [threading.Thread(target=scan.work, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    if scan.errors:
        raise scan.errors[0]
    ranges = scan.ranges() if radius is not None else None
    vals = np.stack([scan.scorer.to_scores(v, i) for v, i in zip(scan.vals, scan.ids)])
    if threads == 1:
        return vals[0], scan.ids[0], ranges
    return (*faiss.merge_knn_results(vals, scan.ids, keep_max=True), ranges)


class _Scan:
    """One batch's list-major scan: (1) probes, (2) inverted into the queries
    probing each list, grouped by list; then per worker thread ``t`` (3) one GEMM
    per list and (4) its scores pushed into that thread's per-query heaps
    (``vals[t]``, ``ids[t]``). Lists are handed out ``_CHUNK`` at a time, biggest
    GEMMs first, to whichever worker asks next."""

    def __init__(self, ivf: faiss.IndexIVF, x: np.ndarray, nprobe: int, k: int, threads: int,
                 int8: bool = False, exact_probes: bool = False, radius: float | None = None,
                 max_hits: int | None = None) -> None:
        self.nq, self.d = x.shape
        self.k, self.threads = k, threads
        centroids = ivf_probes.centroid_view(ivf.quantizer) if exact_probes else None
        if centroids is not None:
            coarse, assign = ivf_probes.nearest_lists(x, centroids, nprobe)
        else:
            coarse, assign = ivf.quantizer.search(x, nprobe)
        self.scorer = _Lists(ivf, x, int8, np.where(assign >= 0, np.abs(coarse), 0).max(axis=1))
        dtype = self.scorer.dtype
        self.vals = np.full((threads, self.nq, k), np.iinfo(dtype).min if dtype == np.int32 else -np.finfo(dtype).max,
                            dtype)
        self.ids = np.full((threads, self.nq, k), -1, np.int64)
        flat = assign.ravel()
        order = np.argsort(flat, kind="stable")
        self.qof = (order // nprobe).astype(np.int64)
        self.coarse = coarse.ravel()[order]  # q . centroid per (list, query) pair, in qof's order
        per_list = np.bincount(flat[flat >= 0], minlength=ivf.nlist)
        self.start = np.concatenate([[np.count_nonzero(flat < 0)], per_list]).cumsum()
        self.inv = ivf.invlists
        self.sizes = np.array([self.inv.list_size(int(l)) for l in range(ivf.nlist)], dtype=np.int64)
        lists = np.flatnonzero((per_list > 0) & (self.sizes > 0))
        lists = lists[np.argsort(-(per_list[lists] * self.sizes[lists]), kind="stable")]  # big GEMMs first
        self.chunks = [lists[i:i + _CHUNK] for i in range(0, len(lists), _CHUNK)]
        self.next_chunk = itertools.count().__next__  # atomic under the GIL
        self.errors: list[BaseException] = []
        self.above_unit = self.scorer.threshold(radius) if radius is not None else None
        self.above: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(self.threads)]  # (query, id)
        self.counts = np.zeros((self.threads, self.nq), np.int64)  # per worker: every hit, kept or not
        # each worker keeps ids up to its share of max_hits, so no lock is needed
        self.room = [np.iinfo(np.int64).max if max_hits is None else max(0, max_hits) // threads] * threads

    def ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every worker's kept (query, id) pairs above the radius, grouped by query, and every
        query's full count: ``(lims, ids, counts)``."""
        counts = self.counts.sum(axis=0)
        parts = [pair for per_thread in self.above for pair in per_thread]
        if not parts:
            return np.zeros(self.nq + 1, np.int64), np.zeros(0, np.int64), counts
        q = np.concatenate([p[0] for p in parts])
        found = np.concatenate([p[1] for p in parts])
        order = np.argsort(q, kind="stable")
        lims = np.concatenate([[0], np.cumsum(np.bincount(q, minlength=self.nq))]).astype(np.int64)
        return lims, found[order], counts

    def _keep_above(self, t: int, qi: np.ndarray, s: np.ndarray, list_ids, n_l: int) -> None:
        """Worker ``t`` counts the scores of one list beyond the radius (as faiss' range search
        keeps them) per query, and keeps their ids while its share of ``max_hits`` lasts."""
        above = s > self.above_unit[qi][:, None]
        per_query = np.count_nonzero(above, axis=1)
        hits = int(per_query.sum())
        if not hits:
            return
        self.counts[t, qi] += per_query  # qi holds each query once per list
        if self.room[t] < hits:
            self.room[t] = 0
            return
        self.room[t] -= hits
        hit_q, hit_col = np.nonzero(above)
        self.above[t].append((qi[hit_q], faiss.rev_swig_ptr(list_ids, n_l)[hit_col].copy()))

    def work(self, t: int) -> None:
        """Worker ``t``: takes chunks of lists until none is left; an error is kept for the caller."""
        # min-heap of the k largest scores
        heap = faiss.int_minheap_array_t() if self.scorer.int8 else faiss.float_minheap_array_t()
        heap.nh, heap.k = self.nq, self.k
        heap.val, heap.ids = faiss.swig_ptr(self.vals[t]), faiss.swig_ptr(self.ids[t])
        buf = self.scorer.scratch(int(self.sizes.max()))
        try:
            with one_thread(self.scorer.torch):  # index/one_thread.py says why
                self._scan_chunks(t, heap, buf)
            heap.reorder()
        except BaseException as e:  # re-raised in the caller
            self.errors.append(e)

    def _scan_chunks(self, t: int, heap, buf) -> None:
        """Worker ``t`` scores lists, chunk by chunk, into its ``heap`` (and range hits)."""
        inv, sizes, qof, start = self.inv, self.sizes, self.qof, self.start
        while (c := self.next_chunk()) < len(self.chunks):
            for l in self.chunks[c]:
                l = int(l)
                n_l = int(sizes[l])
                codes = inv.get_codes(l)
                xl = self.scorer.load(codes, n_l, buf)
                list_ids = inv.get_ids(l)
                # a popular list of a big batch is scored _QUERY_BLOCK queries at a time, so a
                # worker's [queries, list] block stays ~10 MB whatever the batch size
                for lo in range(start[l], start[l + 1], _QUERY_BLOCK):
                    hi = min(lo + _QUERY_BLOCK, start[l + 1])
                    qi = qof[lo:hi]
                    s = self.scorer.scores(qi, self.coarse[lo:hi], xl)
                    heap.addn_query_subset_with_ids(len(qi), faiss.swig_ptr(qi), n_l, faiss.swig_ptr(s),
                                                    list_ids, 0)
                    if self.above_unit is not None:
                        self._keep_above(t, qi, s, list_ids, n_l)
                inv.release_codes(l, codes)
