"""batched_ivf_search returns what faiss' own IVF search returns at the same nprobe."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.batched_ivf import batched_ivf_search

D, N, K = 64, 20000, 50


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, D)).astype(np.float32)
    xb = _unit(centers[rng.integers(0, 40, N)] + 0.6 * rng.standard_normal((N, D)).astype(np.float32))
    xq = _unit(centers[rng.integers(0, 40, 200)] + 1.0 * rng.standard_normal((200, D)).astype(np.float32))
    return xb, xq


@pytest.fixture(scope="module", params=["IVF64,Flat", "IVF64_HNSW32,Flat", "L2norm,IVF64,Flat",
                                               "IVF64,SQ8", "IVF64_HNSW32,SQ8", "uniform SQ8"])
def index(request, data) -> faiss.Index:
    xb, _ = data
    if request.param == "uniform SQ8":  # no factory string for it
        quantizer = faiss.IndexFlatIP(D)
        idx = faiss.IndexIVFScalarQuantizer(quantizer, D, 64, faiss.ScalarQuantizer.QT_8bit_uniform,
                                            faiss.METRIC_INNER_PRODUCT)
        idx.own_fields = True
        quantizer.this.disown()
    else:
        idx = faiss.index_factory(D, request.param, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(idx).cp.niter = 5
    if request.param == "IVF64,SQ8":  # faiss encodes SQ residuals by default; cover direct codes too
        faiss.extract_index_ivf(idx).by_residual = False
    idx.train(xb)
    idx.add(xb)
    return idx


def _check_same(Dr: np.ndarray, Ir: np.ndarray, Db: np.ndarray, Ib: np.ndarray) -> None:
    assert Db.dtype == np.float32 and Ib.dtype == np.int64 and Db.shape == Dr.shape == Ib.shape
    np.testing.assert_allclose(Db, Dr, atol=1e-5)
    assert np.all(np.diff(Db, axis=1) <= 0)
    np.testing.assert_array_equal(Ib == -1, Ir == -1)
    for i in range(len(Ir)):  # ids may differ only among float ties at the k-th score
        extra = np.setdiff1d(Ib[i], Ir[i])
        if len(extra):
            assert Db[i, -1] >= Dr[i, -1] - 1e-5 and np.isin(extra, Ib[i][Db[i] <= Dr[i, -1] + 1e-5]).all()


@pytest.mark.parametrize("nprobe", [1, 8, 100])
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_faiss_ivf(index, data, nprobe, threads) -> None:
    _, xq = data
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe
    Dr, Ir = index.search(xq, K)
    Db, Ib = batched_ivf_search(index, xq, K, nprobe, threads=threads)
    _check_same(Dr, Ir, Db, Ib)


@pytest.mark.parametrize("int8", [False, True])
def test_a_list_s_queries_scored_in_blocks_give_the_same_answer(index, data, monkeypatch, int8) -> None:
    """A list probed by more queries than ``_QUERY_BLOCK`` is scored block by block (memory
    bounded whatever the batch): the answers and the range hits are those of one block."""
    from index import batched_ivf

    _, xq = data
    whole = batched_ivf.batched_ivf_scan(index, xq, K, 8, 2, int8=int8, radius=0.5)
    monkeypatch.setattr(batched_ivf, "_QUERY_BLOCK", 7)  # ~25 queries a list here: several blocks each
    blocks = batched_ivf.batched_ivf_scan(index, xq, K, 8, 2, int8=int8, radius=0.5)
    np.testing.assert_allclose(blocks[0], whole[0], atol=1e-6)
    _check_same(whole[0], whole[1], blocks[0], blocks[1])
    np.testing.assert_array_equal(blocks[2][2], whole[2][2])
    for i in range(len(xq)):
        lims_b, ids_b, _ = blocks[2]
        lims_w, ids_w, _ = whole[2]
        assert set(ids_b[lims_b[i]:lims_b[i + 1]]) == set(ids_w[lims_w[i]:lims_w[i + 1]])


def test_k_larger_than_lists(index, data) -> None:
    _, xq = data
    ivf = faiss.extract_index_ivf(index)
    sizes = [ivf.invlists.list_size(i) for i in range(ivf.nlist)]
    k = 2 * max(sizes)  # nprobe=1: fewer than k candidates, padded with -1
    ivf.nprobe = 1
    Dr, Ir = index.search(xq[:50], k)
    Db, Ib = batched_ivf_search(index, xq[:50], k, 1, threads=2)
    assert (Ib == -1).any()
    _check_same(Dr, Ir, Db, Ib)
    ivf.nprobe = 4
    Dr, Ir = index.search(xq[:50], k)
    _check_same(Dr, Ir, *batched_ivf_search(index, xq[:50], k, 4))


def test_int8_pads_like_faiss_when_fewer_than_k_were_scanned(index, data) -> None:
    """The int8 heaps hold integers; their empty slots must still come back as (-FLT_MAX, -1)."""
    _, xq = data
    ivf = faiss.extract_index_ivf(index)
    k = 2 * max(ivf.invlists.list_size(i) for i in range(ivf.nlist))
    ivf.nprobe = 1
    Dr, Ir = index.search(xq[:50], k)
    Di, Ii = batched_ivf_search(index, xq[:50], k, 1, threads=2, int8=True)
    np.testing.assert_array_equal(Ii == -1, Ir == -1)
    assert (Ii == -1).any() and np.all(Di[Ii == -1] == -np.finfo(np.float32).max)
    assert np.abs(Di - Dr)[Ii >= 0].max() < 5e-3


def test_int8_falls_back_to_float_where_int32_could_overflow(data) -> None:
    """An SQ range so narrow that a query's integer unit is tiny would overflow the int32 sums:
    that index is scanned with faiss' float arithmetic instead (the same answers as faiss)."""
    from index.batched_ivf import _Lists

    xb, xq = data
    idx = faiss.index_factory(D, "IVF16,SQ8", faiss.METRIC_INNER_PRODUCT)
    idx.train(xb[:4000])
    ivf = faiss.downcast_index(faiss.extract_index_ivf(idx))
    trained = faiss.vector_to_array(ivf.sq.trained)
    trained[D:] = 1e-9  # vdiff: every code decodes to (almost) its list's centroid
    faiss.copy_array_to_vector(trained, ivf.sq.trained)
    idx.add(xb[:4000])
    near = np.full(len(xq), 0.9, np.float32)  # |q . centroid| of the probes
    assert _Lists(ivf, xq, int8=True, coarse=near).int8 is False
    assert _Lists(faiss.downcast_index(faiss.extract_index_ivf(_sq8(xb[:4000]))), xq, True, near).int8 is True
    ivf.nprobe = 4
    _check_same(*idx.search(xq, K), *batched_ivf_search(idx, xq, K, 4, int8=True))


