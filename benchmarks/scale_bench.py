"""Scale benchmark: a compressed, on-disk index built under a memory budget, served, and extrapolated.

    .venv/bin/python benchmarks/scale_bench.py --n 10000000 --memory-gb 3 --json out/bench/scale_10m.json
    .venv/bin/python benchmarks/scale_bench.py --n 1000000 --spark local[2]     # + a Spark build to compare

One run, each step in its own process so that its peak memory is its own:

1. N synthetic CLIP-like pairs (benchmarks/clip_like.py, streamed: never N x d
   in memory) written as an embedding folder in parts, with LAION-like
   metadata, recording the seeded tiny text model of service_corpus.py so
   that text queries (the task) work.
2. ``react index build --modality image --memory-gb G --factory F`` (default
   F: OPQ128_512,IVF{nlist}_HNSW32,PQ128x8 built on disk): wall time, peak RSS
   (``ru_maxrss``) and peak anonymous RSS (RssAnon polled every 0.2 s: what
   the budget bounds; file-backed pages of memory-mapped parts and lists are
   page cache the kernel can drop), index bytes on disk.
3. Held-out text-side queries (never seen by the build's tuner): recall@50 of
   the served search against streamed exact search, and queries/s of both in
   the same process, batched (the service searches a task's prompts together).
4. Optional ``--spark MASTER``: the same build on Spark; recall within 0.01?
5. ``react serve`` over the index: RSS after loading, a ``--task-classes`` x
   80-template task through ``/v1/retrieve`` (wall, rows), RSS after it.
6. A table that extrapolates the measured per-vector costs to 400M and 5B rows
   and to E Spark executors (linear in N for add, bytes and exact search;
   IVF search with nlist ~ 4 sqrt(N) scans ~ sqrt(N) codes per probe).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clip_like  # noqa: E402
import service_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REACT = [sys.executable, "-m", "react"]
TEMPLATES = 80


def mib(kb: float) -> float:
    return round(kb / 1024, 1)


class Watch:
    """Peak memory of a child process: RssAnon/RssFile polled, ru_maxrss at exit."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.peak_anon, self.peak_file = proc, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def sample(self) -> dict:
        out = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                        out[key] = int(value.split()[0])
        except OSError:
            pass
        return out

    def _poll(self) -> None:
        while not self._stop.is_set():
            s = self.sample()
            self.peak_anon = max(self.peak_anon, s.get("RssAnon", 0))
            self.peak_file = max(self.peak_file, s.get("RssFile", 0))
            self._stop.wait(0.2)

    def wait(self) -> dict:
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._stop.set()
        self._thread.join()
        return {"rc": self.proc.returncode, "peak_rss_mib": mib(usage.ru_maxrss),
                "peak_anon_mib": mib(self.peak_anon), "peak_file_mib": mib(self.peak_file)}


