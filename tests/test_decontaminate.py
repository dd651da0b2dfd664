"""Decontamination (issue 17): retrieved pairs whose image is an evaluation image, or a copy of one, are dropped.

The corpus holds three copies of evaluation images -- one as it is, one
mirrored, one resized -- and seven distinct images; a Flat index with k =
every row retrieves them all for every query. The tiny test model is
untrained, so distinct images already score up to ~0.995 against each other:
the tests use threshold 0.999, which only true copies reach (the calibrated
default for a trained model is in docs/service.md). Real model, real index,
real service on loopback.
"""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import pyarrow as pa
from PIL import Image, ImageOps

from index.build import build_index
from index.embed import write_embedding_folder
from index.searcher import Searcher
from retrieval_service.exclude import embed_dataset
from retrieval_service.spec import validate_spec
from retrieval_service.task import TaskRetriever

THRESHOLD = 0.999
COPIES = {"copy-of-a0", "mirror-of-b0", "resized-a1"}


def _image(seed: int) -> Image.Image:
    pixels = (np.random.default_rng(seed).random((8, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(pixels).resize((64, 64), Image.NEAREST)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model, tiny_model_dir):
    """An ImageFolder evaluation set and an index over a corpus that contains copies of it."""
    import torch

    root = tmp_path_factory.mktemp("decontam")
    evaluation = root / "eval"
    for cls, seeds in (("a", (0, 1, 2)), ("b", (3, 4, 5))):
        (evaluation / cls).mkdir(parents=True)
        for i, s in enumerate(seeds):
            _image(s).save(evaluation / cls / f"{cls}{i}.png")
    corpus = {"copy-of-a0": _image(0), "mirror-of-b0": ImageOps.mirror(_image(3)), "resized-a1": _image(1).resize((48, 48))}
    corpus |= {f"distinct-{i}": _image(100 + i) for i in range(7)}
    img = tiny_model.encode_images(torch.stack([tiny_model.preprocess(im) for im in corpus.values()])).numpy()
    txt = np.random.default_rng(1).standard_normal(img.shape).astype(np.float32)
    keys = list(corpus)
    meta = pa.table({"key": keys, "caption": keys, "url": [f"http://corpus.invalid/{k}.png" for k in keys]})
    emb = root / "emb"
    write_embedding_folder(emb, img, txt, meta, part_size=len(keys), model=str(tiny_model_dir))
    manifest = json.loads((emb / "embed.json").read_text())
    (emb / "embed.json").write_text(json.dumps(manifest | {"model_id": tiny_model.identity}))
    build_index(emb, root / "index", factory="Flat", n_queries=5, k=5)
    return evaluation, root / "index", len(keys)


def _retrieve(index, model, spec, exclusion):
    searcher = Searcher(index)
    query = np.ones((1, searcher.dim), np.float32) / np.sqrt(searcher.dim)
    retriever = TaskRetriever(searcher, model, encode=lambda texts: np.repeat(query, len(texts), axis=0))
    return retriever.run(spec, exclusion=exclusion)


def test_copies_of_evaluation_images_are_dropped_and_counted(world, tiny_model, tmp_path):
    evaluation, index, rows = world
    exclusion = embed_dataset(tiny_model, evaluation, cache=tmp_path / "cache")
    assert exclusion.sizes == {str(evaluation): 6} and len(exclusion.vectors) == 12  # each image and its mirror
    spec = validate_spec(["a", "b"], ["{}"], k=rows, mode="t2i", dedup_threshold=None,
                         exclude=[str(evaluation)], exclude_threshold=THRESHOLD)
    result = _retrieve(index, tiny_model, spec, exclusion)
    kept = set(result.table.column("key").to_pylist())
    assert kept == {f"distinct-{i}" for i in range(7)}
    summary = result.report()["summary"]
    assert summary["excluded"] == 3 and summary["unique_pairs"] == rows and summary["rows"] == rows - 3
    assert summary["excluded_images"] == 6 and summary["exclude"] == [str(evaluation)]
    assert [c["excluded"] for c in result.report()["classes"]] == [3, 3]  # both classes had retrieved all three

    # without exclusion nothing is dropped: the filter, not the search, removed them
    plain = _retrieve(index, tiny_model, validate_spec(["a", "b"], ["{}"], k=rows, mode="t2i", dedup_threshold=None),
                      None)
    assert COPIES <= set(plain.table.column("key").to_pylist()) and plain.report()["summary"]["excluded"] == 0


def test_embeddings_are_cached_per_model_and_dataset_content(world, tiny_model, tmp_path):
    evaluation, _, _ = world
    first = embed_dataset(tiny_model, evaluation, cache=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1 and json.loads(cached[0].with_suffix(".json").read_text())["images"] == 6
    again = embed_dataset(tiny_model, evaluation, cache=tmp_path / "cache")
    np.testing.assert_array_equal(first.vectors, again.vectors)
    _image(42).save(evaluation / "a" / "extra.png")  # the dataset changed: a new cache entry, 7 images
    try:
        grown = embed_dataset(tiny_model, evaluation, cache=tmp_path / "cache")
        assert grown.sizes[str(evaluation)] == 7 and len(list((tmp_path / "cache").glob("*.npy"))) == 2
    finally:
        (evaluation / "a" / "extra.png").unlink()


def test_cli_in_process_and_bad_input(world, tiny_model_dir, tmp_path, capsys):
    from react.cli import run

    evaluation, index, rows = world
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    out = tmp_path / "subset.parquet"
    args = ["retrieve", "--index", str(index), "--model", str(tiny_model_dir), "--classes", str(classes),
            "--k", str(rows), "--no-dedup", "--out", str(out)]
    assert run(args + ["--exclude", str(evaluation), "--exclude-threshold", str(THRESHOLD)]) == 0
    from retrieval_service.task import read_subset_report

    report = read_subset_report(out)
    printed = " ".join(capsys.readouterr().err.split())  # rich wraps to the terminal
    assert report["summary"]["excluded"] == 3 and "decontamination: 3 retrieved pairs dropped" in printed
    assert run(args + ["--exclude", str(tmp_path / "missing")]) == 2
    assert "dataset not found" in capsys.readouterr().err
    assert run(args + ["--exclude", str(evaluation), "--exclude-threshold", "1.5"]) == 2
    assert "exclude_threshold must lie in (0, 1]" in capsys.readouterr().err


def test_service_exclusion_sets(world, tiny_model_dir, tmp_path):
    from retrieval_service.config import ServiceConfig
    from retrieval_service.http.app import create_app
    from service_fixtures import LiveServer

    evaluation, index, rows = world
    cfg = ServiceConfig(indices={"tiny": index}, state_dir=tmp_path / "state", models={"tiny": str(tiny_model_dir)},
                        exclude_sets={"heldout": evaluation})
    body = {"classes": ["a", "b"], "templates": ["{}"], "k": rows, "dedup_threshold": None, "inline": True,
            "exclude": ["heldout"], "exclude_threshold": THRESHOLD}
    with LiveServer(create_app(cfg)) as live:
        info = httpx.get(live.url + "/v1/indices").json()
        assert info[0]["exclude_sets"] == {"heldout": 12}
        r = httpx.post(live.url + "/v1/retrieve", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["report"]["summary"]["excluded"] == 3
        assert {row["key"] for row in r.json()["rows"]}.isdisjoint(COPIES)
        r = httpx.post(live.url + "/v1/retrieve", json=body | {"exclude": ["nope"]}, timeout=60)
        assert r.status_code == 404 and "unknown exclusion set 'nope'" in r.json()["error"]
        r = httpx.post(live.url + "/v1/retrieve", json=body | {"exclude": ["../etc"]}, timeout=60)
        assert r.status_code == 422  # names only: the service never opens a path a client sends
