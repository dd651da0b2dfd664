"""Example images as queries (issue 18.1): image -> image retrieval merged under the class, through the
task core, ``react retrieve --examples DIR`` (in-process and --server) and ``/v1/retrieve``.

The corpus is real: two classes' images from the embedded corpus's downstream **validation** half (never
the test half), each put in the index as a re-encoded, resized copy (as the web holds them), and emoji
from its retrieval part as distractors. Every vector is the tiny model's own embedding of the file, so
an example image's nearest corpus pair is its own copy whatever the (untrained) model is.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from react.cli import run
from react.errors import ReactError
from react.schemas import SUBSET_TASK_KEY
from retrieval_service.config import ServiceConfig
from retrieval_service.http.app import create_app
from retrieval_service.spec import Limits, validate_spec
from retrieval_service.task import TaskRetriever, load_index_model
from service_fixtures import LiveServer

TEMPLATES = ["a photo of a {}."]
PER_CLASS = 3
N_DISTRACTORS = 30


def _copy(raw: bytes) -> bytes:
    """What the web holds of an image: resized to 90 % and re-encoded as a JPEG."""
    img = Image.open(io.BytesIO(raw)).convert("RGB")
    buf = io.BytesIO()
    img.resize((max(8, img.width * 9 // 10), max(8, img.height * 9 // 10))).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pics(tmp_path_factory, tiny_model, tiny_model_dir):
    """(index folder, {class: [validation image bytes]}, the two class names)."""
    import torch

    from index.build import build_index
    from index.embed import write_embedding_folder
    from react.datasets import build_classification_dataset
    from react.embedded.corpus import fetch_embedded

    corpus = fetch_embedded(fraction=0.25)  # cached; the end-to-end slice uses it too
    val = build_classification_dataset(corpus, "val")
    by_class: dict[str, list[bytes]] = {}
    for path, label in zip(val.paths, val.labels):
        by_class.setdefault(val.classnames[label], []).append(Path(path).read_bytes())
    names = [c for c, raws in by_class.items() if len(raws) >= PER_CLASS][:2]
    assert len(names) == 2, by_class.keys()
    originals = {c: by_class[c][:PER_CLASS] for c in names}
    retrieval = pq.read_table(corpus / "retrieval.parquet").to_pylist()
    emoji = [r for r in retrieval if r["label"] is None][:N_DISTRACTORS]
    keys, captions, images = [], [], []
    for c in names:
        for i, raw in enumerate(originals[c]):
            keys.append(f"{c}-{i}")
            captions.append(f"a picture of a {c}")
            images.append(_copy(raw))
    for r in emoji:
        keys.append(r["key"])
        captions.append(r["caption"])
        images.append((corpus / r["image_path"]).read_bytes())
    with torch.inference_mode():
        pixels = torch.stack([tiny_model.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        img = tiny_model.encode_images(pixels).numpy().astype(np.float32)
    txt = tiny_model.encode_texts(captions).numpy().astype(np.float32)
    root = tmp_path_factory.mktemp("examples")
    meta = pa.table({"key": keys, "caption": captions, "url": [f"http://corpus.invalid/{k}.jpg" for k in keys]})
    write_embedding_folder(root / "emb", img, txt, meta, part_size=16, model=str(tiny_model_dir))
    manifest = json.loads((root / "emb" / "embed.json").read_text())
    manifest["model_id"] = tiny_model.identity
    (root / "emb" / "embed.json").write_text(json.dumps(manifest))
    build_index(root / "emb", root / "index", n_queries=10, k=5)
    return root / "index", originals, names


def _retriever(index: Path) -> TaskRetriever:
    from index.searcher import Searcher

    searcher = Searcher(index)
    return TaskRetriever(searcher, load_index_model(searcher))


def _rows(table: pa.Table) -> dict[str, dict]:
    return {r["key"]: r for r in table.to_pylist()}


def test_example_images_retrieve_their_class_pairs_merged_once(pics):
    index, originals, (a, b) = pics
    # A's first image given twice: both queries find its copy, which must appear once with both labels.
    examples = {a: [originals[a][0], originals[a][1], originals[a][0]]}
    result = _retriever(index).run(validate_spec([a, b], TEMPLATES, 2, "t2i", dedup_threshold=None, examples=examples))
    rows = _rows(result.table)
    for i in (0, 1):
        row = rows[f"{a}-{i}"]
        assert row["classes"][0] == a and f"example:{a}#{i}" in row["queries"], row
        assert row["similarity"] >= 0.95, row  # a resized, re-encoded copy of the example itself
    copy0 = rows[f"{a}-0"]
    assert {f"example:{a}#0", f"example:{a}#2"} <= set(copy0["queries"]) and copy0["hits"] >= 2
    assert result.table.column("key").to_pylist().count(f"{a}-0") == 1
    summary = result.summary
    assert summary["examples"] == 3 and summary["example_mode"] == "mix" and summary["queries"] == 2 + 3
    stats = {s.name: s for s in result.stats}
    assert stats[a].queries == 1 + 3 and stats[b].queries == 1 and stats[a].hits == 4 * 2
    # Text queries still run for A in mix mode: some A row was found by A's text query.
    assert any(TEMPLATES[0].format(a) in r["queries"] for r in rows.values() if a in r["classes"])
    spec = json.loads(result.table.schema.metadata[SUBSET_TASK_KEY.encode()])["spec"]
    assert spec["examples"] == {a: 3} and spec["example_mode"] == "mix"  # counts in the report, never the bytes


def test_only_mode_searches_a_class_by_its_images_alone(pics):
    index, originals, (a, b) = pics
    retriever = _retriever(index)
    one = {a: originals[a][:1]}
    only = retriever.run(validate_spec([a, b], TEMPLATES, 3, "t2i", dedup_threshold=None, examples=one,
                                       example_mode="only"))
    assert only.summary["queries"] == 1 + 1 and only.summary["example_mode"] == "only"
    for row in only.table.to_pylist():
        mine = [q for q in row["queries"] if q.startswith("example:")]
        assert TEMPLATES[0].format(a) not in row["queries"], row  # A's name was not searched
        if a in row["classes"]:
            assert mine, row  # A was searched by its image only
        if row["classes"] == [b]:
            assert not mine and TEMPLATES[0].format(b) in row["queries"], row
    assert _rows(only.table)[f"{a}-0"]["classes"][0] == a
    assert {s.name: s.queries for s in only.stats} == {a: 1, b: 1}
    mix = retriever.run(validate_spec([a, b], TEMPLATES, 3, "t2i", dedup_threshold=None, examples=one))
    assert mix.summary["queries"] == 3 and {s.name: s.queries for s in mix.stats} == {a: 2, b: 1}
    text = retriever.run(validate_spec([a, b], TEMPLATES, 3, "t2i", dedup_threshold=None))
    assert text.summary["examples"] == 0 and text.summary["example_mode"] is None


def test_coverage_figures_stay_on_the_text_scale(pics):
    """Image -> image similarities run far above text -> image ones: a class's figures (and the
    low-coverage rule) use its text hits, so examples for one class cannot get the others flagged."""
    index, originals, (a, b) = pics
    classes = [a, b, "tree", "house"]
    retriever = _retriever(index)
    text = {s.name: s for s in retriever.run(validate_spec(classes, TEMPLATES, 3, "t2i", dedup_threshold=None)).stats}
    mix = retriever.run(validate_spec(classes, TEMPLATES, 3, "t2i", dedup_threshold=None,
                                      examples={a: originals[a][:2]}))
    assert max(mix.table.column("similarity").to_pylist()) >= 0.95  # the examples' own copies
    for s in mix.stats:
        figures = lambda x: (x.coverage, x.p10, x.p50, x.p90, x.max, x.low_coverage)  # noqa: E731
        assert figures(s) == figures(text[s.name]), s.name
    assert {s.name: s.hits for s in mix.stats}[a] == text[a].hits + 2 * 3
    only = {s.name: s for s in retriever.run(validate_spec(
        classes, TEMPLATES, 3, "t2i", dedup_threshold=None, examples={a: originals[a][:2]},
        example_mode="only")).stats}
    assert only[a].max >= 0.95 and not only[a].low_coverage  # its image figures, outside the rule
    assert all(only[c].low_coverage == text[c].low_coverage for c in classes[1:])


@pytest.mark.parametrize("examples, mode, message", [
    ({"nope": [b"x"]}, None, "'nope' is not one of the task's classes"),
    ({"A": []}, None, "non-empty list"),
    ({"A": [b""]}, None, "empty or not image bytes"),
    ({"A": [b"x"] * 3}, None, "at most 2 allowed"),
    ({"A": [b"x" * 101]}, None, "101 bytes, at most 100"),
    ({"A": [b"x"], "B": [b"x", b"x"]}, None, "3 images, at most 2"),
    ({"A": [b"x"]}, "both", "example_mode must be one of mix, only"),
])
def test_example_validation(examples, mode, message):
    limits = Limits(max_examples_per_class=2, max_examples=2, max_example_bytes=100)
    with pytest.raises(ReactError, match=message.replace("(", r"\(")):
        validate_spec(["A", "B"], TEMPLATES, 5, "t2i", limits=limits, examples=examples, example_mode=mode)
    spec = validate_spec(["A", " B "], TEMPLATES, 5, "t2i", examples={"B": [b"x"]})
    assert spec.examples == {"B": [b"x"]} and spec.to_json()["examples"] == {"B": 1}
    assert spec.n_queries == 2 + 1


def _examples_dir(root: Path, originals: dict[str, list[bytes]], n: int = 2) -> Path:
    for c, raws in originals.items():
        (root / c).mkdir(parents=True)
        for i, raw in enumerate(raws[:n]):
            (root / c / f"{i}.jpg").write_bytes(raw)
    return root


def _task_files(tmp: Path, names: list[str]) -> list[str]:
    (tmp / "classes.txt").write_text("\n".join(names) + "\n")
    (tmp / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return ["--classes", str(tmp / "classes.txt"), "--templates", str(tmp / "templates.txt"), "--k", "2", "--no-dedup"]


@pytest.mark.parametrize("case, message", [
    ("unknown", "names no class of the task"),
    ("garbage", "not a readable image"),
    ("empty", "holds no image"),
    ("text", "is not a jpg, png or webp image"),
    ("mode", "--example-mode needs example images"),
    ("missing", "not a folder"),
])
def test_react_retrieve_examples_errors(pics, tmp_path, capsys, case, message):
    index, originals, names = pics
    ex = _examples_dir(tmp_path / "ex", originals, 1)
    culprit = {"unknown": ex / "zebra crossing", "garbage": ex / names[0] / "bad.png", "empty": ex / "empty",
               "text": ex / names[0] / "notes.txt"}.get(case)
    if case == "unknown":
        culprit.mkdir()
        (culprit / "0.jpg").write_bytes(originals[names[0]][0])
    elif case == "garbage":
        culprit.write_bytes(b"\x89PNG not really")
    elif case == "empty":
        culprit = ex / names[1]  # a known class folder, emptied
        for f in culprit.iterdir():
            f.unlink()
    elif case == "text":
        culprit.write_text("not an image")
    argv = ["retrieve", "--index", str(index), *_task_files(tmp_path, names), "--out", str(tmp_path / "o.parquet")]
    if case == "mode":
        argv += ["--example-mode", "only"]
    else:
        argv += ["--examples", str(tmp_path / "nowhere" if case == "missing" else ex)]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1], err
    if culprit is not None:
        assert str(culprit) in err[-1]
    assert not (tmp_path / "o.parquet").exists()


@pytest.fixture(scope="module")
def server(pics, tmp_path_factory):
    index, _, _ = pics
    cfg = ServiceConfig(indices={"pics": index}, state_dir=tmp_path_factory.mktemp("state"),
                        limits=Limits(max_examples_per_class=4), max_image_bytes=200_000)
    with LiveServer(create_app(cfg)) as live:
        live.cfg = cfg
        yield live


def test_react_retrieve_examples_in_process_and_via_server(pics, server, tmp_path):
    index, originals, names = pics
    ex = _examples_dir(tmp_path / "ex", originals)
    common = [*_task_files(tmp_path, names), "--examples", str(ex)]
    assert run(["retrieve", "--index", str(index), *common, "--out", str(tmp_path / "a.parquet")]) == 0
    assert run(["retrieve", "--server", server.url, *common, "--out", str(tmp_path / "b.parquet")]) == 0
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.to_pylist() == b.to_pylist()
    rows = _rows(a)
    for c in names:
        assert rows[f"{c}-0"]["classes"][0] == c and f"example:{c}#0" in rows[f"{c}-0"]["queries"]
    assert run(["retrieve", "--index", str(index), *common, "--example-mode", "only",
                "--out", str(tmp_path / "c.parquet")]) == 0
    only = pq.read_table(tmp_path / "c.parquet").to_pylist()
    assert all(q.startswith("example:") for r in only for q in r["queries"])


def test_examples_given_in_the_classes_file(pics, tmp_path, capsys):
    """``CLASS|@glob`` fields in the classes file are the same example images as --examples DIR."""
    index, originals, names = pics
    ex = _examples_dir(tmp_path / "ex", originals)
    common = _task_files(tmp_path, names)
    assert run(["retrieve", "--index", str(index), *common, "--examples", str(ex),
                "--out", str(tmp_path / "dir.parquet")]) == 0
    (tmp_path / "classes.txt").write_text("".join(f"{c}|@ex/{c}/*.jpg\n" for c in names))
    assert run(["retrieve", "--index", str(index), *common, "--out", str(tmp_path / "file.parquet")]) == 0
    assert pq.read_table(tmp_path / "file.parquet").to_pylist() == pq.read_table(tmp_path / "dir.parquet").to_pylist()
    (tmp_path / "classes.txt").write_text(f"{names[0]}|@ex/nothing-here/*.jpg\n")
    assert run(["retrieve", "--index", str(index), *common, "--out", str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "line 1: @ex/nothing-here/*.jpg matches no file" in err and not (tmp_path / "bad.parquet").exists()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_api_examples_inline_job_and_refusals(pics, server):
    _, originals, (a, b) = pics
    url = server.url
    body = {"classes": [a, b], "templates": TEMPLATES, "k": 2, "index": "pics", "dedup_threshold": None,
            "examples": {a: [_b64(originals[a][0])]}, "example_mode": "only"}
    r = httpx.post(url + "/v1/retrieve", json=body | {"inline": True}, timeout=60)
    assert r.status_code == 200, r.text
    rows = {row["key"]: row for row in r.json()["rows"]}
    assert rows[f"{a}-0"]["classes"][0] == a and rows[f"{a}-0"]["similarity"] >= 0.95
    assert r.json()["report"]["summary"]["examples"] == 1
    # As a job: the stored request keeps counts, not the images.
    job = httpx.post(url + "/v1/retrieve", json=body, timeout=60)
    assert job.status_code == 202, job.text
    for _ in range(600):
        info = httpx.get(url + f"/v1/jobs/{job.json()['id']}", timeout=30).json()
        if info["state"] not in ("queued", "running"):
            break
    assert info["state"] == "done", info
    assert info["report"]["summary"]["example_mode"] == "only"
    subset = pq.read_table(io.BytesIO(httpx.get(url + info["result_url"], timeout=30).content))
    assert _rows(subset)[f"{a}-0"]["queries"] == ["example:" + a + "#0"]
    stored = (server.cfg.state_dir / "jobs" / info["id"] / "request.json").read_text()
    assert json.loads(stored)["examples"] == {a: 1} and _b64(originals[a][0])[:40] not in stored
    refusals = [
        ({"examples": {"zebra": [_b64(originals[a][0])]}}, 400, "'zebra' is not one of the task's classes"),
        ({"examples": {a: ["!!!not base64"]}}, 400, f"examples['{a}'][0]: image: not valid base64"),
        ({"examples": {a: [_b64(b"not an image")]}}, 400, f"example:{a}#0: image: not a readable image"),
        ({"examples": {a: [_b64(originals[a][0])] * 5}}, 422, "examples"),  # the schema's per-class limit
        ({"examples": {a: []}}, 422, "examples"),
        ({"example_mode": "sometimes"}, 422, "example_mode"),
    ]
    for extra, status, message in refusals:
        got = httpx.post(url + "/v1/retrieve", json=body | {"inline": True} | extra, timeout=60)
        assert got.status_code == status and message in got.text, (extra, got.status_code, got.text)
    schema = httpx.get(url + "/openapi.json", timeout=30).json()["components"]["schemas"]["RetrieveRequest"]
    examples = schema["properties"]["examples"]
    assert "base64" in examples["description"]
    per_class = next(s for s in examples["anyOf"] if s.get("type") == "object")["additionalProperties"]
    assert per_class["maxItems"] == 4 and per_class["items"]["maxLength"] == (200_000 * 4) // 3 + 8
