"""List-major batched IVF search (index/batched_ivf.py) vs faiss IVF search vs exact.

For IVF{nlist}_HNSW32,Flat (IP) on N CLIP-like vectors (clip_like.py) and 1000-query
batches on --threads threads, reports per nprobe: recall@50 (vs exact), q/s of
``index.search``, of ``batched_ivf_search`` and of exact ``faiss.knn``, all measured in
the same run, interleaved, best of --reps. ``--quantizer flat`` also runs both IVF
searches with an exact IndexFlatIP over the same centroids as coarse quantizer
(swapped in at search time; the inverted lists are unchanged).

  python benchmarks/batched_ivf_bench.py --n 1000000 --nlist 4096 --nprobe 48,64,96,128
Data and built indexes are cached under --cache (names shared with explore_index.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import clip_like  # noqa: E402
from index.batched_ivf import batched_ivf_search  # noqa: E402

IP = faiss.METRIC_INNER_PRODUCT


def load_data(a) -> tuple[np.ndarray, np.ndarray]:
    tag = f"{a.n}_{a.dim}_{a.queries}_{a.seed}_s{clip_like.SPECTRUM:g}"
    pi, pq = (os.path.join(a.cache, f"{k}_{tag}.npy") for k in ("img", "q"))
    if os.path.exists(pi) and os.path.exists(pq):
        return np.load(pi), np.load(pq)
    t = time.time()
    xb, _, q = clip_like.generate(a.n, a.dim, a.queries, a.seed)
    print(f"generated in {time.time() - t:.1f}s", flush=True)
    np.save(pi, xb), np.save(pq, q)
    return xb, q


def load_index(a, xb: np.ndarray, nlist: int) -> faiss.Index:
    path = os.path.join(a.cache, f"ivf{nlist}_{a.n}_{a.dim}_{a.seed}_s{clip_like.SPECTRUM:g}.faiss")
    if os.path.exists(path):
        return faiss.read_index(path)
    t = time.time()
    idx = faiss.index_factory(a.dim, f"IVF{nlist}_HNSW32,Flat", IP)
    ivf = faiss.extract_index_ivf(idx)
    ivf.cp.niter, ivf.cp.max_points_per_centroid = 10, 10**9
    s = np.sort(np.random.default_rng(7).choice(len(xb), size=min(len(xb), 40 * nlist), replace=False))
    idx.train(xb[s])
    idx.add(xb)
    print(f"built IVF{nlist}_HNSW32,Flat in {time.time() - t:.0f}s", flush=True)
    faiss.write_index(idx, path)
    return idx


def best_qps(fn, q: np.ndarray, times: list[float]):
    t = time.perf_counter()
    out = fn(q)
    times.append(time.perf_counter() - t)
    return out


def recall(I: np.ndarray, gt: np.ndarray) -> float:
    k = gt.shape[1]
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(I, gt)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--nlist", default="4096", help="comma-separated")
    ap.add_argument("--nprobe", default="48,64,96,128", help="comma-separated")
    ap.add_argument("--quantizer", default="hnsw,flat", help="hnsw (as built) and/or flat (exact centroids)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cache", default="/tmp/explore_cache")
    a = ap.parse_args()
    os.makedirs(a.cache, exist_ok=True)
    faiss.omp_set_num_threads(a.threads)
    xb, q = load_data(a)
    k, probes = a.k, [int(p) for p in a.nprobe.split(",")]
    exact = lambda x: faiss.knn(x, xb, k, metric=IP)  # noqa: E731  (BLAS GEMM + heaps)
    gt, t_exact = None, []
    print(f"n={a.n} d={a.dim} queries={len(q)} k={k} threads={a.threads} reps={a.reps}", flush=True)
    hdr = (f"{'n':>8s} {'nlist':>6s} {'quant':>5s} {'nprobe':>6s} {'R@50':>6s} {'faissIVF':>9s} {'batched':>8s} "
           f"{'exact':>6s} {'x_exact':>7s} {'faiss_x':>7s} {'mismatch':>8s}")
    for nlist in (int(x) for x in a.nlist.split(",")):
        idx = load_index(a, xb, nlist)
        ivf = faiss.extract_index_ivf(idx)
        hq = faiss.downcast_index(ivf.quantizer)
        cent = hq.reconstruct_n(0, nlist)
        flatq = faiss.IndexFlatIP(a.dim)
        flatq.add(cent)
        print(hdr + "\n" + "-" * len(hdr), flush=True)
        for quant in a.quantizer.split(","):
            ivf.quantizer = flatq if quant == "flat" else hq
            res = {p: ([], [], None, None) for p in probes}
            for rep in range(a.reps):  # interleave: exact, then faiss / batched per nprobe
                _, Ie = best_qps(exact, q, t_exact)
                gt = Ie if gt is None else gt
                for p in probes:
                    ivf.nprobe = p
                    if hasattr(hq, "hnsw"):
                        hq.hnsw.efSearch = max(64, 2 * p)
                    tf, tb, _, _ = res[p]
                    Df, If = best_qps(lambda x: idx.search(x, k), q, tf)
                    Db, Ib = best_qps(lambda x: batched_ivf_search(idx, x, k, p, a.threads), q, tb)
                    res[p] = (tf, tb, (Df, If), (Db, Ib))
            ex = len(q) / min(t_exact)
            for p in probes:
                tf, tb, (Df, If), (Db, Ib) = res[p]
                qf, qb = len(q) / min(tf), len(q) / min(tb)
                mism = float(np.mean([len(np.setdiff1d(x, y)) for x, y in zip(If, Ib)]) / k)
                assert np.allclose(Df, Db, atol=1e-5), "batched scores differ from faiss"
                print(f"{a.n:8d} {nlist:6d} {quant:>5s} {p:6d} {recall(Ib, gt):6.3f} {qf:9.0f} {qb:8.0f} {ex:6.0f} "
                      f"{qb / ex:7.1f} {qf / ex:7.1f} {mism:8.1e}", flush=True)
        ivf.quantizer = hq
        del idx, ivf, flatq


if __name__ == "__main__":
    main()
