"""Float vs int8 scan of an IVF-SQ8 index (index/batched_ivf.py), with the quantizer's probes
or exact ones (index/ivf_probes.py), against exact search, one run, by nprobe and by query
batch size.

For a built index folder and its embedding folder, prints per nprobe and scan: recall@k
against exact search on the first --truth queries, and queries/s at each batch size as a
ratio to exact search timed in the same run (streamed from the float16 parts, as
``react index tune`` does; timed before and after the sweep, the faster used, so the
ratio does not flatter the index). Exact search is one GEMM per chunk, bound by
arithmetic, so its q/s does not grow with the batch; a list-major scan reads each
probed list once per batch, so it does.

Queries: a .npy (``--queries``), or fresh ones drawn from the clip_like world the
folder was generated from (``--world N,DIM,SEED``, as benchmarks/scale_bench.py wrote
it): unseen by the tuner, and as many as the largest batch needs.

  python benchmarks/scan_bench.py /tmp/scale10m/index_10000000_single /tmp/scale10m/emb_10000000_512 \\
      --world 10000000,512,0 --batches 1000,4000,16000 --nprobe 32,40,48
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FRESH_SEED = 12345  # queries from a generator the folder's own queries never used
VARIANTS = (("float", "index"), ("int8", "index"), ("int8", "exact"))  # (scan, probes)


def load_queries(a: argparse.Namespace, count: int) -> np.ndarray:
    if a.world:
        import clip_like

        n, dim, seed = (int(v) for v in a.world.split(","))
        w, _ = clip_like.world(n, dim, seed)
        return clip_like.queries(w, np.random.default_rng(FRESH_SEED), count, dim)
    q = np.load(a.queries).astype(np.float32)
    if len(q) < count:
        raise SystemExit(f"--queries {a.queries}: {len(q)} rows, the largest batch needs {count}")
    return q[:count] / np.linalg.norm(q[:count], axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", type=Path, help="a `react index build` folder with an IVF-SQ8 image index")
    ap.add_argument("embeddings", type=Path, help="its embedding folder (exact search streams it)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--queries", type=Path, help=".npy of query vectors [n, d]")
    src.add_argument("--world", help="N,DIM,SEED of the clip_like folder: draw fresh queries from its world")
    ap.add_argument("--nprobe", default="", help="comma-separated (default: the index's tuned nprobe)")
    ap.add_argument("--batches", default="1000", help="comma-separated query batch sizes to time")
    ap.add_argument("--truth", type=int, default=1000, help="queries whose recall is measured (exact search)")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()

    from index.exact import exact_knn, recall_at
    from index.searcher import Searcher
    from index.tune import timed
    from index.vectors import EmbeddingFolder

    batches = [int(v) for v in a.batches.split(",")]
    q = load_queries(a, max(batches + [a.truth]))
    tq = q[:a.truth]
    folder = EmbeddingFolder.open(a.embeddings)

    def exact() -> tuple[np.ndarray, float]:
        _, truth, spent = exact_knn(folder.stream("image", chunk=262_144), tq, a.k)
        return truth, spent

    truth, exact_before = exact()
    searcher = Searcher(a.index)
    tuned = searcher.modalities["image"].params
    probes = [int(v) for v in a.nprobe.split(",")] if a.nprobe else [int(tuned["nprobe"])]
    searcher.search(q[:50], a.k)  # first touch of the mapped lists and quantizer
    rows = []
    for nprobe in probes:
        for scan, probes in VARIANTS:
            params = {k: v for k, v in tuned.items() if k != "rerank"}
            params |= {"nprobe": nprobe, "quantizer_efSearch": max(64, 2 * nprobe), "scan": scan, "probes": probes}
            found = searcher.search(tq, a.k, params=params)[1]
            row = {"nprobe": nprobe, "scan": scan, "probes": probes,
                   "recall": round(recall_at(found, truth, a.k), 4), "qps": {}}
            for b in batches:
                row["qps"][b] = round(b / timed(lambda: searcher.search(q[:b], a.k, params=params)), 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    _, exact_after = exact()
    exact_qps = a.truth / min(exact_before, exact_after)
    print(f"\nexact on {a.truth} queries: {a.truth / exact_before:.2f} q/s before, {a.truth / exact_after:.2f} "
          f"after; ratios use {exact_qps:.2f} (load average {os.getloadavg()[0]:.1f})")
    head = " | ".join(f"batch {b:,}: q/s (vs exact)" for b in batches)
    print(f"| nprobe | scan | probes | recall@{a.k} | {head} |\n|" + "---|" * (4 + len(batches)))
    for r in rows:
        r["speedup"] = {b: round(v / exact_qps, 1) for b, v in r["qps"].items()}
        cells = " | ".join(f"{r['qps'][b]:,} ({r['speedup'][b]}×)" for b in batches)
        print(f"| {r['nprobe']} | {r['scan']} | {r['probes']} | {r['recall']} | {cells} |")
    if a.json:
        a.json.write_text(json.dumps({"truth_queries": a.truth, "k": a.k, "queries": a.world or str(a.queries),
                                      "exact_qps": round(exact_qps, 2),
                                      "exact_qps_runs": [round(a.truth / exact_before, 2),
                                                         round(a.truth / exact_after, 2)],
                                      "tuned": tuned, "rows": rows, "loadavg": os.getloadavg(),
                                      "measured": time.strftime("%Y-%m-%d %H:%M")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
