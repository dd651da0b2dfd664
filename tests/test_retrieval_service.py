"""Retrieval service: the task core, every endpoint on a real uvicorn, bad input, keys, jobs, CLI."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from react.cli import run
from react.errors import ReactError
from react.schemas import SUBSET_SCHEMA
from retrieval_service.config import ServiceConfig
from retrieval_service.coverage import ClassStats, flag_low_coverage
from retrieval_service.http.app import create_app
from retrieval_service.merge import Hits, connected_components, merge
from retrieval_service.spec import Limits, validate_spec
from retrieval_service.task import TaskRetriever, load_index_model, read_subset_report
from service_fixtures import CLASSES, TEMPLATES, LiveServer, build_task_index


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model, tiny_model_dir) -> Path:
    return build_task_index(tmp_path_factory.mktemp("svc"), tiny_model, tiny_model_dir)


@pytest.fixture(scope="module")
def server(index_dir, tmp_path_factory):
    cfg = ServiceConfig(indices={"tiny": index_dir}, state_dir=tmp_path_factory.mktemp("state"),
                        limits=Limits(max_classes=50, max_templates=10, max_k=100, max_text_chars=200),
                        max_search_k=100, max_body_bytes=1 << 20, max_image_bytes=100_000, max_image_pixels=1_000_000)
    with LiveServer(create_app(cfg)) as live:
        live.cfg = cfg
        yield live


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _check_subset(rows: list[dict]) -> None:
    by_key = {r["key"]: r for r in rows}
    assert set(by_key) == {"cat", "catdog", "dog", "car"}  # cat-copy collapsed into cat
    assert sorted(by_key["catdog"]["classes"]) == ["cat", "dog"]  # once, labelled with both classes
    assert by_key["cat"]["classes"] == ["cat"] and by_key["cat"]["duplicates"] == 2
    assert by_key["dog"]["classes"] == ["dog"] and by_key["car"]["classes"] == ["car"]


# --- the task core, in-process ---------------------------------------------------------------------

def test_task_merges_across_templates_and_classes(index_dir, tmp_path):
    from index.searcher import Searcher
    from retrieval_service.task import write_subset

    searcher = Searcher(index_dir)
    retriever = TaskRetriever(searcher, load_index_model(searcher))
    result = retriever.run(validate_spec(CLASSES, TEMPLATES, 5, "t2i", threshold=0.0))
    _check_subset(result.table.to_pylist())
    catdog = next(r for r in result.table.to_pylist() if r["key"] == "catdog")
    assert len(catdog["queries"]) == 4 and catdog["hits"] == 4  # 2 templates x 2 classes, one row
    assert result.summary["unique_pairs"] == 5 and result.summary["near_duplicates_collapsed"] == 1
    sims = result.table.column("similarity").to_pylist()
    assert sims == sorted(sims, reverse=True)
    stats = {s.name: s for s in result.stats}
    assert stats["cat"].unique == 2 and stats["cat"].hits == 6 and stats["car"].exclusive == 1
    out = write_subset(result, tmp_path / "subset.parquet")
    table = pq.read_table(out)
    assert table.schema.names[:5] == SUBSET_SCHEMA.names
    for f in SUBSET_SCHEMA:
        assert table.schema.field(f.name).type == f.type
    assert read_subset_report(out)["summary"]["rows"] == 4
    # Without collapse the copy stays; without a threshold every query fills its k.
    loose = retriever.run(validate_spec(CLASSES, TEMPLATES, 5, "both", dedup_threshold=None))
    assert loose.summary["hits"] == 2 * 6 * 5 and "cat-copy" in loose.table.column("key").to_pylist()


def test_merge_matches_a_plain_python_merge():
    rng = np.random.default_rng(1)
    n_t, n_q = 3, 12
    hits = Hits(rng.integers(0, 30, 400).astype(np.int64), rng.random(400).astype(np.float32),
                rng.integers(0, n_q, 400).astype(np.int32))
    merged = merge(hits, n_t, n_q)
    best: dict = {}
    for r, s, q in zip(hits.row.tolist(), hits.score.tolist(), hits.query.tolist()):
        entry = best.setdefault(r, {"sim": -1.0, "classes": {}, "n": 0})
        entry["sim"], entry["n"] = max(entry["sim"], s), entry["n"] + 1
        entry["classes"][q // n_t] = max(entry["classes"].get(q // n_t, -1.0), s)
    assert sorted(merged.row.tolist()) == sorted(best)
    for i, r in enumerate(merged.row.tolist()):
        assert merged.similarity[i] == pytest.approx(best[r]["sim"]) and merged.hits[i] == best[r]["n"]
        got = merged.classes.values[merged.classes.offsets[i]: merged.classes.offsets[i + 1]].tolist()
        assert got == sorted(best[r]["classes"], key=lambda c: -best[r]["classes"][c])


def test_connected_components_follow_chains():
    labels = connected_components(6, np.array([4, 3, 1]), np.array([3, 2, 0]))
    assert labels.tolist() == [0, 0, 2, 2, 2, 5]


def test_low_coverage_rule():
    def stat(name, cov):
        return ClassStats(name, 1, 1, 1, 1, cov, cov, cov, cov, cov)

    stats = [stat(f"c{i}", 0.30 + 0.005 * i) for i in range(9)] + [stat("rare", 0.18), stat("none", None)]
    warnings = flag_low_coverage(stats)
    assert [s.name for s in stats if s.low_coverage] == ["rare", "none"] and len(warnings) == 2
    assert "retrieved nothing" in warnings[1]


@pytest.mark.parametrize("kwargs, message", [
    ({"classes": []}, "non-empty"),
    ({"classes": ["a", " "]}, r"classes\[1\]"),
    ({"classes": [f"c{i}" for i in range(60)]}, "at most 50"),
    ({"k": 0}, "k must be"),
    ({"k": 101}, "k must be"),
    ({"templates": ["no placeholder"]}, "placeholder"),
    ({"mode": "i2i"}, "mode"),
    ({"threshold": 2.0}, "threshold"),
])
def test_spec_validation(kwargs, message):
    args = {"classes": ["cat"], "templates": TEMPLATES, "k": 5, "mode": "t2i"} | kwargs
    with pytest.raises(ReactError, match=message):
        validate_spec(args.pop("classes"), args.pop("templates"), args.pop("k"), args.pop("mode"),
                      limits=Limits(max_classes=50, max_k=100), **args)
    spec = validate_spec(["cat", "cat ", "dog"], None, 5, "t2i")
    assert spec.classes == ["cat", "dog"] and len(spec.templates) == 80 and "given twice" in spec.warnings[0]


# --- the service on loopback -----------------------------------------------------------------------

def test_health_indices_metrics(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json()["ready"] is True
    (info,) = httpx.get(server.url + "/v1/indices").json()
    assert info["name"] == "tiny" and info["rows"] == 60 and info["model_loaded"]
    assert info["modalities"]["image"]["recall"]["k"] == 10 and "efSearch" in info["modalities"]["image"]["search_params"]
    assert httpx.get(server.url + "/indices-list").json() == ["tiny"]
    httpx.post(server.url + "/v1/search", json={"text": "a photo of a cat.", "k": 3})
    text = httpx.get(server.url + "/metrics").text
    assert 'react_requests_total{endpoint="/v1/search",method="POST",status="200"}' in text
    for stage in ("encode", "search", "metadata"):
        assert f'react_stage_seconds_count{{stage="{stage}"}}' in text


def test_search_text_image_embedding(server, index_dir):
    r = httpx.post(server.url + "/v1/search", json={"text": "a photo of a car.", "k": 2}).json()
    assert r["query"] == "text" and r["results"][0]["key"] == "car" and len(r["results"]) == 2
    emb = np.load(index_dir.parent / "emb" / "img_emb" / "img_emb_0.npy")[3].astype(float).tolist()
    r = httpx.post(server.url + "/v1/search", json={"embedding": emb, "k": 1, "modality": "text"}).json()
    assert r["results"][0]["key"] == "dog" and r["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-2)
    r = httpx.post(server.url + "/v1/search", json={"image": base64.b64encode(_png()).decode(), "k": 4}).json()
    assert r["query"] == "image" and len(r["results"]) == 4
    r = httpx.post(server.url + "/v1/search/upload", files={"file": ("x.png", _png(), "image/png")}, data={"k": "3"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/search", {"text": "x", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("/v1/search", {"text": "x", "k": 101}, 422, "k: Input should be less than or equal to 100"),
    ("/v1/search", {"text": "x", "k": True}, 422, "k: Input should be a valid integer"),
    ("/v1/search", {"text": "x", "k": "5"}, 422, "k: Input should be a valid integer"),
    ("/v1/search", {"text": "x" * 201}, 422, "at most 200"),
    ("/v1/search", {"text": ""}, 422, "text"),
    ("/v1/search", {"text": " \x1e\u3000"}, 422, "text"),  # whitespace only, as str.strip() sees it
    ("/v1/search", {}, 422, "exactly one"),
    ("/v1/search", {"text": "x", "embedding": [0.1] * 32}, 422, "exactly one"),
    ("/v1/search", {"embedding": [0.1] * 31}, 422, "at least 32"),
    ("/v1/search", {"embedding": [0.0] * 32}, 422, "no direction"),
    ("/v1/search", {"embedding": [1e7] * 32}, 422, "embedding"),
    ("/v1/search", {"embedding": "abc"}, 422, "embedding"),
    ("/v1/search", {"text": "x", "k": "many"}, 422, "k"),
    ("/v1/search", {"text": 5}, 422, "text"),
    ("/v1/search", {"text": "x", "colour": "red"}, 422, "colour"),
    ("/v1/search", {"text": "x", "index": "../../etc"}, 404, "unknown index"),
    ("/v1/search", {"text": "x", "modality": "audio"}, 422, "modality"),
    ("/v1/search", {"image": "not base64!!"}, 400, "base64"),
    ("/v1/search", {"image": base64.b64encode(b"GIF89a but not really").decode()}, 400, "not a readable image"),
    ("/v1/search", {"image": base64.b64encode(b"\0" * 200_000).decode()}, 413, "bytes"),
    ("/v1/retrieve", {"classes": []}, 422, "classes"),
    ("/v1/retrieve", {"templates": "simple"}, 422, "classes"),
    ("/v1/retrieve", {"classes": ["a"] * 2 + [f"c{i}" for i in range(60)]}, 422, "at most 50"),
    ("/v1/retrieve", {"classes": ["cat"], "templates": "/etc/passwd"}, 422, "templates"),
    ("/v1/retrieve", {"classes": ["cat"], "templates": ["no placeholder"]}, 422, "templates"),
    ("/v1/retrieve", {"classes": ["cat"], "templates": [f"{{}} {i}" for i in range(11)]}, 422, "at most 10"),
    ("/v1/retrieve", {"classes": ["cat"], "templates": "simple", "k": -1}, 422, "k: Input should be greater"),
    ("/v1/retrieve", {"classes": ["cat"], "templates": "simple", "inline": 0}, 422, "inline"),
    ("/v1/retrieve", {"classes": ["cat"]}, 422, "templates"),  # the default set (80) is over max_templates=10
    ("/v1/retrieve", {"classes": ["cat"], "templates": "imagenet"}, 422, "templates"),
    ("/v1/retrieve", {"classes": ["cat"], "templates": "simple", "index": "nope"}, 404, "unknown index"),
    ("/v1/retrieve", {"classes": "cat", "templates": "simple"}, 422, "classes"),
    ("/knn-service", {"embedding_input": [1.0] * 8}, 422, "embedding_input"),
    ("/knn-service", {"text": "", "image": ""}, 422, "give one of"),
    ("/knn-service", {"image_url": "http://127.0.0.1:1/x.png"}, 403, "disabled"),
    ("/knn-service", {"text": "cat", "indice_name": "other"}, 404, "unknown index"),
    ("/knn-service", {"text": "cat", "num_images": 0}, 422, "num_images"),
    ("/metadata", {"ids": [10_000]}, 404, "not a row"),
    ("/metadata", {"ids": [False]}, 422, "ids"),
])
def test_bad_input_is_4xx(server, path, body, status, message):
    r = httpx.post(server.url + path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_malformed_and_oversize_bodies(server):
    r = httpx.post(server.url + "/v1/search", content=b"{bad json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "malformed JSON body"
    r = httpx.post(server.url + "/v1/retrieve", content=b"[1, 2", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = httpx.post(server.url + "/v1/search", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413
    big = Image.new("RGB", (1200, 1000)).tobytes()[:10]  # header-checked pixel limit: a 1200x1000 PNG
    buf = io.BytesIO()
    Image.new("1", (1200, 1000)).save(buf, format="PNG")
    r = httpx.post(server.url + "/v1/search/upload", files={"file": ("big.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["error"] and big
    r = httpx.post(server.url + "/v1/search/upload", files={"file": ("x.txt", b"hello", "text/plain")})
    assert r.status_code == 400
    assert httpx.get(server.url + "/v1/jobs/not-a-job").status_code == 404
    assert httpx.get(server.url + "/v1/jobs/" + "0" * 32 + "/subset.parquet").status_code == 404


def test_job_lifecycle_and_inline(server, tmp_path):
    body = {"classes": CLASSES, "templates": TEMPLATES, "k": 5, "threshold": 0.0}
    r = httpx.post(server.url + "/v1/retrieve", json=body)
    assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    job_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while (info := httpx.get(f"{server.url}/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert info["state"] == "done" and info["progress"] == 1.0 and info["rows"] == 4
    assert {c["name"] for c in info["report"]["classes"]} == set(CLASSES)
    r = httpx.get(server.url + info["result_url"])
    assert r.status_code == 200
    (tmp_path / "s.parquet").write_bytes(r.content)
    _check_subset(pq.read_table(tmp_path / "s.parquet").to_pylist())
    assert job_id in [j["id"] for j in httpx.get(server.url + "/v1/jobs").json()]
    # Kept on disk: a new store on the same state folder serves the finished job.
    from retrieval_service.jobs import JobStore

    assert JobStore(server.cfg.state_dir).get(job_id).info["state"] == "done"
    assert httpx.delete(f"{server.url}/v1/jobs/{job_id}").status_code == 200
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}").status_code == 404
    assert not (server.cfg.state_dir / "jobs" / job_id).exists()
    r = httpx.post(server.url + "/v1/retrieve", json=body | {"inline": True})
    assert r.status_code == 200
    _check_subset(r.json()["rows"])


def test_knn_service_compat(server, index_dir):
    r = httpx.post(server.url + "/knn-service", json={"text": "a photo of a dog.", "modality": "image",
                                                      "num_images": 2, "indice_name": "tiny", "deduplicate": True})
    assert r.status_code == 200 and "x-react-warning" not in r.headers
    results = r.json()
    assert isinstance(results, list) and len(results) == 2
    assert set(results[0]) >= {"url", "caption", "similarity", "id"} and "warning" not in results[0]
    assert {x["id"] for x in results} == {2, 3}
    emb = np.load(index_dir.parent / "emb" / "img_emb" / "img_emb_0.npy")[0].astype(float).tolist()
    r = httpx.post(server.url + "/knn-service", json={
        "embedding_input": emb, "num_images": 2, "num_result_ids": 10, "deduplicate": True,
        "use_safety_model": True, "use_violence_detector": True, "aesthetic_score": 9, "aesthetic_weight": 0.5,
        "use_mclip": False, "some_future_option": 1})
    assert r.status_code == 200
    results = r.json()
    assert results[0]["id"] == 0 and 1 not in [x["id"] for x in results]  # cat-copy deduplicated away
    for option in ("use_safety_model", "use_violence_detector", "aesthetic_score", "some_future_option"):
        assert option in results[0]["warning"] and option in r.headers["x-react-warning"]
    r = httpx.post(server.url + "/knn-service", json={"embedding_input": emb, "num_images": 2, "deduplicate": False})
    assert [x["id"] for x in r.json()][:2] in ([0, 1], [1, 0])
    meta = httpx.post(server.url + "/metadata", json={"ids": [0, 4], "indice_name": "tiny"}).json()
    assert [m["metadata"]["key"] for m in meta] == ["cat", "car"]


def test_image_url_when_enabled(index_dir, tmp_path):
    import http.server

    png = _png()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = png if self.path == "/ok.png" else b"\0" * 50_000
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{images.server_address[1]}"
    cfg = ServiceConfig(indices={"tiny": index_dir}, state_dir=tmp_path, allow_image_url=True, max_image_bytes=20_000)
    try:
        with LiveServer(create_app(cfg)) as live:
            r = httpx.post(live.url + "/knn-service", json={"image_url": base + "/ok.png", "num_images": 3})
            assert r.status_code == 200 and len(r.json()) == 3
            r = httpx.post(live.url + "/knn-service", json={"image_url": base + "/big.png", "num_images": 3})
            assert r.status_code == 413
            r = httpx.post(live.url + "/knn-service", json={"image_url": "file:///etc/passwd"})
            assert r.status_code == 400
    finally:
        images.shutdown()


def test_api_keys(index_dir, tmp_path):
    from retrieval_service.config import read_api_keys

    keys = tmp_path / "keys.txt"
    keys.write_text("# operators\nsecret-one\nsecret-two\n")
    cfg = ServiceConfig(indices={"tiny": index_dir}, state_dir=tmp_path / "state", api_keys=read_api_keys(keys))
    with LiveServer(create_app(cfg)) as live:
        assert httpx.get(live.url + "/healthz").status_code == 200
        for method, path in (("GET", "/v1/indices"), ("GET", "/metrics"), ("POST", "/v1/search"),
                             ("POST", "/knn-service"), ("GET", "/indices-list"), ("POST", "/v1/retrieve"),
                             ("GET", "/v1/jobs"), ("POST", "/v1/indices/tiny/reload")):
            assert httpx.request(method, live.url + path, json={}).status_code == 401, path
        assert httpx.get(live.url + "/v1/indices", headers={"X-API-Key": "wrong"}).status_code == 401
        assert httpx.get(live.url + "/v1/indices", headers={"X-API-Key": "secret-two"}).status_code == 200
        assert httpx.get(live.url + "/indices-list", headers={"Authorization": "Bearer secret-one"}).status_code == 200
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ReactError, match="holds no key"):
        read_api_keys(tmp_path / "empty.txt")


def test_reload_swaps_without_failing_requests(server):
    errors: list = []
    stop = threading.Event()

    def client():
        with httpx.Client() as c:
            while not stop.is_set():
                r = c.post(server.url + "/v1/search", json={"text": "a photo of a car.", "k": 2})
                if r.status_code != 200 or r.json()["results"][0]["key"] != "car":
                    errors.append(r.text)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        before = httpx.get(server.url + "/v1/indices").json()[0]["generation"]
        for _ in range(3):
            assert httpx.post(server.url + "/v1/indices/tiny/reload").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert httpx.get(server.url + "/v1/indices").json()[0]["generation"] == before + 3
    assert httpx.post(server.url + "/v1/indices/nope/reload").status_code == 404


# --- react retrieve / react serve -------------------------------------------------------------------

def test_react_retrieve_in_process_and_via_server(server, index_dir, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("\n".join(TEMPLATES) + "\n")
    common = ["--classes", str(classes), "--templates", str(templates), "--k", "5", "--threshold", "0"]
    assert run(["retrieve", "--index", str(index_dir), *common, "--out", str(tmp_path / "a.parquet"),
                "--json", str(tmp_path / "a.json")]) == 0
    assert run(["retrieve", "--server", server.url, *common, "--out", str(tmp_path / "b.parquet")]) == 0
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    _check_subset(a.to_pylist())
    assert a.drop_columns(["queries"]).to_pylist() == b.drop_columns(["queries"]).to_pylist()
    assert json.loads((tmp_path / "a.json").read_text())["summary"]["rows"] == 4
    err = capsys.readouterr().err
    assert "catdog" not in err and "car" in err and "subset:" in err


@pytest.mark.parametrize("argv, message", [
    (["--classes", "MISSING"], "cannot read classes file"),
    (["--classes", "EMPTY"], "holds no class name"),
    (["--classes", "OK", "--k", "0"], "k must be"),
    (["--classes", "OK", "--templates", "nosuchset"], "unknown templates"),
    (["--classes", "OK", "--server", "ftp://x"], "http"),
    (["--classes", "OK", "--server", "http://127.0.0.1:1"], "cannot reach server"),
])
def test_react_retrieve_errors(argv, message, index_dir, tmp_path, capsys):
    (tmp_path / "EMPTY").write_text("\n# nothing\n")
    (tmp_path / "OK").write_text("cat\n")
    argv = [str(tmp_path / a) if a in ("MISSING", "EMPTY", "OK") else a for a in argv]
    where = [] if "--server" in argv else ["--index", str(index_dir)]
    assert run(["retrieve", *where, *argv, "--out", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]
    assert not (tmp_path / "o.parquet").exists()


def test_react_serve_refuses_bad_options(tmp_path, capsys):
    assert run(["serve", "--index", str(tmp_path / "none")]) == 2
    assert "not an index folder" in capsys.readouterr().err
    assert run(["serve", "--index", "bad/name=" + str(tmp_path)]) == 2


def test_react_serve_process_sighup_reload(index_dir, tmp_path):
    """The real command: binds a free port on loopback, answers, reloads on SIGHUP, stops on SIGTERM."""
    import signal

    proc, url = _serve_process(index_dir, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while httpx.get(url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = httpx.get(url + "/v1/indices").json()[0]["generation"]
        proc.send_signal(signal.SIGHUP)
        while httpx.get(url + "/v1/indices").json()[0]["generation"] == before:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        hit = httpx.post(url + "/v1/search", json={"text": "a photo of a car.", "k": 1}).json()["results"][0]
        assert hit["key"] == "car"
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status names the signal.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def _serve_process(index: Path, state: Path):
    """A real ``react serve`` on a free loopback port; returns (process, base url)."""
    from service_fixtures import start_serve

    return start_serve(["--index", f"tiny={index}"], state)


def test_readyz_reports_a_load_failure_that_is_not_a_react_error(index_dir, tmp_path):
    """A truncated image_ids.npy passes the pre-bind check but makes numpy raise ValueError
    while the loader thread opens the index (issue 16): /readyz must name it, not say
    "indices are loading" forever."""
    import shutil
    import signal

    bad = tmp_path / "index"
    shutil.copytree(index_dir, bad)
    ids = bad / "image_ids.npy"
    np.save(ids, np.arange(60, dtype=np.int64))
    ids.write_bytes(ids.read_bytes()[:20])  # cut inside the header
    proc, url = _serve_process(bad, tmp_path / "state")
    try:
        deadline = time.monotonic() + 30
        while (answer := httpx.get(url + "/readyz")).json().get("error") == "indices are loading":
            assert time.monotonic() < deadline, "still 'indices are loading' 30 s after binding"
            time.sleep(0.1)
        assert answer.status_code == 503
        message = answer.json()["error"]
        assert "ValueError" in message and "tiny" in message and "\n" not in message
        assert httpx.get(url + "/healthz").status_code == 200  # the process is alive and answering
        assert httpx.post(url + "/v1/search", json={"text": "a cat", "k": 1}).json()["error"] == message
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def test_reload_failure_that_is_not_a_react_error_keeps_the_old_index(index_dir, tmp_path):
    """The same untranslated ValueError on reload answers 409 naming it; the old index keeps serving."""
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    cfg = ServiceConfig(indices={"tiny": copy}, state_dir=tmp_path / "state")
    with LiveServer(create_app(cfg)) as live:
        ids = copy / "image_ids.npy"
        np.save(ids, np.arange(60, dtype=np.int64))
        ids.write_bytes(ids.read_bytes()[:20])
        answer = httpx.post(live.url + "/v1/indices/tiny/reload")
        assert answer.status_code == 409 and "ValueError" in answer.json()["error"]
        hit = httpx.post(live.url + "/v1/search", json={"text": "a photo of a car.", "k": 1}).json()["results"][0]
        assert hit["key"] == "car"


def test_odd_option_names_and_undeclared_methods(server):
    """Found by tests/test_api_fuzz.py: a clip-retrieval option named "" or with a control character
    went into X-React-Warning as is, h11 refused the header and the connection closed unanswered;
    a 405 had no Allow header (and Starlette's would name one route's methods only)."""
    r = httpx.post(server.url + "/knn-service", json={"text": "a photo of a cat.", "": 1, "bad\x01name\u00e9": 2})
    assert r.status_code == 200, r.text
    header = r.headers["x-react-warning"]
    assert '""' in header and all(" " <= c <= "~" for c in header) and header == header.strip()
    assert '""' in r.json()[0]["warning"]
    r = httpx.request("TRACE", server.url + "/v1/jobs/" + "0" * 32)
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "DELETE"}
    # Routes the app includes from a router (FastAPI keeps it as one entry) name theirs too (was empty).
    r = httpx.post(server.url + "/v1/indices/tiny/images")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
