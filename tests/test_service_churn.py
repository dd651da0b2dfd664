"""The service under churn (issue 16): clients keep querying while the index is reloaded.

benchmarks/service_churn.py at a reduced size (4 clients x 10 s, a reload every
1.5 s: good and corrupt folders, POST and SIGHUP) against a real ``react serve``;
docs/service.md's figure is the same function at 16 clients x 60 s. Plus, in-process,
the direct form of "RSS bounded": after reloads under load no old index object
is still alive.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from pathlib import Path

import httpx
import pytest

from retrieval_service.config import ServiceConfig
from retrieval_service.http.app import create_app
from service_fixtures import CLASSES, LiveServer, build_task_index

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from service_churn import CORRUPTIONS, run_churn  # noqa: E402


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model, tiny_model_dir) -> Path:
    return build_task_index(tmp_path_factory.mktemp("churn"), tiny_model, tiny_model_dir)


def test_clients_see_no_failure_while_reloads_alternate_good_and_corrupt(index_dir, tmp_path):
    report = run_churn(index_dir, tmp_path / "churn", clients=4, duration=10.0, interval=1.5,
                       classes=CLASSES + ["tree", "boat", "house"], min_reloads=5)
    log = report.pop("reload_log")
    assert report["server_alive"]
    assert report["failed"] == 0, report["failures"]
    assert report["requests"] > 100 and all(sum(s.values()) > 0 for s in report["status"].values()), report
    # Every reload did what it should: corrupt refused (the generation stays), good swapped in.
    assert report["reloads_wrong"] == [], report["reloads_wrong"]
    assert report["reloads_good"] >= 2 and report["reloads_corrupt"] >= 3, log
    assert {r["via"] for r in log} == {"POST", "SIGHUP"}
    assert {r["via"] for r in log if r["expect"] == "refused"} == {"POST", "SIGHUP"}
    for r in log:
        if r["via"] == "POST" and r["expect"] == "refused":
            assert r["status"] == 409 and "still serving the previous index" in r["answer"], r
    assert {r["folder"] for r in log if r["expect"] == "refused"} >= {f"corrupt-{CORRUPTIONS[0]}"}
    assert report["readyz"]["polls"] > 20 and report["readyz"]["not_ready"] == 0, report["readyz"]
    rss = report["rss_mb"]
    assert rss["last_quarter_median"] < rss["first_quarter_median"] + 150, rss


def test_reloaded_indices_are_freed(index_dir, tmp_path):
    """No reference to a replaced index survives its requests (batcher keys, closures, caches):
    an index kept alive per reload is exactly an RSS that grows with every SIGHUP."""
    cfg = ServiceConfig(indices={"tiny": index_dir}, state_dir=tmp_path / "state")
    app = create_app(cfg)
    registry = app.state.registry
    with LiveServer(app) as live:
        stop = threading.Event()
        errors: list[str] = []

        def client(body: dict) -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    r = http.post(live.url + "/v1/search", json=body)
                    if r.status_code != 200:
                        errors.append(r.text)

        threads = [threading.Thread(target=client, args=(b,)) for b in
                   ({"text": "a photo of a cat.", "k": 3}, {"text": "a photo of a dog.", "k": 5},
                    {"embedding": [0.1] * 32, "k": 3})]
        for t in threads:
            t.start()
        old = []
        try:
            for _ in range(3):
                time.sleep(0.3)
                loaded = registry.get("tiny")
                old.append((weakref.ref(loaded), weakref.ref(loaded.searcher), weakref.ref(loaded.retriever)))
                del loaded
                assert httpx.post(live.url + "/v1/indices/tiny/reload").status_code == 200
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert not errors, errors[:3]
        time.sleep(0.2)
        gc.collect()
        alive = [i for i, refs in enumerate(old) if any(r() is not None for r in refs)]
        assert alive == [], f"replaced indices still referenced: {alive}"
        assert registry.get("tiny").generation == 4


@pytest.mark.parametrize("when", ["before-write", "during-write"])
def test_job_deleted_while_it_finishes_leaves_nothing(tmp_path, monkeypatch, caplog, when):
    """DELETE /v1/jobs/{id} as the job writes its subset (found by the fuzzer's stateful phase). Before
    the fix: deleted just before the write, the write re-created the folder and the job came back at the
    next start; deleted during it, the rename failed and was logged as a crash. Now the job ends quietly
    as cancelled and its folder stays gone."""
    import logging

    from react.schemas import atomic_path
    from retrieval_service import jobs as jobs_mod

    writing, deleted = threading.Event(), threading.Event()

    def write_subset(result, path):  # the real one's path handling: atomic_path re-creates the parent
        writing.set()
        if when == "before-write":
            deleted.wait(10)
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"PAR1")
            if when == "during-write":
                deleted.wait(10)
        return path

    class Result:
        class table:
            num_rows = 0

        @staticmethod
        def report() -> dict:
            return {}

    monkeypatch.setattr(jobs_mod, "write_subset", write_subset)
    store = jobs_mod.JobStore(tmp_path / "state")
    job = store.submit({}, lambda j: Result(), 1)
    assert writing.wait(10)
    with caplog.at_level(logging.ERROR):
        store.delete(job.id)
        deleted.set()
        store._pool.shutdown(wait=True)
    assert not job.dir.exists(), sorted(p.name for p in job.dir.iterdir())
    assert "crashed" not in caplog.text
    assert jobs_mod.JobStore(tmp_path / "state").list() == []  # nothing comes back at the next start


def test_reconstructor_is_thread_safe_on_a_fresh_ivf_index():
    """Found by benchmarks/service_churn.py (16 clients, an IVF-Flat index): right after a reload the first
    concurrent deduplicated /knn-service requests answered 500 -- faiss marks an IVF direct map built
    before filling it, and a second thread read it half-filled. Reconstructors of one fresh index (the
    dedup's and the re-ranker's) are now called from 8 staggered threads, 10 times."""
    import faiss
    import numpy as np

    from index.query import reconstructor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200_000, 16)).astype(np.float32)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 64, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x[:5000])
    ivf.add(x)
    blob = faiss.serialize_index(ivf)
    errors: list[str] = []
    for _ in range(10):
        index = faiss.deserialize_index(blob)  # a fresh load: no direct map yet
        fns = [reconstructor(index), reconstructor(index)]
        barrier = threading.Barrier(8)

        def fetch(i: int) -> None:
            barrier.wait()
            time.sleep(0.0005 * i)
            ids = np.random.default_rng(i).integers(0, len(x), 64)
            try:
                if not np.allclose(fns[i % 2](ids), x[ids]):
                    errors.append("wrong vectors")
            except RuntimeError as exc:
                errors.append(str(exc)[:200])

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [], errors[:2]
