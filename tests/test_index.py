"""``react index``: build (auto and forced), tuning, Searcher, eval, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.build import build_index
from index.embed import write_embedding_folder
from index.evaluate import evaluate_index, retune_index
from index.exact import exact_knn, recall_at
from index.searcher import Searcher
from index.vectors import EmbeddingFolder
from react.cli import run
from react.errors import ReactError
from react.schemas import INDEX_JSON, img_emb_path, index_file, metadata_path

DIM = 32


def clustered(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image/text pairs around 40 concepts; text sits across a modality gap."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, DIM))
    gap = rng.normal(size=DIM) * 0.8
    labels = rng.integers(0, 40, size=n)
    img = centers[labels] + rng.normal(scale=0.6, size=(n, DIM))
    txt = centers[labels] + gap + rng.normal(scale=0.9, size=(n, DIM))
    return img.astype(np.float32), txt.astype(np.float32)


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("emb") / "emb"
    img, txt = clustered(3000)
    write_embedding_folder(root, img, txt, part_size=1000, model="synthetic")
    return root


@pytest.fixture(scope="module")
def index_dir(emb_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(emb_dir, out, n_queries=200)
    return out


def _truth(folder: EmbeddingFolder, modality: str, queries: np.ndarray, k: int) -> np.ndarray:
    return exact_knn(folder.stream(modality), queries, k)[1]


def test_build_writes_the_contract(index_dir, emb_dir):
    manifest = json.loads((index_dir / INDEX_JSON).read_text())
    for field in ("factory", "metric", "dim", "count", "modality", "model", "search_params", "recall", "qps",
                  "checksum"):
        assert field in manifest, field
    assert manifest["modality"] == "both" and manifest["dim"] == DIM and manifest["count"] == 3000
    assert manifest["model"] == "synthetic" and manifest["metric"] == "inner_product"
    assert manifest["recall"]["k"] == 50 and manifest["recall"]["queries"] == "t2i"
    assert set(manifest["indices"]) == {"image", "text"}
    for name, entry in manifest["indices"].items():
        assert entry["factory"] == "HNSW32" and entry["build_params"]["efConstruction"] >= 100
        assert entry["target_met"] and entry["recall"]["value"] >= 0.95
        assert "efSearch" in entry["search_params"] and entry["qps"] > 0 and entry["exact_qps"] > 0
        assert index_file(index_dir, name).stat().st_size == entry["bytes"]
    assert manifest["checksum"] == EmbeddingFolder.open(emb_dir).checksum()
    assert not [p for p in index_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_searcher_matches_exact_search_and_metadata(index_dir, emb_dir):
    searcher = Searcher(index_dir)
    folder = EmbeddingFolder.open(emb_dir)
    _, queries = folder.gather("text", np.arange(0, 3000, 37))
    scores, rows = searcher.search(queries, k=20)
    assert rows.shape == (len(queries), 20) and (np.diff(scores, axis=1) <= 1e-5).all()
    assert recall_at(rows, _truth(folder, "image", queries, 20), 20) > 0.9
    table = searcher.metadata(rows[0])
    assert table.column("key").to_pylist() == [f"{r:09d}" for r in rows[0]]
    _, t_rows = searcher.search(queries[:3], k=5, modality="text")
    assert recall_at(t_rows, _truth(folder, "text", queries[:3], 5), 5) > 0.9


def test_k_larger_than_the_index_is_clamped(index_dir):
    searcher = Searcher(index_dir)
    scores, rows = searcher.search(np.ones((2, DIM), np.float32), k=10_000, params={"efSearch": 4000})
    assert rows.shape == (2, 3000) and sorted(rows[0].tolist()) == list(range(3000))
    with pytest.raises(ReactError, match="k must be"):
        searcher.search(np.ones((1, DIM)), k=0)


def test_query_checks(index_dir, tiny_model):
    searcher = Searcher(index_dir)
    with pytest.raises(ReactError, match=r"queries must be \[n, 32\]"):
        searcher.search(np.ones((2, 16)), k=3)
    with pytest.raises(ReactError, match="NaN"):
        searcher.search(np.full((1, DIM), np.nan), k=3)
    with pytest.raises(ReactError, match="built from model synthetic"):
        searcher.check_model(tiny_model)
    searcher.check_model("synthetic")
    with pytest.raises(ReactError, match="has no text index"):
        Searcher(_copy_with(index_dir, modality="image")).search(np.ones((1, DIM)), k=1, modality="text")


def _copy_with(index_dir: Path, modality: str) -> Path:
    out = index_dir.parent / f"only-{modality}"
    if not out.exists():
        shutil.copytree(index_dir, out)
        manifest = json.loads((out / INDEX_JSON).read_text())
        manifest["indices"] = {modality: manifest["indices"][modality]}
        (out / INDEX_JSON).write_text(json.dumps(manifest))
    return out


def test_truncated_index_file_is_named(index_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(index_dir, broken)
    data = index_file(broken, "image").read_bytes()
    index_file(broken, "image").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReactError, match="image.faiss: .*truncated"):
        Searcher(broken)
    manifest = json.loads((broken / INDEX_JSON).read_text())
    manifest["indices"]["image"]["bytes"] = len(data) // 2  # even without the size check
    (broken / INDEX_JSON).write_text(json.dumps(manifest))
    with pytest.raises(ReactError, match="unreadable index"):
        Searcher(broken)


def test_nan_and_zero_rows_are_skipped_counted_and_never_returned(tmp_path):
    img, txt = clustered(1200, seed=1)
    root = tmp_path / "emb"
    write_embedding_folder(root, img, txt, part_size=600, model="synthetic")
    part1 = np.load(img_emb_path(root, 1))
    part1[5] = np.nan
    part1[7] = 0
    np.save(img_emb_path(root, 1), part1)
    out = tmp_path / "index"
    manifest = build_index(root, out, modality="image", n_queries=100)
    entry = manifest["indices"]["image"]
    assert entry["skipped"] == 2 and entry["count"] == 1198
    searcher = Searcher(out)
    _, rows = searcher.search(np.ones((1, DIM)), k=5000, params={"efSearch": 5000})
    assert rows.shape == (1, 1198) and not {605, 607} & set(rows[0].tolist())


def test_forced_ivf_is_tuned_on_nprobe(emb_dir, tmp_path):
    manifest = build_index(emb_dir, tmp_path / "ivf", modality="image", factory="IVF32,Flat", n_queries=200,
                           target_recall=0.9)
    assert manifest["factory"] == "IVF32,Flat" and "nprobe" in manifest["search_params"]
    assert manifest["recall"]["value"] >= 0.9
    tuned = manifest["search_params"]
    same_variant = [p for p in manifest["indices"]["image"]["sweep"]
                    if {k: v for k, v in p["params"].items() if k != "nprobe"} == {k: v for k, v in tuned.items() if k != "nprobe"}]
    # the smallest setting that reaches the target: every cheaper one measured below it
    assert same_variant[-1]["params"] == tuned
    assert all(p["recall_lower"] < 0.9 for p in same_variant[:-1])


def test_compressed_codes_rerank_from_the_embedding_folder(emb_dir, tmp_path):
    manifest = build_index(emb_dir, tmp_path / "pq", modality="image", factory="IVF16,PQ8x8", n_queries=200,
                           target_recall=0.9)
    entry = manifest["indices"]["image"]
    assert entry["target_met"], entry["sweep"]
    searcher = Searcher(tmp_path / "pq")
    folder = EmbeddingFolder.open(emb_dir)
    _, queries = folder.gather("text", np.arange(5, 3000, 50))
    scores, rows = searcher.search(queries, k=10, params={"rerank": 4, "nprobe": 16})
    exact = folder.take("image", rows[0])
    np.testing.assert_allclose(scores[0], exact @ (queries[0] / np.linalg.norm(queries[0])), atol=1e-4)


def test_tune_and_eval(index_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(index_dir, copy)
    before = json.loads((copy / INDEX_JSON).read_text())["indices"]["image"]["search_params"]["efSearch"]
    manifest = retune_index(copy, target_recall=1.0, n_queries=200)
    after = manifest["indices"]["image"]["search_params"]["efSearch"]
    assert after >= before and manifest["search_params"] == manifest["indices"]["image"]["search_params"]
    report = evaluate_index(copy, n_queries=100)
    table = report["tables"]["image (t2i)"]["rows"]
    assert table[0]["setting"].startswith("exact") and table[0]["recall@50"] == 1.0
    recalls = [r["recall@50"] for r in table[1:]]
    assert recalls[-1] >= recalls[0] and recalls[-1] > 0.99


def test_tune_refuses_changed_embeddings(emb_dir, index_dir, tmp_path):
    moved = tmp_path / "emb"
    shutil.copytree(emb_dir, moved)
    arr = np.load(img_emb_path(moved, 0))
    arr[0] = -arr[0]
    np.save(img_emb_path(moved, 0), arr)
    with pytest.raises(ReactError, match="has changed since"):
        retune_index(index_dir, embeddings=moved)


def test_misaligned_part_is_refused_by_name(emb_dir, tmp_path):
    bad = tmp_path / "emb"
    shutil.copytree(emb_dir, bad)
    arr = np.load(img_emb_path(bad, 2))
    np.save(img_emb_path(bad, 2), arr[:-1])
    with pytest.raises(ReactError, match="part 2: row counts differ"):
        build_index(bad, tmp_path / "index")
    assert not (tmp_path / "index").exists()


def test_cli_bad_input_is_one_line(emb_dir, tmp_path, capsys):
    cases = [
        (["index", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "i")], "embedding folder not found"),
        (["index", "build", str(emb_dir), "--out", str(tmp_path / "i"), "--factory", "HNSW-bogus"], "faiss rejects"),
        (["index", "build", str(emb_dir), "--out", str(tmp_path / "i"), "--target-recall", "1.5"], "--target-recall"),
        (["index", "build", str(emb_dir), "--out", str(tmp_path / "i"), "--queries", str(tmp_path / "q.npy")],
         "--queries not found"),
        (["index", "eval", str(tmp_path)], "not an index folder"),
    ]
    np.save(tmp_path / "wrongdim.npy", np.ones((3, 7), np.float32))
    cases.append((["index", "build", str(emb_dir), "--out", str(tmp_path / "i"), "--queries",
                   str(tmp_path / "wrongdim.npy")], "dimension 7"))
    for argv, message in cases:
        assert run(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err and message in err[-1], (argv, err)
    assert not (tmp_path / "i").exists()


def test_empty_folder_is_refused(tmp_path):
    root = tmp_path / "emb"
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    with pytest.raises(ReactError, match="no embedding parts"):
        build_index(root, tmp_path / "index")
    np.save(img_emb_path(root, 0), np.zeros((0, DIM), np.float16))
    np.save(root / "text_emb" / "text_emb_0.npy", np.zeros((0, DIM), np.float16))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": pa.array([], pa.string()), "caption": pa.array([], pa.string()),
                             "url": pa.array([], pa.string())}), metadata_path(root, 0))
    with pytest.raises(ReactError, match="empty embedding folder"):
        build_index(root, tmp_path / "index")


def test_dimension_that_does_not_match_the_model_is_refused(emb_dir, tmp_path):
    bad = tmp_path / "emb"
    shutil.copytree(emb_dir, bad)
    manifest = json.loads((bad / "embed.json").read_text())
    manifest["dim"] = 512  # the model says 512, the parts hold 32
    (bad / "embed.json").write_text(json.dumps(manifest))
    with pytest.raises(ReactError, match="dim 512 but the parts hold 32"):
        build_index(bad, tmp_path / "index")


def test_searcher_memory_maps_what_faiss_can(index_dir, emb_dir, tmp_path):
    ivf = tmp_path / "ivf"
    build_index(emb_dir, ivf, modality="image", factory="IVF32,Flat", n_queries=100)
    import faiss

    # the inverted lists are served from the file, not copied into RAM
    index = Searcher(ivf).modalities["image"].index
    invlists = faiss.extract_index_ivf(index).invlists
    assert isinstance(faiss.downcast_InvertedLists(invlists), faiss.OnDiskInvertedLists)


def test_row_metadata_take_across_parts_matches_a_plain_take(tmp_path):
    import pyarrow as pa

    from index.metadata import RowMetadata
    from react.schemas import INDEX_METADATA

    parts = [pa.record_batch({"key": [f"k{o + i}" for i in range(n)], "n": list(range(o, o + n))})
             for o, n in ((0, 5), (5, 1), (6, 7), (13, 4))]
    with pa.OSFile(str(tmp_path / INDEX_METADATA), "wb") as sink, pa.ipc.new_file(sink, parts[0].schema) as w:
        for batch in parts:
            w.write_batch(batch)
    meta = RowMetadata(tmp_path, 17)
    whole = pa.Table.from_batches(parts).combine_chunks()
    rows = np.array([16, 0, 5, 5, 12, 3, 6, 13, 0])  # unordered, repeated, every part
    assert meta.take(rows).to_pydict() == whole.take(pa.array(rows)).to_pydict()
    assert meta.take(rows, ["n"]).to_pydict() == {"n": rows.tolist()}
    assert meta.take(np.array([], dtype=np.int64), ["key"]).num_rows == 0
    with pytest.raises(ReactError):
        meta.take(np.array([17]))


def test_cli_defaults_are_the_functions_defaults():
    """`react embed` / `react index build|tune|eval` read their defaults where the functions do (index.defaults)."""
    import argparse
    import inspect

    from index import cli
    from index.build import build_index
    from index.embed import embed_corpus
    from index.evaluate import evaluate_index, retune_index

    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    for argv, fn in ((["embed", "c", "--model", "m", "--out", "o"], embed_corpus),
                     (["index", "build", "e", "--out", "o"], build_index),
                     (["index", "tune", "i"], retune_index), (["index", "eval", "i"], evaluate_index)):
        args = vars(parser.parse_args(argv))
        for name, param in inspect.signature(fn).parameters.items():
            if name in args and param.default is not inspect.Parameter.empty:
                assert args[name] == param.default, (argv[:2], name)