def run_measured(cmd: list[str], log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        stats = Watch(proc).wait()
    stats["wall_s"] = round(time.perf_counter() - t0, 1)
    if stats["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {stats['rc']}); see {log}")
    return stats


def write_folder(emb: Path, n: int, dim: int, part_size: int, n_queries: int, seed: int, model_dir: Path
                 ) -> np.ndarray:
    """The embedding folder in LAION's layout, part by part; returns the held-out queries."""
    from react.models import load_model
    from react.schemas import img_emb_path, metadata_path, text_emb_path

    done = emb / "embed.json"
    qfile = emb.parent / f"queries_{n}_{dim}.npy"
    if done.is_file() and qfile.is_file() and json.loads(done.read_text()).get("count") == n:
        return np.load(qfile)
    shutil.rmtree(emb, ignore_errors=True)
    for sub in ("img_emb", "text_emb", "metadata"):
        (emb / sub).mkdir(parents=True)
    w, rng = clip_like.world(n, dim, seed)
    stream = clip_like.pairs(w, rng, n, dim)
    t0, row, part = time.perf_counter(), 0, 0
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    while row < n:
        want = min(part_size, n - row)
        img = np.empty((want, dim), np.float16)
        txt = np.empty((want, dim), np.float16)
        filled = 0
        while filled < want:
            a, b = pending.pop() if pending else next(stream)
            take = min(len(a), want - filled)
            img[filled:filled + take], txt[filled:filled + take] = a[:take], b[:take]
            if take < len(a):
                pending.append((a[take:], b[take:]))
            filled += take
        np.save(img_emb_path(emb, part), img)
        np.save(text_emb_path(emb, part), txt)
        meta = service_corpus._metadata(want)
        keys = pa.array([f"{row + i:010d}" for i in range(want)])
        pq.write_table(meta.set_column(0, "key", keys), metadata_path(emb, part))
        row, part = row + want, part + 1
        print(f"  part {part - 1}: {row:,}/{n:,} rows ({time.perf_counter() - t0:.0f} s)", flush=True)
    q = clip_like.queries(w, rng, 2 * n_queries, dim)
    np.save(qfile, q)
    model = str(model_dir.resolve())
    manifest = {"model": model, "model_id": load_model(model_dir, device="cpu").identity, "dim": dim, "count": n,
                "part_size": part_size, "parts": part, "input": "vectors", "input_form": "vectors"}
    done.write_text(json.dumps(manifest, indent=2) + "\n")
    return q


def held_out(index_dir: Path, emb: Path, q: np.ndarray, k: int) -> dict:
    """Recall@k of the served search and queries/s against streamed exact search, same run."""
    from index.exact import exact_knn, recall_at
    from index.searcher import Searcher
    from index.tune import timed
    from index.vectors import EmbeddingFolder

    folder = EmbeddingFolder.open(emb)
    _, truth, exact_s = exact_knn(folder.stream("image", chunk=262_144), q, k)
    searcher = Searcher(index_dir)
    searcher.search(q[:50], k)  # first touch of the mapped lists and quantizer
    found = searcher.search(q, k)[1]
    ann_s = timed(lambda: searcher.search(q, k))
    return {"queries": len(q), "recall": round(recall_at(found, truth, k), 4),
            "ann_qps": round(len(q) / ann_s, 1), "exact_qps": round(len(q) / exact_s, 2),
            "speedup": round(exact_s / ann_s, 1)}


def serve_task(index_dir: Path, classes: int, work: Path) -> dict:
    from service_bench import retrieve_task

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen(REACT + ["serve", "--index", f"scale={index_dir}", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    watch = Watch(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 600:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"react serve exited; see {work / 'serve.log'}")
            time.sleep(0.5)
        load_s = time.perf_counter() - t0
        loaded = watch.sample()
        task = retrieve_task(url, service_corpus.class_names(classes))
        after = watch.sample()
    finally:
        proc.terminate()
        stats = watch.wait()
    return {"load_s": round(load_s, 1), "task": task, "classes": classes, "templates": TEMPLATES,
            "rss_loaded_mib": mib(loaded.get("VmRSS", 0)), "anon_loaded_mib": mib(loaded.get("RssAnon", 0)),
            "rss_after_task_mib": mib(after.get("VmRSS", 0)), "anon_after_task_mib": mib(after.get("RssAnon", 0)),
            "file_after_task_mib": mib(after.get("RssFile", 0)), "peak_anon_mib": stats["peak_anon_mib"]}


def _factory(index_dir: Path) -> str | None:
    return json.loads((index_dir / "index.json").read_text())["indices"]["image"].get("factory")


def extrapolate(n: int, build: dict, entry: dict, search: dict, executors: tuple[int, ...]) -> list[dict]:
    """Per-vector costs measured at ``n`` scaled to LAION sizes (see the module docstring)."""
    bytes_per_vec = (entry.get("ivfdata_bytes", 0) + entry["bytes"]) / entry["count"]
    add_s_per_m = build["index_s"] / (n / 1e6)
    rows = []
    for target in (n, 400_000_000, 5_000_000_000):
        scale = target / n
        add = add_s_per_m * target / 1e6
        row = {"rows": target, "index_gb": round(bytes_per_vec * target / 1e9, 1),
               "embeddings_fp16_gb": round(2 * 512 * target / 1e9, 1),
               "add_h_1_process": round(add / 3600, 2),
               "ann_qps": round(search["ann_qps"] / math.sqrt(scale), 1),
               "exact_qps": round(search["exact_qps"] / scale, 4)}
        for e in executors:
            row[f"add_h_{e}_executors"] = round(add / e / 3600, 3)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--part-size", type=int, default=1_000_000)
    p.add_argument("--memory-gb", type=float, default=3.0)
    p.add_argument("--factory", default=None, help="default: OPQ128_512,IVF{min(4096, 4 sqrt(N))}_HNSW32,PQ128x8 (at d=512)")
    p.add_argument("--target-recall", type=float, default=0.9)
    p.add_argument("--queries", type=int, default=1000, help="tuning queries; as many again are held out")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--task-classes", type=int, default=1000)
    p.add_argument("--spark", default=None, metavar="MASTER", help="also build on Spark, e.g. local[2]")
    p.add_argument("--work", type=Path, default=REPO / "out" / "bench" / "scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--reuse", action="store_true",
                   help="keep an index already built under --work (same factory): re-tune it with `react index tune` "
                        "instead of rebuilding, then measure as usual (build figures come from its index.json)")
    args = p.parse_args(argv)

    from index.factory import default_nlist

    nlist = min(default_nlist(args.n), 4096)  # 2-core k-means; the table says what larger nlist costs
    m = args.dim // 4
    factory = args.factory or f"OPQ{m}_{4 * m},IVF{nlist}_HNSW32,PQ{m}x8"
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"n": args.n, "dim": args.dim, "memory_gb": args.memory_gb, "factory": factory,
                    "loadavg_start": os.getloadavg()}
    model_dir = service_corpus.tiny_model(args.work / f"model_{args.dim}", args.dim)
    emb = args.work / f"emb_{args.n}_{args.dim}"
    t0 = time.perf_counter()
    print(f"[1/5] embedding folder {emb}", flush=True)
    q = write_folder(emb, args.n, args.dim, args.part_size, args.queries, args.seed, model_dir)
    result["write_s"] = round(time.perf_counter() - t0, 1)
    result["embeddings_bytes"] = sum(f.stat().st_size for f in emb.rglob("*") if f.is_file())
    tune_q, test_q = args.work / "tune_queries.npy", q[args.queries:]
    np.save(tune_q, q[:args.queries])

    builds = {"single": []}
    if args.spark:
        builds["spark"] = ["--spark-master", args.spark]
    for name, extra in builds.items():
        out = args.work / f"index_{args.n}_{name}"
        print(f"[2/5] react index build ({name}) -> {out}", flush=True)
        cmd = REACT + ["index", "build", str(emb), "--out", str(out), "--modality", "image", "--factory", factory,
                       "--memory-gb", str(args.memory_gb), "--target-recall", str(args.target_recall),
                       "--k", str(args.k), "--queries", str(tune_q), "--on-disk", "--overwrite", *extra]
        if args.reuse and (out / "index.json").is_file() and _factory(out) == factory:
            cmd = REACT + ["index", "tune", str(out), "--target-recall", str(args.target_recall), "--k", str(args.k),
                           "--queries", str(tune_q)]
            print(f"      --reuse: re-tuning the existing build instead", flush=True)
        stats = run_measured(cmd, args.work / f"build_{name}.log") | {"reused": cmd[len(REACT) + 1] == "tune"}
        entry = json.loads((out / "index.json").read_text())["indices"]["image"]
        stats |= {"params": entry["search_params"], "tuned_recall": entry["recall"]["value"],
                  "index_bytes": entry["bytes"] + entry.get("ivfdata_bytes", 0), "index_s": entry["build_s"]}
        print(f"[3/5] held-out recall and speed ({name})", flush=True)
        stats["held_out"] = held_out(out, emb, test_q, args.k)
        result[f"build_{name}"], result[f"entry_{name}"] = stats, entry
        print(json.dumps(stats, indent=1), flush=True)
    if args.spark:
        result["spark_recall_gap"] = round(abs(result["build_single"]["held_out"]["recall"]
                                               - result["build_spark"]["held_out"]["recall"]), 4)
    print(f"[4/5] react serve + a {args.task_classes} x {TEMPLATES} task", flush=True)
    result["serve"] = serve_task(args.work / f"index_{args.n}_single", args.task_classes, args.work)
    print(json.dumps(result["serve"], indent=1), flush=True)
    print("[5/5] extrapolation", flush=True)
    result["extrapolation"] = extrapolate(args.n, result["build_single"], result["entry_single"],
                                          result["build_single"]["held_out"], (10, 100))
    result["loadavg_end"] = os.getloadavg()
    for key in ("entry_single", "entry_spark"):
        result.pop(key, None)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(r: dict) -> None:
    b = r["build_single"]
    h = b["held_out"]
    print(f"\n{r['n']:,} x {r['dim']}, {r['factory']}, --memory-gb {r['memory_gb']}")
    print(f"build {b['wall_s']} s (train + add + merge {b['index_s']} s), peak RSS {b['peak_rss_mib']} MiB "
          f"(anonymous {b['peak_anon_mib']} MiB), index {b['index_bytes'] / 2**30:.2f} GiB on disk")
    print(f"held-out recall@50 {h['recall']} at {b['params']}: {h['ann_qps']} q/s vs exact {h['exact_qps']} q/s "
          f"= {h['speedup']}x")
    if "spark_recall_gap" in r:
        print(f"Spark build: held-out recall {r['build_spark']['held_out']['recall']} "
              f"(gap {r['spark_recall_gap']}), wall {r['build_spark']['wall_s']} s")
    s = r["serve"]
    print(f"serve: RSS {s['rss_loaded_mib']} MiB loaded (anonymous {s['anon_loaded_mib']}), after the task "
          f"{s['rss_after_task_mib']} MiB (anonymous {s['anon_after_task_mib']}); task "
          f"{s['classes']} x {s['templates']}: {s['task']}")
    cols = list(r["extrapolation"][0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in r["extrapolation"]:
        print("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