def _sq8(xb: np.ndarray) -> faiss.Index:
    idx = faiss.index_factory(D, "IVF16,SQ8", faiss.METRIC_INNER_PRODUCT)
    idx.train(xb)
    return idx


def test_rejects_other_indexes(data) -> None:
    xb, xq = data
    for other in ("IVF16,SQ4", "IVF16,PQ8", "IVF16,SQfp16"):
        idx = faiss.index_factory(D, other, faiss.METRIC_INNER_PRODUCT)
        idx.train(xb[:2000])
        with pytest.raises(ValueError):
            batched_ivf_search(idx, xq, 10, 4)
    l2 = faiss.index_factory(D, "IVF16,Flat")
    l2.train(xb[:2000])
    with pytest.raises(ValueError):
        batched_ivf_search(l2, xq, 10, 4)
    with pytest.raises(ValueError):
        batched_ivf_search(faiss.IndexFlatIP(D), xq, 10, 4)


def test_index_search_takes_the_batched_path_for_batches(index, data) -> None:
    """index.query.search (tuning, eval, serving) answers a batch exactly as faiss does."""
    from index.query import search

    _, xq = data
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = 8
    Dr, Ir = index.search(xq, K)
    Ds, Is = search(index, xq, K, {"nprobe": 8})
    _check_same(Dr, Ir, Ds, Is)
    D1, I1 = search(index, xq[:1], K, {"nprobe": 8})  # one query: faiss' own scan
    _check_same(Dr[:1], Ir[:1], D1, I1)


