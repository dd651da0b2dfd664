"""Serving a clip-retrieval / LAION index folder as it is published, through a real `react serve`.

The folder is laid out as clip-retrieval's ``clip index`` (autofaiss) leaves it --
``image.index`` (IVF, inner product), ``text.index`` (Flat, L2), ``image.json``
and ``metadata/metadata_{0,1}.parquet`` without a ``key`` column -- from the
embeddings of the service fixture, whose answers are known. It is made
read-only, served with ``--index laion=DIR --model laion=MODEL``, queried by
clip-retrieval's own ``ClipClient`` and the task endpoint, and must come out
byte-for-byte untouched.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import signal
import sys
import time
import types
from pathlib import Path

import faiss
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from react.cli import run
from react.errors import ReactError
from service_fixtures import CLASSES, TEMPLATES, build_task_index, start_serve


def clip_retrieval_module(name: str):
    """A module of the installed clip-retrieval (2.45.0), unchanged, without running the package's
    ``__init__``: that imports its whole back-end (flask, flask-restful, h5py, all_clip ->
    clip-anytorch, wandb, torch, ...), none of which the client or parquet_to_arrow use."""
    if "clip_retrieval" not in sys.modules:
        spec = importlib.util.find_spec("clip_retrieval")
        assert spec is not None, "clip-retrieval is not installed (scripts/bootstrap.sh installs it; run make setup)"
        package = types.ModuleType("clip_retrieval")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["clip_retrieval"] = package
    return importlib.import_module(f"clip_retrieval.{name}")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _snapshot(root: Path) -> dict:
    """Every path under ``root`` with its size, mtime and (files) content digest."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def _chmod_tree(root: Path, writable: bool) -> None:
    for p in [*root.rglob("*"), root]:
        p.chmod((0o755 if p.is_dir() else 0o644) if writable else (0o555 if p.is_dir() else 0o444))


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_model, tiny_model_dir) -> Path:
    """The service fixture's embedding folder (known answers, see service_fixtures)."""
    return build_task_index(tmp_path_factory.mktemp("clipsrc"), tiny_model, tiny_model_dir).parent / "emb"


def _vectors(emb: Path, sub: str) -> np.ndarray:
    return _unit(np.concatenate([np.load(p) for p in sorted((emb / sub).glob("*.npy"))]))


