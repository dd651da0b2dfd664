"""Index benchmark: the tuned index against exact search, on CLIP-like T2I queries.

    .venv/bin/python benchmarks/index_bench.py                 # 1M x 512, ~40 min on 2 cores
    .venv/bin/python benchmarks/index_bench.py --n 100000      # what the test suite runs

One run: synthetic pairs (benchmarks/clip_like.py) are written as an embedding
folder, ``react index build`` (the library call) chooses and tunes the image
index with one set of held-out class-name-like text queries, and a *second*,
disjoint query set measures what a user gets: recall@k of the tuned index and
queries/s, against exact IndexFlatIP search on the same queries in the same
run. Candidates' build time and memory come from the build's own report.
Prints a table; ``--json`` also writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clip_like  # noqa: E402

from index.build import build_index  # noqa: E402
from index.embed import write_embedding_folder  # noqa: E402
from index.exact import recall_at  # noqa: E402
from index.searcher import Searcher  # noqa: E402
from react.schemas import INDEX_JSON  # noqa: E402
from index.tune import timed  # noqa: E402
from index.vectors import EmbeddingFolder  # noqa: E402


def rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):  # peak resident set
                return int(line.split()[1]) / 2**20
    return float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="corpus pairs (default: 1000000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension (default: 512)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per set (tuning, evaluation)")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--factory", default="auto", help="auto, or force a faiss factory string")
    parser.add_argument("--sample-size", type=int, default=200_000, help="rows candidates are compared on")
    parser.add_argument("--work", type=Path, default=Path("out/bench/index"), help="scratch folder")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=int, default=2, help="timing repetitions, exact and tuned interleaved")
    parser.add_argument("--reuse", action="store_true", help="measure an index built by an earlier run")
    args = parser.parse_args(argv)

    work = args.work
    emb, idx = work / f"emb_{args.n}_{args.dim}_{args.seed}", work / f"index_{args.n}_{args.dim}_{args.seed}"
    t0 = time.perf_counter()
    img, txt, queries = clip_like.generate(args.n, args.dim, n_queries=2 * args.queries, seed=args.seed)
    tune_q, eval_q = queries[: args.queries], queries[args.queries :]
    if not (emb / "embed.json").is_file():
        shutil.rmtree(emb, ignore_errors=True)
        write_embedding_folder(emb, img, txt, part_size=250_000, model="clip_like-synthetic")
    del img, txt
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "tune_queries.npy", tune_q)
    gen_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    if args.reuse and (idx / INDEX_JSON).is_file():
        manifest = json.loads((idx / INDEX_JSON).read_text())
        print(f"reusing {idx} (built earlier; --reuse)")
    else:
        manifest = build_index(emb, idx, modality="image", factory=args.factory, target_recall=args.target_recall,
                               k=args.k, queries=str(work / "tune_queries.npy"), sample_size=args.sample_size,
                               seed=args.seed, overwrite=True)
    build_s = time.perf_counter() - t0
    entry = manifest["indices"]["image"]

    # The baseline is exact search as users would run it: an in-memory float32 IndexFlatIP
    # (one BLAS GEMM per query batch), not the streaming ground-truth pass over float16 parts.
    flat = faiss.IndexFlatIP(args.dim)
    for _, block in EmbeddingFolder.open(emb).stream("image"):
        flat.add(np.ascontiguousarray(block, dtype=np.float32))
    truth_scores, truth = flat.search(eval_q, args.k)
    searcher = Searcher(idx)
    found = searcher.search(eval_q, args.k)[1]
    recall = recall_at(found, truth, args.k)
    exact_s, ann_s = [], []
    for _ in range(args.reps):  # interleaved, best of reps: the two see the same machine
        exact_s.append(timed(lambda: flat.search(eval_q, args.k)))
        ann_s.append(timed(lambda: searcher.search(eval_q, args.k)))
    del flat
    qps, exact_qps = len(eval_q) / min(ann_s), len(eval_q) / min(exact_s)
    top_gap = float(np.mean(truth_scores[:, 0] - truth_scores[:, -1]))

    result = {
        "n": args.n, "dim": args.dim, "k": args.k, "target_recall": args.target_recall, "threads": os.cpu_count(),
        "factory": entry["factory"], "build_params": entry["build_params"], "search_params": entry["search_params"],
        "eval_recall": round(recall, 4), "eval_qps": round(qps, 1), "exact_qps": round(exact_qps, 1),
        "speedup": round(qps / exact_qps, 2), "tune_recall": entry["recall"]["value"],
        "index_bytes": entry["bytes"], "build_s": round(build_s, 1), "generate_write_s": round(gen_s, 1),
        "peak_rss_gb": round(rss_gb(), 2), "query_top1_minus_topk": round(top_gap, 4),
        "candidates": entry["candidates"],
    }
    print(f"\n{args.n:,} x {args.dim} CLIP-like pairs, {len(eval_q)} held-out T2I queries, k={args.k}, "
          f"{os.cpu_count()} threads; top-1 minus top-{args.k} similarity {top_gap:.3f}")
    print(f"{'candidate (on ' + str(min(args.n, args.sample_size)) + ' rows)':44s} {'build s':>8s} "
          f"{'B/vec':>7s} {'recall':>7s} {'q/s':>9s}  params")
    for cand in entry["candidates"]:
        print(f"{cand['factory']:44s} {cand['build_s']:8.1f} {cand['bytes_per_vector']:7.0f} "
              f"{cand['recall']:7.3f} {cand['qps']:9,.0f}  {cand['params']}")
    print(f"\nchosen: {entry['factory']} {entry['build_params']} {entry['search_params']}; "
          f"full build+tune {build_s:.0f} s, index {entry['bytes'] / 2**20:,.0f} MiB, peak RSS {rss_gb():.1f} GiB")
    print(f"{'':20s} {'recall@' + str(args.k):>10s} {'q/s':>10s} {'x exact':>8s}")
    print(f"{'exact IndexFlatIP':20s} {1.0:10.3f} {exact_qps:10,.0f} {1.0:8.1f}")
    print(f"{'tuned index':20s} {recall:10.3f} {qps:10,.0f} {qps / exact_qps:8.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
