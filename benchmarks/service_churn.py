"""The retrieval service under churn (issue 16): clients keep querying while the index is reloaded.

A real ``react serve`` process on loopback serves ``--index churn=ROOT/served``,
where ``served`` is a symlink switched atomically (the operator's "ln -sfn new
served; kill -HUP" deployment) between the good index folder and corrupt copies
of it (a truncated .faiss file, an index.json that is not JSON, a truncated
metadata.arrow), and a reload is triggered every ``--interval`` seconds,
alternating ``POST /v1/indices/churn/reload`` and SIGHUP:

    good -> corrupt (POST) -> good (POST) -> corrupt (SIGHUP) -> good (SIGHUP) -> ...

Meanwhile ``--clients`` clients loop over text search, embedding search,
clip-retrieval's /knn-service and inline task retrieval (``/v1/retrieve``), a
poller reads ``/readyz`` every 0.25 s, and the server's RSS is sampled. Checked
(and reported as JSON):

- every client request is answered 2xx (the good index is always the one
  served: a corrupt folder is never swapped in), none times out;
- a reload of a corrupt folder is refused (POST: 409; SIGHUP: the failed-reload
  counter moves) and the generation stays; one of a good folder swaps it in
  (the generation moves);
- ``/readyz`` answers 200 ``ready`` at every poll;
- RSS stays bounded: the median of the last quarter of the samples against
  the first quarter's (an old index kept alive would add its size per reload).

    python benchmarks/service_churn.py --clients 16 --duration 60 --interval 3 --json out/bench/churn.json

Builds (once, cached under ``--cache``) the service benchmark's corpus and
tiny-model index (benchmarks/service_corpus.py), or takes ``--index DIR``.
tests/test_service_churn.py runs the same function smaller.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CORRUPTIONS = ("faiss-truncated", "manifest-not-json", "metadata-truncated")


def make_corrupt(good: Path, out: Path, kind: str) -> Path:
    """A copy of the index folder ``good`` broken in one way (``kind`` of CORRUPTIONS)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(good, out)
    if kind == "faiss-truncated":
        target = sorted(out.glob("*.faiss"))[0]
        target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 2)])
    elif kind == "manifest-not-json":
        (out / "index.json").write_text('{"format": 1, "rows": ')
    elif kind == "metadata-truncated":
        target = sorted(p for p in out.iterdir() if p.name.startswith("metadata"))[0]
        target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 3)])
    else:
        raise ValueError(kind)
    return out


def point(link: Path, target: Path) -> None:
    """Switch the symlink ``link`` to ``target`` atomically (rename over it)."""
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)


def start_server(served: Path, workdir: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    log = workdir / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "react", "serve", "--index", f"churn={served}", "--port", "0",
                                 "--state-dir", str(workdir / "state"), "--log-level", "warning", *extra],
                                stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"COLUMNS": "200"})
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"react serve exited: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("react serve printed no address in 120 s")
        if m := re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text()):
            return proc, m.group(1), log
        time.sleep(0.1)


def _reloads(metrics_text: str, outcome: str) -> float:
    m = re.search(r'react_index_reloads_total\{index="churn",outcome="%s"\} ([0-9.e+]+)' % outcome, metrics_text)
    return float(m.group(1)) if m else 0.0