@pytest.mark.parametrize("threads", [1, 2])
def test_int8_scan_of_sq8_lists_rounds_only_the_query(index, data, threads) -> None:
    """``int8=True``: SQ8 lists scored in integers. The scores move by the query's rounding only
    (far less than the gap between neighbours), so the answers stay faiss' up to near-ties;
    Flat lists are scored as before. The caller's thread settings are left as they were."""
    import torch

    _, xq = data
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = 8
    Dr, Ir = index.search(xq, K)
    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    Di, Ii = batched_ivf_search(index, xq, K, 8, threads=threads, int8=True)
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before
    if type(faiss.downcast_index(ivf)) is faiss.IndexIVFFlat:
        _check_same(Dr, Ir, Di, Ii)
        return
    assert Di.dtype == np.float32 and Ii.dtype == np.int64 and Di.shape == Dr.shape
    assert np.all(np.diff(Di, axis=1) <= 0)
    err = np.abs(Di - Dr)
    assert 0 < err.max() < 5e-3  # rounded (so the int8 path ran), and by little
    overlap = np.mean([len(np.intersect1d(Ii[i], Ir[i])) / K for i in range(len(Ir))])
    assert overlap > 0.97
    # the same answers whichever thread scored a list
    D1, I1 = batched_ivf_search(index, xq, K, 8, threads=1, int8=True)
    np.testing.assert_allclose(D1, Di, atol=1e-6)


@pytest.mark.parametrize("int8", [False, True])
def test_exact_probes_are_the_true_nearest_lists(index, data, int8) -> None:
    """``exact_probes``: the lists a flat quantizer would pick, found by one GEMM (in chunks)
    whatever the quantizer; for an HNSW quantizer, what its graph finds when searched exhaustively."""
    from index import ivf_probes

    _, xq = data
    ivf = faiss.extract_index_ivf(index)
    centroids = ivf_probes.centroid_view(ivf.quantizer)
    assert centroids.shape == (ivf.nlist, D)
    np.testing.assert_array_equal(centroids, ivf.quantizer.reconstruct_n(0, ivf.nlist))
    want = np.argsort(-(xq @ centroids.T), axis=1)[:, :8]
    rows = ivf_probes.PROBE_ROWS
    ivf_probes.PROBE_ROWS = 64  # several chunks of the 200 queries
    try:
        scores, got = ivf_probes.nearest_lists(xq, centroids, 8)
    finally:
        ivf_probes.PROBE_ROWS = rows
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))
    np.testing.assert_allclose(scores, np.take_along_axis(xq @ centroids.T, got, axis=1), rtol=1e-6)
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSWFlat):
        quantizer.hnsw.efSearch = 1000  # exhaustive on 64 nodes: the graph finds the true nearest too
    try:
        Dq, Iq = batched_ivf_search(index, xq, K, 8, int8=int8)
    finally:
        if isinstance(quantizer, faiss.IndexHNSWFlat):
            quantizer.hnsw.efSearch = 16
    _check_same(Dq, Iq, *batched_ivf_search(index, xq, K, 8, int8=int8, exact_probes=True))


