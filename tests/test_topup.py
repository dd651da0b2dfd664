"""Link rot per query and ``react retrieve --top-up``, end to end on real parts.

The corpus is built around the tiny model's query embeddings (as in
service_fixtures): each class has a known number of pairs that score
positive for its queries, everything else scores negative, so with
``--threshold 0`` a class can never get more pairs than it has. Its images
are real JPEGs served by download/loopback.py's web, told which urls rot
(404); img2dataset downloads them; the index and the search are real faiss.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from download.loopback import CorpusWeb, rotten, serve_corpus
from download.options import DownloadOptions
from download.pipeline import download_subset
from react.cli import run
from react.schemas import DOWNLOAD_MANIFEST, SUBSET_TOPUP_KEY

CLASSES = ["cat", "dog", "car"]
TEMPLATES = ["a photo of a {}.", "a picture of a {}."]
PAIRS = {"cat": 9, "dog": 9, "car": 4}  # pairs positive for each class's queries
N_NOISE = 30
HOST = "http://corpus.react.invalid"
FAST = ["--processes", "1", "--threads", "4", "--timeout", "5", "--retries", "0", "--shard-size", "4"]


def _jpeg(i: int) -> bytes:
    image = Image.new("RGB", (96, 96), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    image.putpixel((i % 96, 3), (255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model, tiny_model_dir):
    """(corpus folder with retrieval.parquet + images, index folder, classes file, templates file)."""
    from index.build import build_index
    from index.embed import write_embedding_folder

    root = tmp_path_factory.mktemp("topup")
    queries = [t.format(c) for c in CLASSES for t in TEMPLATES]
    q = tiny_model.encode_texts(queries).numpy().astype(np.float64)
    pinv = np.linalg.pinv(q)
    dim = q.shape[1]
    rng = np.random.default_rng(7)
    null = np.eye(dim) - pinv @ q  # directions no query sees: keeps pairs apart without changing their scores
    vecs, keys = [], []
    for c, n in PAIRS.items():
        for i in range(n):
            target = np.array([1.0 - 0.08 * i if cc == c else -0.5 for cc in CLASSES for _ in TEMPLATES])
            v = pinv @ target
            vecs.append(v + 0.3 * np.linalg.norm(v) * (null @ rng.normal(size=dim)) / np.sqrt(dim))
            keys.append(f"{c}-{i}")
    for i in range(N_NOISE):
        v = pinv @ -np.ones(len(queries))
        vecs.append(v + 0.5 * np.linalg.norm(v) * (null @ rng.normal(size=dim)) / np.sqrt(dim))
        keys.append(f"noise-{i}")
    img = np.stack(vecs).astype(np.float32)
    corpus = root / "corpus"
    (corpus / "images").mkdir(parents=True)
    for i, key in enumerate(keys):
        (corpus / "images" / f"{key}.jpg").write_bytes(_jpeg(i))
    urls = [f"{HOST}/images/{k}.jpg" for k in keys]
    meta = pa.table({"key": keys, "caption": [f"a {k.replace('-', ' ')} picture" for k in keys], "url": urls})
    pq.write_table(meta.append_column("image_path", pa.array([f"images/{k}.jpg" for k in keys])),
                   corpus / "retrieval.parquet")
    emb = root / "emb"
    write_embedding_folder(emb, img, img.copy(), meta, part_size=40, model=str(tiny_model_dir))
    manifest = json.loads((emb / "embed.json").read_text())
    manifest["model_id"] = tiny_model.identity
    (emb / "embed.json").write_text(json.dumps(manifest))
    build_index(emb, root / "index", n_queries=20, k=10)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return corpus, root / "index", root / "classes.txt", root / "templates.txt"


def _task(world, k: int = 3) -> list[str]:
    _, index, classes, templates = world
    return ["--index", str(index), "--classes", str(classes), "--templates", str(templates), "--k", str(k),
            "--threshold", "0", "--no-dedup"]


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _per_class(rows: list[dict], ok: set[str] | None = None) -> dict[str, int]:
    out = {c: 0 for c in CLASSES}
    for r in rows:
        for c in r["classes"]:
            out[c] += ok is None or r["key"] in ok
    return out


def _downloaded(shards: Path) -> set[str]:
    ok = set()
    for p in shards.glob("*.parquet"):
        t = pq.read_table(p, columns=["subset_key", "status"]).to_pylist()
        ok |= {r["subset_key"] for r in t if r["status"] == "success"}
    return ok


def test_topup_loop_refills_every_class_and_never_asks_twice(world, tmp_path, capsys):
    corpus, *_ = world
    subset, shards = tmp_path / "subset.parquet", tmp_path / "shards"
    assert run(["retrieve", *_task(world), "--out", str(subset)]) == 0
    original = _rows(subset)
    size = _per_class(original)
    assert size == {"cat": 3, "dog": 3, "car": 3}  # k=3 of each class's own pairs; both templates agree
    # Link rot: one cat, two dog and two car pairs are gone. The corpus holds 6 more cat and dog pairs, 1 more car.
    gone_keys = {"cat-0", "dog-1", "dog-2", "car-0", "car-2"}
    assert gone_keys <= {r["key"] for r in original}
    gone = {f"{HOST}/images/{k}.jpg" for k in gone_keys} | {f"{HOST}/images/dog-3.jpg"}  # dog-3: rots before its top-up
    with serve_corpus(corpus, fail_urls=gone) as web:
        assert run(["download", str(subset), "--out", str(shards), *FAST]) == 0
        summary = json.loads((shards / DOWNLOAD_MANIFEST).read_text())["summary"]
        assert summary["top_up"]["per_class"]["dog"] == {"target": 3, "downloaded": 1, "short": 2}
        assert summary["survival"]["per_class"]["car"]["survival"] == pytest.approx(1 / 3, abs=1e-3)

        requested = {r["key"] for r in original}
        topups = []
        for rnd in range(1, 4):
            topup = tmp_path / f"topup-{rnd}.parquet"
            capsys.readouterr()
            assert run(["retrieve", *_task(world), "--top-up", str(shards), "--out", str(topup),
                        "--json", str(tmp_path / f"plan-{rnd}.json")]) == 0
            plan = {r["class"]: r for r in json.loads((tmp_path / f"plan-{rnd}.json").read_text())["per_class"]}
            if not topup.exists():
                break
            rows = _rows(topup)
            keys = {r["key"] for r in rows}
            assert not keys & requested, "a top-up asked again for a pair already requested"
            record = json.loads(pq.read_schema(topup).metadata[SUBSET_TOPUP_KEY.encode()])
            assert record["round"] == rnd
            requested |= keys
            topups.append(rows)
            served_before = web.served
            assert run(["download", str(topup), "--out", str(shards), *FAST]) == 0
            assert web.served - served_before == len(keys) - len({f"{HOST}/images/{k}.jpg" for k in keys} & gone)
        else:
            pytest.fail("the top-up loop did not end")
    # round 1: cat 1 short, dog 2, car 2 (only car-3 left in the corpus); dog-3 rots -> round 2 asks for 1 more dog
    assert [len(t) for t in topups] == [4, 1]
    assert {r["key"] for r in topups[0]} == {"cat-3", "dog-3", "dog-4", "car-3"}
    assert {r["key"] for r in topups[1]} == {"dog-5"}
    final = _per_class(original + topups[0] + topups[1], _downloaded(shards))
    assert final == {"cat": 3, "dog": 3, "car": 2}
    assert plan["car"]["short"] == 1 and plan["cat"]["short"] == 0 and plan["dog"]["short"] == 0
    assert plan["car"]["corpus_exhausted"] is True and plan["car"]["new"] == 0
    summary = json.loads((shards / DOWNLOAD_MANIFEST).read_text())["summary"]
    assert summary["top_up"]["rounds"] == 2
    assert summary["top_up"]["per_class"]["car"] == {"target": 3, "downloaded": 2, "short": 1}
    assert summary["top_up"]["per_class"]["dog"] == {"target": 3, "downloaded": 3, "short": 0}
    assert summary["requested"] == len(original) + 5
    # Appending the same top-up again fetches nothing; resuming the original keeps the top-ups in the summary.
    with serve_corpus(corpus, fail_urls=gone) as web:
        assert run(["download", str(tmp_path / "topup-1.parquet"), "--out", str(shards), *FAST]) == 0
        assert run(["download", str(subset), "--out", str(shards), "--resume", *FAST]) == 0
        assert web.served == 0 and web.not_found == 0
    again = json.loads((shards / DOWNLOAD_MANIFEST).read_text())["summary"]
    assert again["top_up"] == summary["top_up"] and again["requested"] == summary["requested"]


def test_per_query_survival_on_a_hand_made_subset(world, tmp_path):
    corpus, *_ = world
    q1, q2, q3 = "a photo of a cat.", "a picture of a cat.", "a photo of a dog."
    rows = [  # key, queries; cat-1 and dog-0 rot
        ("cat-0", [q1, q2], ["cat"]), ("cat-1", [q1], ["cat"]), ("cat-2", [q2], ["cat"]), ("dog-0", [q3], ["dog"]),
        ("dog-1", [q3, q1], ["dog", "cat"]),
    ]
    table = pa.table({"key": [r[0] for r in rows], "url": [f"{HOST}/images/{r[0]}.jpg" for r in rows],
                      "caption": [f"caption {r[0]}" for r in rows], "similarity": pa.array([0.5] * 5, pa.float32()),
                      "classes": [r[2] for r in rows], "queries": [r[1] for r in rows]})
    pq.write_table(table, tmp_path / "subset.parquet")
    with serve_corpus(corpus, fail_urls={f"{HOST}/images/cat-1.jpg", f"{HOST}/images/dog-0.jpg"}):
        summary = download_subset(tmp_path / "subset.parquet", tmp_path / "shards", options=_opts())
    per_query = summary["survival"]["per_query"]
    # q3: 2 asked, 1 kept; q1: 3 asked (cat-0, cat-1, dog-1), 2 kept; q2: 2 asked, 2 kept -- worst first
    assert [(r["query"], r["requested"], r["downloaded"]) for r in per_query] == [(q3, 2, 1), (q1, 3, 2), (q2, 2, 2)]
    assert [r["survival"] for r in per_query] == [0.5, pytest.approx(0.6667, abs=1e-4), 1.0]
    assert summary["survival"]["per_class"] == {"dog": {"requested": 2, "downloaded": 1, "survival": 0.5},
                                                "cat": {"requested": 4, "downloaded": 3, "survival": 0.75}}
    # the size a class keeps counts each pair for its first class only: dog-1 is dog's
    assert summary["top_up"]["per_class"] == {"cat": {"target": 3, "downloaded": 2, "short": 1},
                                              "dog": {"target": 2, "downloaded": 1, "short": 1}}


def _opts() -> DownloadOptions:
    return DownloadOptions(processes=1, threads=4, timeout=5, retries=0, shard_size=4)


def test_topup_through_a_real_server(world, tmp_path):
    from retrieval_service.config import ServiceConfig
    from retrieval_service.http.app import create_app
    from service_fixtures import LiveServer

    corpus, index, classes, templates = world
    subset, shards = tmp_path / "subset.parquet", tmp_path / "shards"
    cfg = ServiceConfig(indices={"tiny": index}, state_dir=tmp_path / "state")
    with LiveServer(create_app(cfg)) as live:
        task = ["--server", live.url, "--classes", str(classes), "--templates", str(templates), "--k", "3",
                "--threshold", "0", "--no-dedup"]
        assert run(["retrieve", *task, "--out", str(subset)]) == 0
        with serve_corpus(corpus, fail_urls={f"{HOST}/images/cat-1.jpg"}):
            assert run(["download", str(subset), "--out", str(shards), *FAST]) == 0
            assert run(["retrieve", *task, "--top-up", str(shards), "--out", str(tmp_path / "t.parquet")]) == 0
            assert [r["key"] for r in _rows(tmp_path / "t.parquet")] == ["cat-3"]
            assert run(["download", str(tmp_path / "t.parquet"), "--out", str(shards), *FAST]) == 0
    summary = json.loads((shards / DOWNLOAD_MANIFEST).read_text())["summary"]
    assert summary["top_up"]["short_classes"] == 0


def test_bad_input_is_one_line(world, tmp_path, capsys):
    corpus, *_ = world
    subset, shards = tmp_path / "subset.parquet", tmp_path / "shards"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["retrieve", *_task(world), "--top-up", str(empty), "--out", str(tmp_path / "t.parquet")]) == 2
    assert "holds no download.json" in capsys.readouterr().err
    assert run(["retrieve", *_task(world), "--out", str(subset)]) == 0
    with serve_corpus(corpus, fail_urls={f"{HOST}/images/cat-1.jpg"}):
        assert run(["download", str(subset), "--out", str(shards), *FAST]) == 0
    other = tmp_path / "other.txt"
    other.write_text("cat\ndog\n")
    capsys.readouterr()
    argv = ["retrieve", *_task(world), "--top-up", str(shards), "--out", str(tmp_path / "t.parquet")]
    argv[argv.index("--classes") + 1] = str(other)
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "another task (classes differ" in err and len(err.splitlines()) == 1
    # a top-up made for this download cannot be appended to another one
    assert run(["retrieve", *_task(world), "--top-up", str(shards), "--out", str(tmp_path / "t.parquet")]) == 0
    capsys.readouterr()
    with serve_corpus(corpus):
        assert run(["download", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "fresh"), *FAST]) == 2
    assert "holds no download for it to extend" in capsys.readouterr().err


def test_rotten_is_a_deterministic_fraction():
    urls = [f"{HOST}/images/{i}.jpg" for i in range(4000)]
    bad = [u for u in urls if rotten(u, 0.15)]
    assert 0.12 < len(bad) / len(urls) < 0.18
    assert bad == [u for u in urls if rotten(u, 0.15)]
    assert not any(rotten(u, 0.0) for u in urls) and all(rotten(u, 1.0) for u in urls[:50])


def test_loopback_web_404s_the_rotten_urls(world):
    corpus, *_ = world
    import urllib.error
    import urllib.request

    web = CorpusWeb(corpus, fail_fraction=0.5)
    assert web.rotten and len(web.rotten) + len(web.files) == sum(PAIRS.values()) + N_NOISE
    with web:
        url = sorted(web.rotten)[0]
        proxy = urllib.request.ProxyHandler({"http": web.url})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.build_opener(proxy).open(url, timeout=5)
        assert err.value.code == 404


def test_download_served_fetches_the_subset_through_the_rotting_loopback_web(world, tmp_path):
    """The helper the demo and the recipe sweep download with: the manifest summary it returns
    is the one written, and the web served exactly the urls that did not rot."""
    from download.loopback import download_served

    corpus, *_ = world
    subset, shards = tmp_path / "subset.parquet", tmp_path / "shards"
    assert run(["retrieve", *_task(world), "--out", str(subset)]) == 0
    urls = {f"{HOST}/images/{r['key']}.jpg" for r in _rows(subset)}
    calls: list[list[str]] = []

    def step(argv: list[str]) -> None:
        calls.append(argv)
        assert run(argv) == 0

    summary, served = download_served(corpus, subset, shards, step, *FAST, fail_fraction=0.5)
    assert calls[0][:4] == ["download", str(subset), "--out", str(shards)] and len(calls) == 1
    assert summary == json.loads((shards / DOWNLOAD_MANIFEST).read_text())["summary"]
    alive = sum(not rotten(u, 0.5) for u in urls)
    assert 0 < alive < len(urls)  # the fixed fraction rots some of these urls, not all
    assert summary["requested"] == len(urls) and summary["downloaded"] == alive == served
