"""Bounded-memory index builds: partial indices merged on disk, resumed after a
crash, built on Spark (local mode), and the bad input of each."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from index.build import build_index
from index.embed import write_embedding_folder
from index.factory import Candidate, auto_candidates, parse_factory
from index.ondisk import build_ondisk, chunk_rows, trained_checkpoint, units
from index.searcher import Searcher
from index.vectors import EmbeddingFolder
from react.cli import run
from react.errors import ReactError
from react.schemas import INDEX_JSON, img_emb_path, index_file, ivfdata_file
from test_index import clustered

FACTORY = "IVF64_HNSW32,SQ8"
N, PART = 24_000, 5_000


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ondisk") / "emb"
    img, txt = clustered(N, seed=3)
    write_embedding_folder(root, img, txt, part_size=PART, model="synthetic")
    return root


@pytest.fixture(scope="module")
def in_memory(emb_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mem") / "index"
    build_index(emb_dir, out, modality="image", factory=FACTORY, n_queries=300)
    return out


@pytest.fixture(scope="module")
def on_disk(emb_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disk") / "index"
    build_index(emb_dir, out, modality="image", factory=FACTORY, n_queries=300, on_disk=True)
    return out


def queries(emb_dir: Path, n: int = 200) -> np.ndarray:
    folder = EmbeddingFolder.open(emb_dir)
    return folder.gather("text", folder.sample_rows(n, seed=11))[1]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(x, y)) / len(x) for x, y in zip(a, b)]))


def test_on_disk_index_answers_like_the_in_memory_one(in_memory, on_disk, emb_dir):
    manifest = json.loads((on_disk / INDEX_JSON).read_text())
    entry = manifest["indices"]["image"]
    assert entry["on_disk"] is True and entry["count"] == N
    assert ivfdata_file(index_file(on_disk, "image")).stat().st_size == entry["ivfdata_bytes"] > 0
    # The codes live in the .ivfdata file, not in the index file.
    assert index_file(on_disk, "image").stat().st_size < entry["ivfdata_bytes"] / 4
    assert not list(on_disk.parent.glob(".*partials*")), "partial work left behind after success"
    q = queries(emb_dir)
    _, mem = Searcher(in_memory).search(q, 50)
    _, disk = Searcher(on_disk).search(q, 50)
    # Same sample, seed and quantizer: the same lists, so the same answers (ties aside).
    assert overlap(mem, disk) > 0.99


def test_on_disk_folder_still_opens_after_a_move(on_disk, tmp_path, emb_dir):
    moved = tmp_path / "moved"
    shutil.copytree(on_disk, moved)
    q = queries(emb_dir, 20)
    _, a = Searcher(on_disk).search(q, 10)
    _, b = Searcher(moved).search(q, 10)
    assert np.array_equal(a, b)


def test_a_part_that_disappears_mid_build_is_named_and_the_rerun_resumes(emb_dir, on_disk, tmp_path, capsys):
    copy = tmp_path / "emb"
    shutil.copytree(emb_dir, copy)
    folder = EmbeddingFolder.open(copy)  # checked while every part is there
    budget = 1 << 30
    cand = parse_factory(FACTORY, folder.dim, on_disk=True)
    work, out = tmp_path / "work", tmp_path / "out"
    trained_checkpoint(cand, folder, "image", budget, work)  # trained before the part goes away
    victim = img_emb_path(copy, folder.parts - 1)
    hidden = victim.with_suffix(".away")
    victim.rename(hidden)
    out.mkdir()
    with pytest.raises(ReactError, match=f"{victim.name}.*missing or unreadable"):
        build_ondisk(cand, folder, "image", index_file(out, "image"), budget, work)
    done = sorted(work.glob("partial_*.index"))
    assert len(done) == folder.parts - 1, "finished partial indices are kept for the rerun"
    assert not index_file(out, "image").exists()
    hidden.rename(victim)
    capsys.readouterr()
    index, _ = build_ondisk(cand, folder, "image", index_file(out, "image"), budget, work)
    said = capsys.readouterr().err
    assert "resuming" in said and f"reused {len(done)} of {folder.parts}" in said
    assert index.ntotal == N and not work.exists()
    q = queries(copy, 50)
    _, expect = Searcher(on_disk).modalities["image"].index.search(q, 20)
    index.nprobe = Searcher(on_disk).modalities["image"].index.nprobe
    _, got = index.search(q, 20)
    assert overlap(expect, got) > 0.99


def test_chunks_follow_the_budget_not_the_corpus():
    small, large = chunk_rows(1 << 30, 512, 520), chunk_rows(4 << 30, 512, 520)
    assert large == 4 * small or large == 1_000_000
    folder = EmbeddingFolder(Path("."), [250_000, 10_000], 512, None, None)
    cut = units(folder, 100_000)
    assert cut == [(0, 0, 100_000), (0, 100_000, 200_000), (0, 200_000, 250_000), (1, 0, 10_000)]


def test_auto_puts_compressed_codes_on_disk_when_they_do_not_fit():
    ten_m = auto_candidates(10_000_000, 512, 3 << 30)
    assert [c.on_disk for c in ten_m if "SQ8" in c.factory] == [True]
    assert all(not c.on_disk for c in ten_m if c.factory.endswith(",Flat") or c.factory.startswith("HNSW"))
    assert all(not c.on_disk for c in auto_candidates(100_000, 512, 8 << 30))
    assert parse_factory("IVF4096_HNSW32,SQ8", 512, 10_000_000, 3 << 30).on_disk
    with pytest.raises(ReactError, match="does not fit"):
        parse_factory("HNSW32", 512, 10_000_000, 3 << 30)


def test_spark_local_build_matches_the_single_process_build(emb_dir, on_disk, tmp_path):
    out = tmp_path / "spark"
    assert run(["index", "build", str(emb_dir), "--out", str(out), "--modality", "image", "--factory", FACTORY,
                "--n-queries", "300", "--spark-master", "local[2]"]) == 0
    single = json.loads((on_disk / INDEX_JSON).read_text())["recall"]["value"]
    spark = json.loads((out / INDEX_JSON).read_text())["recall"]["value"]
    assert abs(single - spark) <= 0.01
    q = queries(emb_dir)
    _, a = Searcher(on_disk).search(q, 50)
    _, b = Searcher(out).search(q, 50)
    assert overlap(a, b) > 0.99


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra, message", [
    (["--memory-gb", "0.00001"], "no index type fits"),
    (["--factory", "HNSW32", "--memory-gb", "0.0001"], "does not fit"),
    (["--factory", "HNSW32", "--on-disk"], "need an inverted file"),
    (["--spark-master", "spark://127.0.0.1:{port}"], "cannot reach 127.0.0.1"),
    (["--spark-master", "http://nowhere"], "expected local"),
])
def test_bad_input_is_one_line_and_leaves_nothing(emb_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "index"
    extra = [e.format(port=_closed_port()) for e in extra]
    assert run(["index", "build", str(emb_dir), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".index*"))


def test_candidate_round_trips_its_on_disk_flag():
    cand = Candidate("IVF64_HNSW32,SQ8", on_disk=True)
    assert cand.to_json()["on_disk"] is True and cand.inverted_file