async def _churn(url: str, pid: int, link: Path, good: Path, corrupt: list[Path], clients: int, duration: float,
                 interval: float, dim: int, texts: list[str], classes: list[str], min_reloads: int = 0) -> dict:
    import aiohttp
    import psutil

    proc = psutil.Process(pid)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(64, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    bodies = {
        "text": [("/v1/search", {"text": t, "k": 10}) for t in texts],
        "embedding": [("/v1/search", {"embedding": [round(float(x), 6) for x in v], "k": 10}) for v in vecs],
        "knn": [("/knn-service", {"text": t, "num_images": 10, "indice_name": "churn"}) for t in texts],
        "retrieve": [("/v1/retrieve", {"classes": list(classes[i: i + 2]), "templates": ["a photo of a {}."],
                                       "k": 5, "inline": True}) for i in range(0, max(1, len(classes) - 1), 2)],
    }
    kinds = ("text", "embedding", "knn", "retrieve")
    status: dict[str, dict[str, int]] = {k: {} for k in kinds}
    failures: list[dict] = []
    readyz = {"polls": 0, "not_ready": 0, "bad": []}
    rss: list[tuple[float, int]] = []
    reloads: list[dict] = []
    started = time.monotonic()
    # Load on a shared machine slows reloads; the run is stretched (never shortened) until
    # ``min_reloads`` have happened, so a count the caller relies on does not depend on speed.
    stop = [started + duration]
    timeout = aiohttp.ClientTimeout(total=30)  # a hang counts as a failure, never blocks the run

    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def client(i: int) -> None:
            kind, n = kinds[i % len(kinds)], i
            while time.monotonic() < stop[0]:
                path, body = bodies[kind][n % len(bodies[kind])]
                n += 1
                try:
                    async with session.post(url + path, json=body) as r:
                        text = await r.read()
                        code = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    code, text = f"{exc.__class__.__name__}", b""
                status[kind][str(code)] = status[kind].get(str(code), 0) + 1
                if not (isinstance(code, int) and 200 <= code < 300):
                    failures.append({"t": round(time.monotonic() - started, 2), "kind": kind, "status": code,
                                     "body": text[:300].decode("utf-8", "replace")})

        async def poll_ready() -> None:
            while time.monotonic() < stop[0]:
                try:
                    async with session.get(url + "/readyz") as r:
                        body = await r.json(content_type=None)
                        ok = r.status == 200 and body.get("ready") is True
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    ok, body = False, {"error": exc.__class__.__name__}
                readyz["polls"] += 1
                if not ok:
                    readyz["not_ready"] += 1
                    readyz["bad"] = (readyz["bad"] + [body])[:5]
                await asyncio.sleep(0.25)

        async def sample_rss() -> None:
            while time.monotonic() < stop[0]:
                rss.append((round(time.monotonic() - started, 2), proc.memory_info().rss))
                await asyncio.sleep(0.5)

        async def get_json(path: str):
            async with session.get(url + path) as r:
                return await r.json(content_type=None)

        async def state() -> tuple[int, float, float]:
            info = await get_json("/v1/indices")
            async with session.get(url + "/metrics") as r:
                text = await r.text()
            return info[0]["generation"], _reloads(text, "ok"), _reloads(text, "failed")

        async def reloader() -> None:
            step = 0
            while time.monotonic() + interval < stop[0] or step < min_reloads:
                await asyncio.sleep(interval)
                bad = step % 2 == 0
                how = "POST" if (step // 2) % 2 == 0 else "SIGHUP"
                target = corrupt[(step // 2) % len(corrupt)] if bad else good
                gen0, ok0, failed0 = await state()
                point(link, target)
                t0 = time.monotonic()
                entry = {"step": step, "t": round(t0 - started, 2), "via": how, "folder": target.name,
                         "expect": "refused" if bad else "swapped"}
                if how == "POST":
                    async with session.post(url + "/v1/indices/churn/reload") as r:
                        entry["status"] = r.status
                        entry["answer"] = (await r.text())[:300]
                    done = True
                else:
                    os.kill(pid, signal.SIGHUP)
                    done = False
                    while time.monotonic() - t0 < 60:  # SIGHUP answers nobody: wait for its counter to move
                        _, ok1, failed1 = await state()
                        if ok1 > ok0 or failed1 > failed0:
                            done = True
                            break
                        await asyncio.sleep(0.05)
                gen1, ok1, failed1 = await state()
                entry.update(seconds=round(time.monotonic() - t0, 3), generation=[gen0, gen1], finished=done)
                if bad:
                    entry["ok"] = done and gen1 == gen0 and failed1 == failed0 + 1 and entry.get("status", 409) == 409
                else:
                    entry["ok"] = done and gen1 > gen0 and ok1 == ok0 + 1 and entry.get("status", 200) == 200
                reloads.append(entry)
                step += 1
                if step < min_reloads:
                    stop[0] = max(stop[0], time.monotonic() + interval + 1.0)
            point(link, good)

        await asyncio.gather(*(client(i) for i in range(clients)), poll_ready(), sample_rss(), reloader())

    elapsed = time.monotonic() - started
    total = sum(sum(v.values()) for v in status.values())
    mem = [m for _, m in rss]
    q = max(1, len(mem) // 4)
    first, last = float(np.median(mem[:q])), float(np.median(mem[-q:]))
    return {
        "clients": clients, "duration_s": round(elapsed, 1), "interval_s": interval,
        "requests": total, "requests_per_s": round(total / elapsed, 1),
        "failed": len(failures), "failures": failures[:20], "status": status,
        "reloads": len(reloads), "reloads_good": sum(1 for r in reloads if r["expect"] == "swapped"),
        "reloads_corrupt": sum(1 for r in reloads if r["expect"] == "refused"),
        "reloads_wrong": [r for r in reloads if not r["ok"]], "reload_log": reloads,
        "readyz": readyz,
        "rss_mb": {"start": round(mem[0] / 2**20, 1), "first_quarter_median": round(first / 2**20, 1),
                   "last_quarter_median": round(last / 2**20, 1), "max": round(max(mem) / 2**20, 1),
                   "samples": len(mem),
                   # the largest sample of every 10 s: flat once allocator arenas and caches are warm
                   "max_per_10s": [round(max(m for t, m in rss if w <= t < w + 10) / 2**20, 1)
                                   for w in range(0, int(rss[-1][0]) + 1, 10)
                                   if any(w <= t < w + 10 for t, _ in rss)]},
    }


def run_churn(good: Path, workdir: Path, clients: int = 16, duration: float = 60.0, interval: float = 3.0,
              texts: list[str] | None = None, classes: list[str] | None = None, min_reloads: int = 0) -> dict:
    """Serve ``good`` through a symlink, churn it for ``duration`` s (longer if ``min_reloads``
    reloads have not happened by then); the report (see the module doc)."""
    workdir.mkdir(parents=True, exist_ok=True)
    corrupt = [make_corrupt(good, workdir / f"corrupt-{kind}", kind) for kind in CORRUPTIONS]
    good_copy = workdir / "good"
    if not good_copy.exists():
        shutil.copytree(good, good_copy)  # the served folder is never one anybody else writes
    link = workdir / "served"
    point(link, good_copy)
    dim = int(json.loads((good / "index.json").read_text())["dim"])
    classes = classes or ["cat", "dog", "car", "tree", "boat", "house"]
    texts = texts or [f"a photo of a {c}." for c in classes]
    proc, url, log = start_server(link, workdir)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while httpx.get(url + "/readyz").status_code != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"react serve not ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        report = asyncio.run(_churn(url, proc.pid, link, good_copy, corrupt, clients, duration, interval, dim,
                                    texts, classes, min_reloads))
        report["server_alive"] = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    report["server_log_tracebacks"] = log.read_text().count("Traceback")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=Path, default=None, help="a good index folder (default: build the benchmark's)")
    p.add_argument("--cache", type=Path, default=Path("out/bench/service"))
    p.add_argument("--rows", type=int, default=50_000, help="rows of the built index (without --index)")
    p.add_argument("--dim", type=int, default=256, help="dimension of the built index (without --index)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--interval", type=float, default=3.0, help="seconds between reloads")
    p.add_argument("--workdir", type=Path, default=Path("out/bench/churn"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import service_corpus

    index = args.index
    if index is None:
        index = service_corpus.prepare(args.cache, args.rows, args.dim).index_dir
    classes = service_corpus.class_names(40)
    report = run_churn(index, args.workdir, args.clients, args.duration, args.interval,
                       texts=[f"a photo of a {c}." for c in classes], classes=classes)
    report["index"] = str(index)
    summary = {k: report[k] for k in ("clients", "duration_s", "requests", "requests_per_s", "failed", "reloads",
                                      "reloads_good", "reloads_corrupt", "readyz", "rss_mb", "server_alive",
                                      "server_log_tracebacks")}
    summary["reloads_wrong"] = len(report["reloads_wrong"])
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    ok = (report["failed"] == 0 and not report["reloads_wrong"] and report["readyz"]["not_ready"] == 0
          and report["server_alive"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
