"""Markdown tables from benchmarks/results/explore_n*.jsonl (written by explore_index.py).

  python benchmarks/summarize_results.py benchmarks/results/explore_n1000000_s1.jsonl [--all]

x_exact is recomputed against one reference exact qps per file: the median of the exact
IndexFlatIP measurements in that file, ignoring ones below half the fastest (this VM's
speed drops for a while after long builds; those slow re-measurements would inflate ratios).
Without --all only a condensed set of rows is shown (plain sweeps, rerank k'=200, shift).
"""
import json
import sys

import numpy as np


def main():
    path = sys.argv[1]
    rows = [json.loads(line) for line in open(path)]
    ex = np.array(sorted({r["exact_qps"] for r in rows}))
    ref = float(np.median(ex[ex >= 0.5 * ex.max()]))
    print(f"reference exact IndexFlatIP qps: {ref:.0f} (measured: {', '.join(f'{e:.0f}' for e in ex)})\n")
    print("| candidate | params | build s | memory MB | RSS Δ MB | recall@50 | qps | x exact |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    seen = set()
    for r in rows:
        p = r["params"]
        if "--all" not in sys.argv and ("k'=500 (fp16" in p and "shift" not in p or "overfetch" in p
                                        or "k'=1000" in p or "k'=50 (fp16" in p):
            continue
        key = (r["candidate"], p)
        if key in seen:
            continue
        seen.add(key)
        mem = r["index_mb"] + r.get("fp16_store_mb", 0)
        print(f"| {r['candidate']} | {p} | {r['build_s']:.0f} | {mem:.0f} | {r['rss_delta_mb']:.0f} |"
              f" {r['recall50']:.3f} | {r['qps']:.0f} | {r['qps'] / ref:.1f} |")


if __name__ == "__main__":
    main()