def write_clip_folder(emb: Path, out: Path, rows: int | None = None) -> Path:
    """What ``clip index`` leaves: autofaiss indices + infos, clip inference's metadata parts copied."""
    img, txt = _vectors(emb, "img_emb"), _vectors(emb, "text_emb")
    ivf = faiss.index_factory(img.shape[1], "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(img)
    ivf.add(img)
    ivf.nprobe = 4  # autofaiss saves its tuned nprobe in the file; all lists here, so the answer is exact
    out.mkdir(parents=True)
    faiss.write_index(ivf, str(out / "image.index"))
    flat = faiss.IndexFlatL2(txt.shape[1])  # autofaiss builds L2 indices too (metric_type="l2")
    flat.add(txt)
    faiss.write_index(flat, str(out / "text.index"))
    (out / "image.json").write_text(json.dumps({"index_key": "IVF4,Flat", "index_param": "nprobe=4",
                                                "nb vectors": len(img), "vectors dimension": img.shape[1]}))
    (out / "metadata").mkdir()
    for i, part in enumerate(sorted((emb / "metadata").glob("*.parquet"))):
        table = pq.read_table(part).drop_columns(["key"])  # LAION's parts may carry no key
        n = table.num_rows
        table = table.append_column("similarity", pa.array(np.linspace(0.3, 0.4, n))) \
                     .append_column("punsafe", pa.array(np.zeros(n)))
        if rows is not None and i == 1:
            table = table.slice(0, table.num_rows - 1)
        table.to_pandas().to_parquet(out / "metadata" / f"metadata_{i}.parquet")  # as clip inference writes
    return out


@pytest.fixture(scope="module")
def laion(source, tmp_path_factory):
    folder = write_clip_folder(source, tmp_path_factory.mktemp("laion") / "knn")
    _chmod_tree(folder, writable=False)
    before = _snapshot(folder)
    yield folder, before
    _chmod_tree(folder, writable=True)


@pytest.fixture(scope="module")
def served(laion, tiny_model_dir, tmp_path_factory):
    """The real command: `react serve --index laion=DIR --model laion=MODEL` on a free loopback port."""
    folder, _ = laion
    state = tmp_path_factory.mktemp("state")
    proc, url = start_serve(["--index", f"laion={folder}", "--model", f"laion={tiny_model_dir}"], state)
    try:
        deadline = time.monotonic() + 120
        while (r := httpx.get(url + "/readyz")).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def _direct(folder: Path, name: str, query: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The answer of a plain faiss search over the published file (cosine for the L2 index)."""
    index = faiss.read_index(str(folder / f"{name}.index"))
    scores, ids = index.search(_unit(query), k)
    sims = 1 - scores[0] / 2 if index.metric_type == faiss.METRIC_L2 else scores[0]
    return ids[0].tolist(), sims.tolist()


def test_clip_client_text_and_embedding(served, laion, source, tiny_model):
    ClipClient = clip_retrieval_module("clip_client").ClipClient  # noqa: N806
    Modality = clip_retrieval_module("clip_client").Modality  # noqa: N806
    folder, _ = laion
    meta = pq.read_table(sorted((source / "metadata").glob("*.parquet"))).to_pylist()  # the original rows
    exact = ClipClient(served + "/knn-service", indice_name="laion", num_images=3, deduplicate=False)
    query = tiny_model.encode_texts(["a photo of a dog."]).numpy()
    results = exact.query(text="a photo of a dog.")
    ids, sims = _direct(folder, "image", query, 3)
    assert [r["id"] for r in results] == ids and ids[:2] in ([3, 2], [2, 3])  # dog, catdog
    assert np.allclose([r["similarity"] for r in results], sims, atol=1e-4)
    for r in results:
        assert r["url"] == meta[r["id"]]["url"] and r["caption"] == meta[r["id"]]["caption"]
        assert r["key"] == str(r["id"])  # no key column: the row number, which is also the faiss id
    # By embedding (image 0: cat), and against the text index (L2: similarity is the cosine).
    cat = _vectors(source, "img_emb")[0]
    results = exact.query(embedding_input=cat.tolist())
    assert [r["id"] for r in results] == _direct(folder, "image", cat[None], 3)[0] and results[0]["id"] == 0
    text = ClipClient(served + "/knn-service", indice_name="laion", num_images=4, deduplicate=False,
                      modality=Modality.TEXT)
    results = text.query(embedding_input=cat.tolist())
    ids, sims = _direct(folder, "text", cat[None], 4)
    assert [r["id"] for r in results] == ids
    assert np.allclose([r["similarity"] for r in results], sims, atol=1e-4)
    # The client's defaults: dedup (from the IVF-Flat codes) drops cat-copy; options it lacks are named.
    results = ClipClient(served + "/knn-service", indice_name="laion", num_images=2).query(embedding_input=cat.tolist())
    assert results[0]["id"] == 0 and 1 not in [r["id"] for r in results]
    assert "use_safety_model" in results[0]["warning"] and "near-duplicate" not in results[0]["warning"]


def test_compat_bodies_without_content_type(served):
    body = json.dumps({"ids": [4, 0], "indice_name": "laion"})
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/json"}):
        r = httpx.post(served + "/metadata", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert [m["metadata"]["key"] for m in r.json()] == ["4", "0"]
        assert r.json()[0]["metadata"]["url"].endswith("/car.jpg")
    r = httpx.post(served + "/knn-service", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"] == "malformed JSON body"
    schema = httpx.get(served + "/openapi.json").json()["paths"]
    for path, model in (("/knn-service", "KnnRequest"), ("/metadata", "MetadataRequest")):
        body = schema[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith(model)


def test_task_endpoint_and_indices(served, laion, tiny_model_dir, tmp_path):
    body = {"classes": CLASSES, "templates": TEMPLATES, "k": 5, "threshold": 0.0, "inline": True, "index": "laion"}
    r = httpx.post(served + "/v1/retrieve", json=body)
    assert r.status_code == 200, r.text
    rows = {row["url"].rsplit("/", 1)[1]: row for row in r.json()["rows"]}
    assert set(rows) == {"cat.jpg", "catdog.jpg", "dog.jpg", "car.jpg"}  # cat-copy collapsed into cat
    assert sorted(rows["catdog.jpg"]["classes"]) == ["cat", "dog"] and rows["catdog.jpg"]["key"] == "2"
    # The same task in-process: `react retrieve --index CLIP_DIR --model MODEL` gives the same subset.
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    assert run(["retrieve", "--index", str(laion[0]), "--model", str(tiny_model_dir), "--classes",
                str(tmp_path / "classes.txt"), "--templates", str(tmp_path / "templates.txt"), "--k", "5",
                "--threshold", "0", "--out", str(tmp_path / "s.parquet")]) == 0
    subset = pq.read_table(tmp_path / "s.parquet").drop_columns(["queries"]).to_pylist()
    assert sorted(subset, key=lambda x: x["key"]) == sorted(
        [{k: v for k, v in row.items() if k in subset[0]} for row in r.json()["rows"]], key=lambda x: x["key"])
    info = httpx.get(served + "/v1/indices").json()[0]
    assert info["rows"] == 60 and info["model_loaded"] and info["dim"] == 32
    image, text = info["modalities"]["image"], info["modalities"]["text"]
    assert image["factory"] == "IVF4,Flat" and image["search_params"] == {"nprobe": 4} and image["count"] == 60
    assert text["factory"] == "Flat"
    hit = httpx.post(served + "/v1/search", json={"text": "a photo of a car.", "k": 1, "index": "laion"}).json()
    assert hit["results"][0]["row"] == 4 and hit["results"][0]["key"] == "4"


def test_other_published_forms(laion, source, tmp_path):
    """LAION-5B's on-disk form (image.index/populated.index + merged .ivfdata, no text index) with
    metadata converted by clip-retrieval's own parquet_to_arrow: same answers, memory-mapped."""
    from faiss.contrib.ondisk import merge_ondisk

    from index.searcher import Searcher

    folder, _ = laion
    img = _vectors(source, "img_emb")
    build = tmp_path / "build"
    build.mkdir()
    trained = faiss.read_index(str(folder / "image.index"))
    trained.reset()
    faiss.write_index(trained, str(build / "trained.index"))
    blocks = []
    for i, (lo, hi) in enumerate(((0, 40), (40, 60))):
        block = faiss.read_index(str(build / "trained.index"))
        block.add_with_ids(img[lo:hi], np.arange(lo, hi))
        faiss.write_index(block, str(build / f"block_{i}.index"))
        blocks.append(str(build / f"block_{i}.index"))
    ondisk = tmp_path / "laion5b"
    (ondisk / "image.index").mkdir(parents=True)
    merged = faiss.read_index(str(build / "trained.index"))
    merge_ondisk(merged, blocks, str(build / "merged_index.ivfdata"))
    faiss.write_index(merged, str(ondisk / "image.index" / "populated.index"))
    (build / "merged_index.ivfdata").rename(ondisk / "image.index" / "merged_index.ivfdata")  # as published
    clip_retrieval_module("clip_back_prepro.parquet_to_arrow").parquet_to_arrow(
        str(folder / "metadata"), str(ondisk / "metadata"), None)
    assert [p.suffix for p in (ondisk / "metadata").iterdir()] == [".arrow"]
    _chmod_tree(ondisk, writable=False)
    before = _snapshot(ondisk)
    try:
        published, arrow = Searcher(folder), Searcher(ondisk)
        assert list(arrow.modalities) == ["image"] and arrow.manifest["metadata"]["form"] == "arrow"
        queries = img[[0, 2, 3, 4, 30]]
        s1, r1 = published.search(queries, k=5, query_modality="image")
        s2, r2 = arrow.search(queries, k=5, query_modality="image")
        assert (r1 == r2).all() and np.allclose(s1, s2, atol=1e-5)
        rows = np.array([59, 0, 41, 3, 41])
        assert arrow.metadata(rows).to_pylist() == published.metadata(rows).to_pylist()
        assert arrow.metadata(rows, ["key"]).column("key").to_pylist() == ["59", "0", "41", "3", "41"]
        with pytest.raises(ReactError, match="no text index"):
            arrow.search(queries, k=1, modality="text")
        del arrow
        assert _snapshot(ondisk) == before
    finally:
        _chmod_tree(ondisk, writable=True)


def test_mismatched_or_empty_folders_fail_before_serving(source, tmp_path, capsys):
    from retrieval_service.registry import IndexRegistry

    bad = write_clip_folder(source, tmp_path / "bad", rows=59)
    assert run(["serve", "--index", f"bad={bad}", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image.index holds 60 vectors but the metadata (parquet) has 59 rows" in err[0]
    # The loader (background thread of a started service) refuses it whole, and /readyz says why.
    registry = IndexRegistry({"bad": bad})
    with pytest.raises(ReactError, match="holds 60 vectors"):
        registry.load_all()
    assert not registry.ready.is_set() and "59 rows" in registry.load_error
    assert registry._loaded == {}

    only_meta = tmp_path / "only-meta"
    (only_meta / "metadata").mkdir(parents=True)
    (bad / "metadata" / "metadata_0.parquet").rename(only_meta / "metadata" / "metadata_0.parquet")
    assert run(["serve", "--index", str(only_meta), "--port", "0"]) == 2
    assert "not an index folder (no index.json, and no image.index/text.index" in capsys.readouterr().err
    no_meta = tmp_path / "no-meta"
    no_meta.mkdir()
    (bad / "text.index").rename(no_meta / "text.index")
    assert run(["serve", "--index", str(no_meta), "--port", "0"]) == 2
    assert "no metadata (metadata/*.parquet" in capsys.readouterr().err


def test_served_folder_untouched(served, laion):
    """Last: after every query above, the read-only folder holds exactly what it held."""
    folder, before = laion
    assert httpx.get(served + "/readyz").status_code == 200
    assert _snapshot(folder) == before
