"""Cross-request batching: the batcher itself, and 16 concurrent clients on a real uvicorn whose batched
answers must equal a direct ``Searcher.search`` of each query. No timing is asserted."""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from retrieval_service.batcher import Batchers, MicroBatcher
from retrieval_service.config import ServiceConfig
from retrieval_service.http.app import create_app
from retrieval_service.metrics import Metrics
from service_fixtures import CLASSES, TEMPLATES, LiveServer, build_task_index


def test_batcher_batches_what_queues_while_busy():
    release = threading.Event()
    sizes: list[int] = []
    calls: list[str] = []

    def fn(items: list[int]) -> list[int]:
        sizes.append(len(items))
        calls.append("k")
        release.wait(5)  # the first call holds the worker while the others queue up
        return [x * 10 for x in items]

    def negate(items: list[int]) -> list[int]:
        calls.append("other")
        return [-x for x in items]

    b = MicroBatcher("t", max_batch=4, max_wait_s=0.0)
    try:
        first = b.submit("k", fn, 0)
        while not sizes:
            time.sleep(0.001)
        futures = [b.submit("k", fn, i) for i in range(1, 7)]
        other = b.submit("other", negate, 5)
        release.set()
        assert first.result(5) == 0 and [f.result(5) for f in futures] == [10 * i for i in range(1, 7)]
        assert other.result(5) == -5
        assert sizes == [1, 4, 2]  # max_batch caps a batch
        assert calls == ["k", "k", "other", "k"]  # the rest of a capped key waits behind the other key
    finally:
        release.set()
        b.close()


def test_one_bad_query_fails_only_its_own_request():
    def fn(items: list[int]) -> list[float]:
        if any(x == 0 for x in items):
            raise ZeroDivisionError("zero")
        return [1 / x for x in items]

    release = threading.Event()
    b = MicroBatcher("t", max_batch=8, max_wait_s=0.0)
    try:
        gate = b.submit("gate", lambda items: [release.wait(5)] * len(items), None)
        futures = [b.submit("k", fn, x) for x in (1, 0, 4)]  # queued together behind the gate
        release.set()
        assert gate.result(5) is True
        assert futures[0].result(5) == 1.0 and futures[2].result(5) == 0.25
        with pytest.raises(ZeroDivisionError):
            futures[1].result(5)
    finally:
        b.close()