def test_scan_is_a_search_parameter(index, data) -> None:
    from index.query import search
    from react.errors import ReactError

    _, xq = data
    Df, If = search(index, xq, K, {"nprobe": 8})
    Di, Ii = search(index, xq, K, {"nprobe": 8, "scan": "int8"})
    assert np.mean([len(np.intersect1d(Ii[i], If[i])) / K for i in range(len(If))]) > 0.97
    with pytest.raises(ReactError, match="scan='fp4'"):
        search(index, xq, K, {"nprobe": 8, "scan": "fp4"})
    De, Ie = search(index, xq, K, {"nprobe": 8, "probes": "exact"})
    assert np.mean([len(np.intersect1d(Ie[i], If[i])) / K for i in range(len(If))]) > 0.97
    with pytest.raises(ReactError, match="probes='all'"):
        search(index, xq, K, {"nprobe": 8, "probes": "all"})


def test_the_tuner_tries_the_int8_scan_on_ivf_sq8_only() -> None:
    from index.build import variants
    from index.factory import Candidate

    assert {"scan": "int8"} in variants(Candidate("IVF4096_HNSW32,SQ8"))
    assert {"scan": "int8", "probes": "exact"} in variants(Candidate("IVF4096_HNSW32,SQ8"))
    assert all("scan" not in v and "probes" not in v for v in variants(Candidate("HNSW32,SQ8")) + variants(Candidate("IVF64,Flat"))
               + variants(Candidate("OPQ64_256,IVF1024_HNSW32,PQ64x8")))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("int8", [False, True])
def test_the_scan_counts_what_faiss_range_search_finds(index, data, threads, int8) -> None:
    """``batched_ivf_scan(radius=r)``: the vectors above r within the probed lists, per query,
    as faiss' own IVF range search finds them (Flat lists exactly; SQ8 up to float rounding,
    and with the int8 scan up to the query's rounding, which decides the same way as its scores)."""
    from index.batched_ivf import batched_ivf_scan

    _, xq = data
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = 8
    r = 0.5
    lims, _, found = index.range_search(xq, r)
    Ds, Is, (slims, sfound, scounts) = batched_ivf_scan(index, xq, K, 8, threads, int8=int8, radius=r)
    np.testing.assert_array_equal(scounts, np.diff(slims))  # no budget: every hit kept
    rounded = int8 and type(faiss.downcast_index(ivf)) is faiss.IndexIVFScalarQuantizer
    if not rounded:
        _check_same(*index.search(xq, K), Ds, Is)
    assert 0 < len(found) < len(xq) * 8 * N / 64  # some, not all: the comparison can fail
    near = 0
    for i in range(len(xq)):
        want, got = set(found[lims[i]:lims[i + 1]]), set(sfound[slims[i]:slims[i + 1]])
        if not rounded:
            assert len(got ^ want) <= 1, i  # a score within rounding of r may fall either side
        near += len(got ^ want)
        top = Is[i][Ds[i] > r]  # the returned top-k above r are counted, by the same scores
        assert set(top) <= got, i
    assert near <= 0.01 * len(found)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_hit_budget_bounds_the_ids_kept_not_the_counts(index, data, threads) -> None:
    """At a low radius nearly every scanned vector is a hit: ``max_hits`` keeps memory bounded,
    and the per-query counts stay those of the unbounded scan."""
    from index.batched_ivf import batched_ivf_scan

    _, xq = data
    r = -1.0  # every scanned vector
    _, _, (lims, found, counts) = batched_ivf_scan(index, xq, K, 8, threads, radius=r)
    budget = len(found) // 10
    _, _, (blims, bfound, bcounts) = batched_ivf_scan(index, xq, K, 8, threads, radius=r, max_hits=budget)
    np.testing.assert_array_equal(bcounts, counts)
    assert 0 < len(bfound) <= budget
    kept = np.diff(blims)
    assert (kept <= counts).all() and (kept < counts).any()  # some queries cut short, and they can tell
    for i in np.flatnonzero(kept):
        assert set(bfound[blims[i]:blims[i + 1]]) <= set(found[lims[i]:lims[i + 1]])
