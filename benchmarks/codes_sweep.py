"""Which compressed codes reach the recall target: a sweep of nprobe x re-rank depth.

    .venv/bin/python benchmarks/codes_sweep.py EMB_DIR QUERIES.npy \
        "OPQ64_256,IVF1024_HNSW32,PQ64x8" "OPQ128_512,IVF1024_HNSW32,PQ128x8" "IVF1024_HNSW32,SQ8"

EMB_DIR and QUERIES.npy as benchmarks/scale_bench.py writes them (its --work folder:
emb_{n}_{dim}/ and queries_{n}_{dim}.npy; rows 1000-1499 of the queries are used, the
ones scale_bench holds out of tuning). Each factory is trained on 100k rows and filled
in memory; recall@50 is against exact search over the same folder, in the same run.
This is the exploration that chose PQ128 over PQ64 (docs/scale.md), not a tuning step.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.exact import exact_knn, recall_at  # noqa: E402
from index.query import search  # noqa: E402
from index.vectors import EmbeddingFolder  # noqa: E402


def main(argv: list[str]) -> None:
    emb, queries, factories = argv[0], argv[1], argv[2:]
    folder = EmbeddingFolder.open(emb)
    q = np.load(queries)[1000:1500]
    _, truth, exact_s = exact_knn(folder.stream("image"), q, 50)
    print(f"exact {len(q) / exact_s:.0f} q/s", flush=True)
    _, x = folder.gather("image", np.arange(folder.count))
    stored = lambda ids: folder.take("image", ids)  # noqa: E731
    for factory in factories:
        t0 = time.time()
        index = faiss.index_factory(folder.dim, factory, faiss.METRIC_INNER_PRODUCT)
        index.train(x[np.random.default_rng(0).choice(len(x), min(100_000, len(x)), replace=False)])
        index.add(x)
        print(f"{factory}: built in {time.time() - t0:.0f} s", flush=True)
        for nprobe in (16, 32, 64, 128):
            for rerank in (10, 40, 100):
                params = {"nprobe": nprobe, "quantizer_efSearch": max(64, 2 * nprobe), "rerank": rerank}
                t0 = time.perf_counter()
                rows = search(index, q, 50, params, stored=stored)[1]
                spent = time.perf_counter() - t0
                print(f"  nprobe {nprobe} rerank {rerank}: recall@50 {recall_at(rows, truth, 50):.3f}, "
                      f"{len(q) / spent:.0f} q/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
