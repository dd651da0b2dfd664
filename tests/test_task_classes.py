"""Aliases per class and the per-class quota (issue 18 item 2): the classes file, the task core on a
real faiss index built around the tiny model's queries, the coverage rows per alias, the CLI, and the
API on a real uvicorn.

The index (as in service_fixtures): with ``Q`` the queries of the names cat, dog and kitty (an alias of
cat), each pair's image vector is ``pinv(Q) @ target``, so the sign of every query's score on every pair
is chosen. With ``threshold=0`` only positive hits survive and the subset is known exactly:

- ``cat1``, ``cat2``: positive for the cat and kitty queries; ``cat3``: cat only;
- ``kitty``: positive for the kitty queries only -- found only through the alias;
- ``dog1``, ``dog2``, ``dog3``: dog only;
- distractors: negative for every query.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from react.cli import run
from react.errors import ReactError
from retrieval_service.config import ServiceConfig
from retrieval_service.coverage import ClassStats, alias_stats
from retrieval_service.http.app import create_app
from retrieval_service.merge import Hits, merge
from retrieval_service.quota import drop_labels, quota_cuts
from retrieval_service.retrieve_cmd import read_classes
from retrieval_service.spec import AliasConflict, Limits, validate_spec
from retrieval_service.task import TaskRetriever, load_index_model
from service_fixtures import LiveServer

NAMES = ["cat", "dog", "kitty"]  # searched names: two classes, then cat's alias
TEMPLATES = ["a photo of a {}.", "a picture of a {}."]
POSITIVE = {"cat1": {"cat": 1.0, "kitty": 0.9}, "cat2": {"cat": 0.8, "kitty": 0.8}, "cat3": {"cat": 0.7},
            "kitty": {"kitty": 1.0}, "dog1": {"dog": 1.0}, "dog2": {"dog": 0.8}, "dog3": {"dog": 0.6}}
N_DISTRACTORS = 30


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model, tiny_model_dir) -> Path:
    from index.build import build_index
    from index.embed import write_embedding_folder

    root = tmp_path_factory.mktemp("classes")
    q = tiny_model.encode_texts([t.format(n) for n in NAMES for t in TEMPLATES]).numpy().astype(np.float64)
    pinv = np.linalg.pinv(q)
    null = np.eye(q.shape[1]) - pinv @ q  # directions no query sees
    rng = np.random.default_rng(0)
    vecs = [pinv @ np.array([POSITIVE[key].get(n, -0.5) for n in NAMES for _ in TEMPLATES]) for key in POSITIVE]
    scale = np.linalg.norm(vecs[0])
    vecs += [pinv @ -np.ones(len(q)) + 0.5 * scale * (null @ rng.normal(size=q.shape[1])) / np.sqrt(q.shape[1])
             for _ in range(N_DISTRACTORS)]
    keys = list(POSITIVE) + [f"noise-{i}" for i in range(N_DISTRACTORS)]
    meta = pa.table({"key": keys, "caption": [f"a {k} picture" for k in keys],
                     "url": [f"http://corpus.invalid/{k}.jpg" for k in keys]})
    img = np.stack(vecs).astype(np.float32)
    write_embedding_folder(root / "emb", img, img.copy(), meta, part_size=40, model=str(tiny_model_dir))
    manifest = json.loads((root / "emb" / "embed.json").read_text())
    manifest["model_id"] = tiny_model.identity
    (root / "emb" / "embed.json").write_text(json.dumps(manifest))
    build_index(root / "emb", root / "index", n_queries=20, k=10)
    return root / "index"


@pytest.fixture(scope="module")
def retriever(index_dir) -> TaskRetriever:
    from index.searcher import Searcher

    searcher = Searcher(index_dir)
    return TaskRetriever(searcher, load_index_model(searcher))


def _spec(**kw):
    return validate_spec(["cat", "dog"], TEMPLATES, kw.pop("k", 10), "t2i", threshold=0.0, dedup_threshold=None,
                         **kw)


def _by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows}


# --- the classes file --------------------------------------------------------------------------------

def test_read_classes_with_aliases_and_comments(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# tools\nscrewdriver | screw  driver|turnscrew\n\n  hammer\n#hammer|mallet\n"
                    "screwdriver|driver\n")
    got = read_classes(path)
    assert got.names == ["screwdriver", "hammer", "screwdriver"]  # the repeat is merged by validate_spec
    assert got.aliases == {"screwdriver": ["screw driver", "turnscrew", "driver"]}


@pytest.mark.parametrize("text, message", [
    ("cat\ndog||puppy\n", "line 2: an empty name"),
    ("|kitty\n", "line 1: an empty name"),
    ("cat|\n", "line 1: an empty name"),
    ("# only a comment\n\n", "holds no class name"),
])
def test_read_classes_refuses_bad_lines(tmp_path, text, message):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(ReactError, match=message) as err:
        read_classes(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_alias_validation():
    spec = validate_spec(["cat", "dog"], ["{}"], 5, "t2i", aliases={"cat ": ["kitty", " Kitty", "CAT", "moggy"]})
    assert spec.aliases == {"cat": ["kitty", "moggy"]}
    assert spec.queries() == ["cat", "dog", "kitty", "moggy"] and spec.n_queries == 4
    assert sum("repeats a name" in w for w in spec.warnings) == 2  # " Kitty" and "CAT": merged, said so
    with pytest.raises(AliasConflict, match="'Dog' is the name of another class, 'dog'"):
        validate_spec(["cat", "dog"], ["{}"], 5, "t2i", aliases={"cat": ["Dog"]})
    with pytest.raises(AliasConflict, match="given for both 'cat' and 'dog'"):
        validate_spec(["cat", "dog"], ["{}"], 5, "t2i", aliases={"cat": ["pet"], "dog": ["pet"]})
    with pytest.raises(AliasConflict, match="'cow' is not a class"):
        validate_spec(["cat"], ["{}"], 5, "t2i", aliases={"cow": ["calf"]})
    for bad, message in [({"cat": "kitty"}, "list of strings"), ({"cat": [" "]}, r"aliases\['cat'\]\[0\]"),
                         ({"cat": ["x" * 300]}, "at most 200"), ({"cat": ["a", "b", "c"]}, "at most 2 allowed")]:
        with pytest.raises(ReactError, match=message):
            validate_spec(["cat"], ["{}"], 5, "t2i", aliases=bad, limits=Limits(max_aliases=2, max_text_chars=200))
    # Aliases count against the query limit: 2 classes + 2 aliases x 3 templates = 12 > 10.
    with pytest.raises(ReactError, match=r"2 classes \+ 2 aliases x 3 templates = 12 queries, at most 10"):
        validate_spec(["a", "b"], ["{}", "x {}", "y {}"], 5, "t2i", aliases={"a": ["c", "d"]},
                      limits=Limits(max_queries=10))


@pytest.mark.parametrize("per_class", [0, -3, 2.5, True, "5"])
def test_per_class_must_be_a_positive_integer(per_class):
    with pytest.raises(ReactError, match="per_class must be a positive integer"):
        validate_spec(["cat"], ["{}"], 5, "t2i", per_class=per_class)


def test_a_quota_that_cannot_bite_is_said():
    # k=5 x 2 templates x (name + 1 alias) x 2 indices: at most 40 pairs can reach the class.
    spec = validate_spec(["cat"], ["{}", "x {}"], 5, "both", per_class=40, aliases={"cat": ["kitty"]})
    assert any("per_class 40 >= 40" in w and "cannot cut anything" in w for w in spec.warnings)
    assert not validate_spec(["cat"], ["{}", "x {}"], 5, "both", per_class=39, aliases={"cat": ["kitty"]}).warnings


# --- the task core -----------------------------------------------------------------------------------

def test_alias_hits_are_labelled_with_the_class(retriever):
    plain = _by_key(retriever.run(_spec()).table.to_pylist())
    assert set(plain) == {"cat1", "cat2", "cat3", "dog1", "dog2", "dog3"}  # kitty is not found by "cat"
    result = retriever.run(_spec(aliases={"cat": ["kitty"]}))
    rows = _by_key(result.table.to_pylist())
    assert set(rows) == set(plain) | {"kitty"}  # the pair only the alias finds is added
    assert rows["kitty"]["classes"] == ["cat"]  # labelled with the class, never the alias
    assert rows["kitty"]["queries"] == ["a photo of a kitty.", "a picture of a kitty."]
    # Found by both names and both templates: one row, four hits, its best similarity.
    assert rows["cat1"]["classes"] == ["cat"] and rows["cat1"]["hits"] == 4
    assert rows["cat1"]["similarity"] == pytest.approx(plain["cat1"]["similarity"], abs=1e-6)
    assert len(rows["cat1"]["queries"]) == 4
    stats = {s.name: s for s in result.stats}
    assert stats["cat"].unique == 4 and stats["cat"].queries == 4 and stats["dog"].queries == 2
    assert stats["cat"].hits == 2 * 3 + 2 * 3  # cat: 3 pairs x 2 templates; kitty: 3 pairs x 2 templates
    (kitty,) = stats["cat"].aliases
    assert kitty["alias"] == "kitty" and kitty["unique"] == 3 and kitty["only"] == 1 and kitty["hits"] == 6
    assert kitty["coverage"] is not None and stats["dog"].aliases == []
    assert result.summary["aliases"] == 1 and result.summary["queries"] == 6
    assert json.loads(result.table.schema.metadata[b"react.task"])["spec"]["aliases"] == {"cat": ["kitty"]}


def test_quota_keeps_each_class_best(retriever):
    full = retriever.run(_spec(aliases={"cat": ["kitty"]}))
    result = retriever.run(_spec(aliases={"cat": ["kitty"]}, per_class=2))
    rows = result.table.to_pylist()
    for cls in ("cat", "dog"):
        ranked = [r["key"] for r in full.table.to_pylist() if r["classes"] == [cls]]  # best similarity first
        kept = [r["key"] for r in rows if cls in r["classes"]]
        assert kept == ranked[:2], cls
    stats = {s.name: s for s in result.stats}
    assert (stats["cat"].unique, stats["cat"].cut) == (2, 2) and (stats["dog"].unique, stats["dog"].cut) == (2, 1)
    assert result.summary["quota_cut"] == 3 and result.summary["quota_rows_dropped"] == 3
    assert result.summary["rows"] == 4 and result.summary["per_class"] == 2
    # k is per query, the quota per class: with k=1 cat's 4 queries reach at most 4 pairs, so a quota of 4
    # cannot bite (and says so) and the subset is the one without a quota.
    small = retriever.run(_spec(aliases={"cat": ["kitty"]}, k=1, per_class=4))
    assert any("cannot cut anything" in w for w in small.warnings) and small.summary["quota_cut"] == 0
    assert small.table.to_pylist() == retriever.run(_spec(aliases={"cat": ["kitty"]}, k=1)).table.to_pylist()


def test_quota_cuts_labels_not_pairs():
    # One pair per class. Row 7 is class 0's worst and class 1's best: cut from 0, it stays, labelled 1 only;
    # rows 2 and 3 are cut by their only class and leave.
    n_t = 1
    hits = Hits(np.array([1, 2, 7, 7, 3], np.int64), np.array([0.9, 0.8, 0.5, 0.95, 0.4], np.float32),
                np.array([0, 0, 0, 1, 1], np.int32))
    merged = merge(hits, n_t, 2)
    keys, cut = quota_cuts(merged, 2, 1)
    assert keys.tolist() == [2 * 2 + 0, 3 * 2 + 1, 7 * 2 + 0] and cut.tolist() == [2, 1]
    after = merge(drop_labels(hits, np.array([0, 1], np.int32), 2, keys), n_t, 2)
    labels = {int(r): after.classes.values[after.classes.offsets[i]:after.classes.offsets[i + 1]].tolist()
              for i, r in enumerate(after.row)}
    assert labels == {1: [0], 7: [1]}
    assert quota_cuts(merged, 2, 3)[0].size == 0  # a quota above every class's count cuts nothing


def test_weak_alias_is_flagged():
    # Class 0 (name 0) finds rows 1-3 at ~0.5; its alias (name 1) only rows 8-9 at ~0.2: weak, 2 only.
    hits = Hits(np.array([1, 2, 3, 8, 9, 1], np.int64), np.array([0.5, 0.5, 0.5, 0.2, 0.2, 0.45], np.float32),
                np.array([0, 0, 0, 1, 1, 1], np.int32))
    stats = [ClassStats("tool", 2, 6, 5, 5, 0.4, 0.2, 0.5, 0.5, 0.5)]
    warnings = alias_stats(hits, [("tool", 0), ("tol", 0)], np.array([0, 1], np.int32), 1, np.array([3, 3]), stats)
    assert stats[0].aliases == [{"alias": "tol", "queries": 1, "hits": 3, "unique": 3, "only": 2,
                                 "coverage": pytest.approx(0.2833, abs=1e-4), "weak": True}]
    assert len(warnings) == 1 and "'tol' of class 'tool' is weak" in warnings[0]


# --- the command line --------------------------------------------------------------------------------

def test_react_retrieve_aliases_and_quota(index_dir, tmp_path, capsys, monkeypatch):
    from react.progress import console

    monkeypatch.setattr(console, "width", 160)  # the table's rows whole, not cut to pytest's 80 columns
    (tmp_path / "classes.txt").write_text("cat|kitty\ndog\n")
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    assert run(["retrieve", "--index", str(index_dir), "--classes", str(tmp_path / "classes.txt"), "--templates",
                str(tmp_path / "templates.txt"), "--k", "10", "--threshold", "0", "--no-dedup",
                "--per-class", "3", "--out", str(tmp_path / "s.parquet"), "--json", str(tmp_path / "r.json")]) == 0
    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert sum("cat" in r["classes"] for r in rows) == 3 and sum("dog" in r["classes"] for r in rows) == 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["classes"][0]["aliases"][0]["alias"] == "kitty" and report["classes"][0]["cut"] == 1
    err = capsys.readouterr().err
    assert re.search(r"= kitty .*\b6\b.*\b3\b.*\b1\b", err) and "at most 3 per class" in err and "quota: 1 class labels beyond 3" in err
    assert run(["retrieve", "--index", str(index_dir), "--classes", str(tmp_path / "classes.txt"),
                "--per-class", "0", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "--per-class must be a positive integer" in capsys.readouterr().err.strip().splitlines()[-1]
    (tmp_path / "bad.txt").write_text("cat|dog\ndog\n")
    assert run(["retrieve", "--index", str(index_dir), "--classes", str(tmp_path / "bad.txt"),
                "--out", str(tmp_path / "o.parquet")]) == 2
    assert "is the name of another class" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "o.parquet").exists()


# --- the API on a real uvicorn -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(index_dir, tmp_path_factory):
    cfg = ServiceConfig(indices={"tiny": index_dir}, state_dir=tmp_path_factory.mktemp("state"),
                        limits=Limits(max_classes=50, max_templates=10, max_k=100, max_text_chars=200,
                                      max_aliases=4))
    with LiveServer(create_app(cfg)) as live:
        yield live


def test_api_round_trip(server, tmp_path):
    body = {"classes": ["cat", "dog"], "templates": TEMPLATES, "k": 10, "threshold": 0.0, "dedup_threshold": None,
            "aliases": {"cat": ["kitty"]}, "per_class": 3}
    r = httpx.post(server.url + "/v1/retrieve", json=body)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while (info := httpx.get(f"{server.url}/v1/jobs/{r.json()['id']}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert info["state"] == "done" and info["rows"] == 6, info
    cat = info["report"]["classes"][0]
    assert cat["aliases"][0]["only"] == 1 and cat["cut"] == 1 and info["report"]["summary"]["per_class"] == 3
    (tmp_path / "s.parquet").write_bytes(httpx.get(server.url + info["result_url"]).content)
    rows = _by_key(pq.read_table(tmp_path / "s.parquet").to_pylist())
    assert rows["kitty"]["classes"] == ["cat"]
    inline = httpx.post(server.url + "/v1/retrieve", json=body | {"inline": True, "per_class": None}).json()
    assert _by_key(inline["rows"])["kitty"]["classes"] == ["cat"] and len(inline["rows"]) == 7
    # Contradictions: 409 naming the alias; schema violations: 422 naming the field.
    r = httpx.post(server.url + "/v1/retrieve", json=body | {"aliases": {"cat": ["dog"]}})
    assert r.status_code == 409 and "'dog' is the name of another class" in r.json()["error"]
    r = httpx.post(server.url + "/v1/retrieve", json=body | {"aliases": {"cow": ["calf"]}})
    assert r.status_code == 409 and "'cow' is not a class" in r.json()["error"]
    for bad in ({"per_class": 0}, {"per_class": "3"}, {"aliases": {"cat": []}}, {"aliases": {"cat": ["a"] * 5}},
                {"aliases": {"cat": "kitty"}}, {"aliases": {"cat": [" "]}}):
        r = httpx.post(server.url + "/v1/retrieve", json=body | bad)
        assert r.status_code == 422, (bad, r.text)
        assert next(iter(bad)) in json.dumps(r.json()["detail"])


def test_openapi_documents_aliases_and_quota(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    props = schemas["RetrieveRequest"]["properties"]
    aliases = props["aliases"]
    assert aliases["type"] == "object" and aliases["additionalProperties"]["type"] == "array"
    assert aliases["additionalProperties"]["maxItems"] == 4 and aliases["additionalProperties"]["minItems"] == 1
    assert "alias" in aliases["description"]
    (number,) = [b for b in props["per_class"]["anyOf"] if b.get("type") == "integer"]
    assert number["minimum"] == 1 and "per class" in props["per_class"]["description"]
    assert "409" in spec["paths"]["/v1/retrieve"]["post"]["responses"]