def test_worker_waits_only_for_announced_requests():
    """No wall-clock bound (a loaded 2-core machine misses any): max_wait is an hour, so a worker
    that waited for anything but an announced request would not answer at all; the property checked
    is the batches formed, read from the service's own batch-size metric."""
    metrics = Metrics()
    b = Batchers(max_batch=8, max_wait_s=3600.0, on_batch=metrics.observe_batch, threads=0)

    def search_batches() -> tuple[float, float]:
        """(batched calls, queries in them) of the search worker so far."""
        get = metrics.registry.get_sample_value
        labels = {"batcher": "search"}
        return get("react_batch_size_count", labels) or 0.0, get("react_batch_size_sum", labels) or 0.0

    try:
        # Nobody announced: a lone query is answered at once, in a batch of its own. (The timeout
        # only keeps a broken worker from hanging the suite; a waiting one would take an hour.)
        assert b.search.submit("k", lambda items: items, "x").result(timeout=60) == "x"
        assert search_batches() == (1.0, 1.0)
        # Two announced requests: whichever queues first waits for the other, so one batch holds both.
        seen: list[list[str]] = []
        results: dict[str, str] = {}
        announced = {name: threading.Event() for name in "ab"}

        def request(name: str, other: str) -> None:
            with b.expect():
                b.release_encode()
                announced[name].set()
                announced[other].wait(60)  # both are inside the service before either queues
                results[name] = b.search.run("k", lambda items: seen.append(sorted(items)) or items, name)

        threads = [threading.Thread(target=request, args=("a", "b")), threading.Thread(target=request, args=("b", "a"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == {"a": "a", "b": "b"} and seen == [["a", "b"]]
        assert search_batches() == (2.0, 3.0)  # one more call, two more queries
        assert b.search._expected == 0 and b.encode._expected == 0  # every announcement was settled
    finally:
        b.close()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model, tiny_model_dir) -> Path:
    return build_task_index(tmp_path_factory.mktemp("batching"), tiny_model, tiny_model_dir)


def test_concurrent_clients_get_unbatched_answers(index_dir, tiny_model, tmp_path):
    """16 clients for ~5 s: 12 send text and embedding searches, 4 run retrieve jobs. Every request
    must get a 2xx, and every search the same rows and scores as a direct Searcher.search."""
    from index.searcher import Searcher

    searcher = Searcher(index_dir)
    texts = [t.format(c) for c in CLASSES for t in TEMPLATES] + ["a cat and a dog.", "something else"]
    vecs = np.load(index_dir.parent / "emb" / "img_emb" / "img_emb_0.npy").astype(np.float32)[:12]
    vecs = vecs + np.random.default_rng(0).normal(0, 0.05, vecs.shape).astype(np.float32)
    ks = (3, 5)  # two k: batches form per k
    expected: dict = {}
    text_vecs = tiny_model.encode_texts(texts).numpy()
    for k in ks:
        for i, t in enumerate(texts):
            expected["text", i, k] = searcher.search(text_vecs[i : i + 1], k, query_modality="text")
        for i, v in enumerate(vecs):
            expected["embedding", i, k] = searcher.search(v[None], k, query_modality="image")

    cfg = ServiceConfig(indices={"tiny": index_dir}, state_dir=tmp_path / "state", batch_wait_ms=2.0)
    statuses: list[int] = []
    mismatches: list[str] = []
    searches = {"n": 0}
    lock = threading.Lock()
    stop = time.monotonic() + 5.0

    def check(kind: str, i: int, k: int, body: dict) -> None:
        scores, rows = expected[kind, i, k]
        got_rows = [h["row"] for h in body["results"]]
        got_scores = np.array([h["similarity"] for h in body["results"]])
        if got_rows != rows[0].tolist() or not np.allclose(got_scores, scores[0], atol=1e-4):
            mismatches.append(f"{kind} {i} k={k}: {got_rows} vs {rows[0].tolist()}")

    def searcher_client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=live.url, timeout=60) as c:
            while time.monotonic() < stop:
                k = rng.choice(ks)
                if rng.random() < 0.5:
                    i = rng.randrange(len(texts))
                    kind, payload = "text", {"text": texts[i], "k": k}
                else:
                    i = rng.randrange(len(vecs))
                    kind, payload = "embedding", {"embedding": vecs[i].tolist(), "k": k}
                r = c.post("/v1/search", json=payload)
                with lock:
                    statuses.append(r.status_code)
                    searches["n"] += 1
                if r.status_code == 200:
                    check(kind, i, k, r.json())

    def retrieve_client() -> None:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            while time.monotonic() < stop:
                r = c.post("/v1/retrieve", json={"classes": CLASSES, "templates": TEMPLATES, "k": 5, "threshold": 0.0})
                statuses.append(r.status_code)
                if r.status_code != 202:
                    continue
                job = r.json()["id"]
                while (info := c.get(f"/v1/jobs/{job}")).status_code == 200 and \
                        info.json()["state"] in ("queued", "running"):
                    statuses.append(info.status_code)
                    time.sleep(0.05)
                statuses.append(info.status_code)
                got = c.get(f"/v1/jobs/{job}/subset.parquet")
                statuses.append(got.status_code)
                subset = tmp_path / f"{job}.parquet"
                subset.write_bytes(got.content)
                if sorted(pq.read_table(subset).column("key").to_pylist()) != ["car", "cat", "catdog", "dog"]:
                    mismatches.append(f"job {job}: unexpected subset")
                statuses.append(c.delete(f"/v1/jobs/{job}").status_code)

    with LiveServer(create_app(cfg)) as live:
        threads = [threading.Thread(target=searcher_client, args=(s,)) for s in range(12)]
        threads += [threading.Thread(target=retrieve_client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = httpx.get(live.url + "/metrics").text

    assert statuses and all(200 <= s < 300 for s in statuses), sorted(set(statuses))
    assert not mismatches, mismatches[:5]
    batched = sum(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith('react_batch_size_sum{batcher="search"}'))
    # Each query went through the batcher at most once (lone ones are answered directly), and with
    # 12 concurrent searching clients some did.
    assert 0 < batched <= searches["n"]
