"""Float vs int8 scan of an IVF-SQ8 index (index/batched_ivf.py), against exact search, one run.

For a built index folder, its embedding folder and a .npy of query vectors, prints per
nprobe: recall@k of the float scan and of the int8 scan (``scan: int8``) against exact
search, and their queries/s as a ratio to exact search timed in the same run (streamed
from the float16 parts, as ``react index tune`` does; timed before and after the sweep,
the faster of the two used, so the ratio does not flatter the index).

  python benchmarks/scan_bench.py /tmp/scale10m/index_10000000_single \\
      /tmp/scale10m/emb_10000000_512 /tmp/scale10m/tune_queries.npy --nprobe 24,32,48,64

Pass the tuning queries to explore; the held-out figure is scale_bench.py's, whose
setting the tuner picks on the tuning queries.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", type=Path, help="a `react index build` folder with an IVF-SQ8 image index")
    ap.add_argument("embeddings", type=Path, help="its embedding folder (exact search streams it)")
    ap.add_argument("queries", type=Path, help=".npy of query vectors [n, d]")
    ap.add_argument("--nprobe", default="24,32,48,64", help="comma-separated nprobe values")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()

    from index.exact import exact_knn, recall_at
    from index.searcher import Searcher
    from index.tune import timed
    from index.vectors import EmbeddingFolder

    q = np.load(a.queries).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    folder = EmbeddingFolder.open(a.embeddings)

    def exact() -> tuple[np.ndarray, float]:
        _, truth, spent = exact_knn(folder.stream("image", chunk=262_144), q, a.k)
        return truth, spent

    truth, exact_before = exact()
    searcher = Searcher(a.index)
    base = searcher.modalities["image"].params
    searcher.search(q[:50], a.k)  # first touch of the mapped lists and quantizer
    rows = []
    for nprobe in (int(v) for v in a.nprobe.split(",")):
        for scan in ("float", "int8"):
            params = base | {"nprobe": nprobe, "quantizer_efSearch": max(64, 2 * nprobe), "scan": scan}
            params.pop("rerank", None)
            found = searcher.search(q, a.k, params=params)[1]
            spent = timed(lambda: searcher.search(q, a.k, params=params))
            rows.append({"nprobe": nprobe, "scan": scan, "recall": round(recall_at(found, truth, a.k), 4),
                         "qps": round(len(q) / spent, 1)})
            print(json.dumps(rows[-1]), flush=True)
    _, exact_after = exact()
    exact_qps = len(q) / min(exact_before, exact_after)
    print(f"\nexact: {len(q) / exact_before:.2f} q/s before, {len(q) / exact_after:.2f} after; ratios use "
          f"{exact_qps:.2f} (load average {os.getloadavg()[0]:.1f})")
    print("| nprobe | scan | recall@%d | q/s | vs exact |\n|---|---|---|---|---|" % a.k)
    for r in rows:
        r["speedup"] = round(r["qps"] / exact_qps, 1)
        print(f"| {r['nprobe']} | {r['scan']} | {r['recall']} | {r['qps']:,} | {r['speedup']}× |")
    if a.json:
        a.json.write_text(json.dumps({"queries": len(q), "k": a.k, "exact_qps": round(exact_qps, 2),
                                      "exact_qps_runs": [round(len(q) / exact_before, 2),
                                                         round(len(q) / exact_after, 2)],
                                      "rows": rows, "measured": time.strftime("%Y-%m-%d %H:%M")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
