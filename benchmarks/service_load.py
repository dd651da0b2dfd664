"""Load generator for benchmarks/service_bench.py: N concurrent HTTP clients for a fixed time.

Runs as its own process (service_bench starts it with subprocess) so the
clients never share an interpreter -- or a GIL -- with the service:

    python benchmarks/service_load.py --url http://127.0.0.1:PORT --kind embedding --clients 8 \\
        --duration 10 --queries queries.npy --k 50 --json out.json

Kinds: ``embedding`` and ``text`` (POST /v1/search), ``mixed`` (most clients
search, alternating embedding and text; ``--retrieve-clients`` of them loop a
task through /v1/retrieve as a job: submit, poll, download subset.parquet,
delete). One asyncio loop with aiohttp (pinned in the dev extra): it costs
0.4 ms of CPU a request where httpx costs 1.2 ms (measured here, 8 clients),
and on a 2-core machine every client millisecond is taken from the service.
Request bodies are serialised once up front.
Every response is counted by status; a transport error counts as a failure.
Latency is per request, from send to the last body byte.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
import numpy as np

TEMPLATES = ("a photo of a {}.", "a blurry photo of the {}.", "a drawing of a {}.", "itap of a {}.")
HEADERS = {"content-type": "application/json"}


def embedding_bodies(queries: np.ndarray, k: int, index: str | None) -> list[bytes]:
    extra = {"index": index} if index else {}
    return [json.dumps({"embedding": [round(float(v), 6) for v in q], "k": k} | extra).encode() for q in queries]


def text_bodies(classes: list[str], k: int, index: str | None, n: int = 1000) -> list[bytes]:
    extra = {"index": index} if index else {}
    texts = [t.format(c) for c in classes for t in TEMPLATES][:n]
    return [json.dumps({"text": t, "k": k} | extra).encode() for t in texts]


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.status: dict[str, int] = {}
        self.errors: list[str] = []
        self.counting = False

    def record(self, kind: str, code: int | str, seconds: float) -> None:
        if not self.counting:
            return
        self.latency.setdefault(kind, []).append(seconds)
        self.status[str(code)] = self.status.get(str(code), 0) + 1

    def failed(self) -> int:
        return sum(n for code, n in self.status.items() if not code.startswith("2"))


class Client:
    """Timed requests on one aiohttp session; every answer is counted by status."""

    def __init__(self, session: aiohttp.ClientSession, stats: Stats) -> None:
        self.session, self.stats = session, stats

    async def call(self, kind: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes] | None:
        started = time.perf_counter()
        try:
            async with self.session.request(method, path, data=body, headers=HEADERS if body else None) as r:
                payload = await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.stats.record(kind, exc.__class__.__name__, time.perf_counter() - started)
            self.stats.errors.append(f"{kind}: {exc.__class__.__name__}: {exc}"[:300])
            return None
        self.stats.record(kind, status, time.perf_counter() - started)
        if status >= 300 and len(self.stats.errors) < 20:
            self.stats.errors.append(f"{kind}: {status} {payload[:200]!r}")
        return status, payload


async def search_client(client: Client, bodies: list[tuple[str, bytes]], start: int, stop: float) -> None:
    i = start
    while time.perf_counter() < stop:
        kind, body = bodies[i % len(bodies)]
        await client.call(kind, "POST", "/v1/search", body)
        i += 1


async def retrieve_client(client: Client, task: bytes, stop: float, rows: list[int]) -> None:
    """Submit the task, poll its job, download the subset, delete the job; until ``stop``."""
    while time.perf_counter() < stop:
        r = await client.call("retrieve", "POST", "/v1/retrieve", task)
        if r is None or r[0] != 202:
            await asyncio.sleep(0.5)
            continue
        job = json.loads(r[1])["id"]
        info: dict = {}
        while True:
            await asyncio.sleep(0.2)
            r = await client.call("job-status", "GET", f"/v1/jobs/{job}")
            info = json.loads(r[1]) if r is not None and r[0] == 200 else {}
            if info.get("state") not in ("queued", "running"):
                break
        if info.get("state") == "done":
            got = await client.call("download", "GET", f"/v1/jobs/{job}/subset.parquet")
            if got is not None and got[0] == 200 and got[1][:4] == b"PAR1":
                rows.append(info["rows"])
        elif info:
            client.stats.record("job-failed", "job-" + str(info.get("state")), 0.0)
            client.stats.errors.append(f"job {job}: {info.get('state')} {info.get('error')}"[:300])
        await client.call("delete", "DELETE", f"/v1/jobs/{job}")


async def run_load(url: str, bodies: list[tuple[str, bytes]], clients: int, duration: float, warmup: float,
                   retrieve_clients: int = 0, task: bytes | None = None) -> dict:
    stats = Stats()
    rows: list[int] = []
    connector = aiohttp.TCPConnector(limit=clients + 4)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        client = Client(session, stats)
        if warmup > 0:  # connections opened, caches and batch sizes settled; not counted
            stop = time.perf_counter() + warmup
            await asyncio.gather(*(search_client(client, bodies, i * 7, stop) for i in range(clients)))
        stats.counting = True
        started = time.perf_counter()
        stop = started + duration
        tasks = [search_client(client, bodies, i * 7, stop) for i in range(clients - retrieve_clients)]
        tasks += [retrieve_client(client, task, stop, rows) for _ in range(retrieve_clients)]
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return summarize(stats, elapsed, clients, rows)


def summarize(stats: Stats, elapsed: float, clients: int, rows: list[int]) -> dict:
    out = {"clients": clients, "seconds": round(elapsed, 2), "requests": sum(stats.status.values()),
           "failed": stats.failed(), "status": stats.status, "errors": stats.errors[:10], "kinds": {}}
    for kind, lat in stats.latency.items():
        ms = np.asarray(lat) * 1000
        out["kinds"][kind] = {"requests": len(lat), "qps": round(len(lat) / elapsed, 1),
                              "p50_ms": round(float(np.percentile(ms, 50)), 2),
                              "p99_ms": round(float(np.percentile(ms, 99)), 2),
                              "mean_ms": round(float(ms.mean()), 2)}
    if rows:
        out["retrieve_jobs"], out["retrieve_rows"] = len(rows), rows
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--kind", choices=("embedding", "text", "mixed"), required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--queries", type=Path, required=True, help="query vectors (.npy) for embedding input")
    p.add_argument("--classes", type=Path, default=None, help="class names, one a line, for text input")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--index", default=None)
    p.add_argument("--retrieve-clients", type=int, default=2, help="with --kind mixed")
    p.add_argument("--retrieve-classes", type=int, default=20, help="with --kind mixed: classes per task")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    classes = a.classes.read_text().split("\n") if a.classes else ["cat", "dog"]
    classes = [c for c in classes if c.strip()]
    emb = [("embedding", b) for b in embedding_bodies(np.load(a.queries), a.k, a.index)]
    txt = [("text", b) for b in text_bodies(classes, a.k, a.index)]
    bodies = emb if a.kind == "embedding" else txt if a.kind == "text" else [x for pair in zip(emb, txt) for x in pair]
    task = None
    retrieve_clients = 0
    if a.kind == "mixed":
        retrieve_clients = min(a.retrieve_clients, a.clients - 1)
        task = json.dumps({"classes": classes[: a.retrieve_classes], "templates": "imagenet", "k": a.k,
                           "include_queries": False} | ({"index": a.index} if a.index else {})).encode()
    result = asyncio.run(run_load(a.url, bodies, a.clients, a.duration, a.warmup, retrieve_clients, task))
    result["kind"] = a.kind
    text = json.dumps(result, indent=1)
    if a.json:
        a.json.write_text(text + "\n")
    else:
        print(text)
    return result


if __name__ == "__main__":
    main()
