"""``react download --safety``: the image safety filter, off by default.

Real img2dataset downloads from the project's loopback web
(download/loopback.py) of a small corpus whose subset carries LAION's
``punsafe``/``NSFW`` columns. The classifier path runs with a tiny
deterministic scorer (a red image is "unsafe") registered through the same
interface as the packaged one, and -- when the ``safety`` extra is installed --
with NudeNet's packaged ONNX detector itself, on ordinary images (the suite
ships no unsafe image: what the real model catches is NudeNet's to test).
"""
from __future__ import annotations

import importlib.util
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from download.loopback import serve_corpus
from react.cli import run
from react.schemas import DOWNLOAD_MANIFEST, SAFETY_DROPPED_FILE, SAFETY_DROPPED_STATUS, SHARD_SIZES_FILE

HOST = "http://corpus.react.invalid"
FAST = ["--processes", "1", "--threads", "4", "--timeout", "5", "--retries", "0", "--shard-size", "5"]
COLORS = {"red": (210, 25, 25), "blue": (30, 40, 200), "green": (30, 190, 40)}
# key, colour, punsafe, NSFW, class -- and what each mode makes of it
ROWS = [
    ("k0", "red", 0.9, "NSFW", "cat"),          # metadata: punsafe; classifier: red
    ("k1", "blue", 0.1, "UNLIKELY", "cat"),
    ("k2", "green", 0.7, "UNLIKELY", "dog"),    # metadata: punsafe
    ("k3", "red", 0.2, "NSFW", "dog"),          # metadata: the NSFW label; classifier: red
    ("k4", "blue", 0.3, "UNSURE", "dog"),       # strict: UNSURE
    ("k5", "green", None, None, "bird"),        # strict: unscored
    ("k6", "blue", 0.5, "UNLIKELY", "bird"),    # at --max-punsafe, not above: kept
    ("k7", "red", 0.05, "unlikely", "bird"),    # labels are read case-blind; classifier: red
    ("k8", "green", 0.0, "UNLIKELY", "cat"),
    ("k9", "blue", 0.45, "UNSURE", "cat"),      # strict: UNSURE
]
GONE = ("k99", None, 0.1, "UNLIKELY", "bird")   # a url that 404s
ALL = [r[0] for r in ROWS]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety") / "corpus"
    (root / "images").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for i, (key, color, *_rest) in enumerate(ROWS):
        pixels = np.clip(np.array(COLORS[color]) + rng.integers(-20, 20, (120 + 9 * i, 160, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / f"{key}.jpg", quality=90)
        rows.append({"key": key, "url": f"{HOST}/images/{key}.jpg", "caption": f"a {color} picture",
                     "image_path": f"images/{key}.jpg"})
    pq.write_table(pa.Table.from_pylist(rows), root / "retrieval.parquet")
    return root


def _subset(path: Path, rows=(*ROWS, GONE), punsafe=True, nsfw=True) -> Path:
    columns = {
        "key": [r[0] for r in rows], "url": [f"{HOST}/images/{r[0]}.jpg" for r in rows],
        "caption": [f"picture {r[0]}" for r in rows],
        "similarity": pa.array([0.9 - i / 100 for i in range(len(rows))], pa.float32()),
        "classes": pa.array([[r[4]] for r in rows], pa.list_(pa.string())),
    }
    if punsafe:
        columns["punsafe"] = pa.array([r[2] for r in rows], pa.float64())
    if nsfw:
        columns["NSFW"] = pa.array([r[3] for r in rows], pa.string())
    pq.write_table(pa.table(columns), path)
    return path


def _download(subset: Path, out: Path, *extra: str) -> int:
    return run(["download", str(subset), "--out", str(out), *FAST, *extra])


def _summary(out: Path) -> dict:
    return json.loads((out / DOWNLOAD_MANIFEST).read_text())["summary"]


def _shard_keys(out: Path) -> set[str]:
    """The subset keys of every sample in the tars."""
    keys = set()
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    keys.add(json.loads(tf.extractfile(m).read())["subset_key"])
    return keys


def _said(capsys) -> str:
    """What the command printed to the terminal, rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def _red_scorer():
    """Deterministic: the share of strongly red pixels is the probability unsafe."""
    def score(images: list[bytes]) -> list[tuple[float, str]]:
        out = []
        for data in images:
            a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
            red = (a[..., 0] > 150) & (a[..., 1] < 100) & (a[..., 2] < 100)
            out.append((float(red.mean()), "RED"))
        return out
    return score


# --- off by default ----------------------------------------------------------------------------

def test_off_by_default_downloads_everything_and_says_what_it_would_check(corpus, tmp_path, capsys):
    subset = _subset(tmp_path / "subset.parquet")
    out = tmp_path / "shards"
    with serve_corpus(corpus) as web:
        assert _download(subset, out) == 0
    s = _summary(out)
    assert (s["requested"], s["downloaded"], s["failed"]) == (11, 10, 1) and web.served == 10
    assert s["safety"] == {"mode": "off", "columns": ["punsafe", "NSFW"], "subset_rows": 11, "would_check": 10}
    assert _shard_keys(out) == set(ALL)
    assert not (out / SAFETY_DROPPED_FILE).exists()
    assert "safety filter: off (10 rows carry punsafe/NSFW: --safety metadata would check them)" in _said(capsys)
    assert json.loads((out / DOWNLOAD_MANIFEST).read_text())["layout"]["safety"] is None


# --- metadata: dropped before img2dataset fetches them ---------------------------------------------

def test_metadata_drops_rows_before_they_are_fetched(corpus, tmp_path, capsys):
    subset = _subset(tmp_path / "subset.parquet")
    out = tmp_path / "shards"
    with serve_corpus(corpus) as web:
        assert _download(subset, out, "--safety", "metadata") == 0
    dropped = {"k0", "k2", "k3"}
    assert web.served == 7  # the 7 kept images that exist; k99 404s; the dropped three are never asked for
    assert _shard_keys(out) == set(ALL) - dropped
    s = _summary(out)
    assert (s["requested"], s["downloaded"], s["failed"]) == (8, 7, 1)  # over the rows the filter kept
    safety = s["safety"]
    assert (safety["mode"], safety["max_punsafe"], safety["strict"]) == ("metadata", 0.5, False)
    assert (safety["subset_rows"], safety["checked"], safety["dropped"]) == (11, 11, 3)
    assert safety["dropped_by_reason"] == {"punsafe": 2, "nsfw_label": 1, "unscored": 0, "classifier": 0}
    assert safety["per_class"] == {"dog": {"checked": 3, "dropped": 2}, "cat": {"checked": 4, "dropped": 1},
                                   "bird": {"checked": 4, "dropped": 0}}
    assert s["per_class"]["dog"] == {"requested": 1, "downloaded": 1}
    assert safety["warnings"] == ["class 'dog' lost most of its checked images to the safety filter: 2 of 3"]
    record = pq.read_table(out / SAFETY_DROPPED_FILE).to_pylist()
    assert [(r["subset_key"], r["reason"], r["score"], r["label"], r["classes"]) for r in record] == [
        ("k0", "punsafe", 0.9, "NSFW", ["cat"]), ("k2", "punsafe", 0.7, "UNLIKELY", ["dog"]),
        ("k3", "nsfw_label", 0.2, "NSFW", ["dog"])]
    assert record[0]["url"] == f"{HOST}/images/k0.jpg"
    assert json.loads((out / DOWNLOAD_MANIFEST).read_text())["layout"]["safety"] == \
        {"mode": "metadata", "max_punsafe": 0.5, "strict": False}
    assert "11 checked, 3 dropped (2 punsafe, 1 nsfw_label)" in _said(capsys)
    # The same filter resumes; another setting is refused (the shards hold what the first let through).
    with serve_corpus(corpus) as web:
        assert _download(subset, out, "--safety", "metadata", "--resume") == 0
        assert web.served == 0
        assert _download(subset, out, "--resume") == 2
    assert "safety" in capsys.readouterr().err.strip().splitlines()[-1]


def test_strict_and_threshold_on_the_metadata(tmp_path):
    from download.inputs import read_subset
    from download.options import DownloadOptions
    from download.safety import metadata_drops

    sub = read_subset(_subset(tmp_path / "s.parquet"))
    strict = metadata_drops(sub, DownloadOptions(safety="metadata", safety_strict=True))
    assert [(d.key, d.reason) for d in strict] == [("k0", "punsafe"), ("k2", "punsafe"), ("k3", "nsfw_label"),
                                                   ("k4", "nsfw_label"), ("k5", "unscored"), ("k9", "nsfw_label")]
    low = metadata_drops(sub, DownloadOptions(safety="metadata", max_punsafe=0.15))
    assert [d.key for d in low] == ["k0", "k2", "k3", "k4", "k6", "k9"]  # NSFW label or punsafe > 0.15
    only_label = read_subset(_subset(tmp_path / "n.parquet", punsafe=False))
    assert [d.key for d in metadata_drops(only_label, DownloadOptions(safety="metadata"))] == ["k0", "k3"]


@pytest.mark.parametrize("case, extra, message", [
    ("punsafe", [], "punsafe 1.7 for key 'k1' is outside [0, 1]"),
    ("label", [], "NSFW label 'MAYBE' for key 'k1' is not one of UNLIKELY, UNSURE, NSFW"),
    ("text-punsafe", [], "column punsafe must hold numbers"),
    ("none", [], "has no punsafe or NSFW column (use --safety classifier"),
    ("ok", ["--max-punsafe", "1.5"], "--max-punsafe must be in [0, 1], got 1.5"),
    ("ok", ["--safety", "off", "--safety-strict"], "--safety-strict needs --safety metadata"),
    ("ok", ["--safety", "classifier", "--safety-scorer", "nosuch"], "unknown scorer 'nosuch'"),
])
def test_bad_values_fail_with_one_line(case, extra, message, tmp_path, capsys):
    rows = list(ROWS)
    if case == "punsafe":
        rows[1] = ("k1", "blue", 1.7, "UNLIKELY", "cat")
    if case == "label":
        rows[1] = ("k1", "blue", 0.1, "MAYBE", "cat")
    subset = _subset(tmp_path / "s.parquet", rows, punsafe=case not in ("none", "text-punsafe"), nsfw=case != "none")
    if case == "text-punsafe":
        pq.write_table(pq.read_table(subset).append_column("punsafe", pa.array(["0.1"] * len(rows))), subset)
    args = extra if "--safety" in extra else ["--safety", "metadata", *extra]
    assert _download(subset, tmp_path / "shards", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "shards").exists()  # refused before any work


def test_missing_extra_names_it(monkeypatch):
    import sys

    from download.safety_classifier import load_scorer
    from react.errors import ReactError

    monkeypatch.setitem(sys.modules, "nudenet", None)  # what an interpreter without the package sees
    with pytest.raises(ReactError, match=r"needs the safety extra \(pip install 'react-clip\[safety\]'\)"):
        load_scorer("nudenet")


# --- classifier: scored after download, taken out of the shards ------------------------------------

def test_classifier_takes_unsafe_images_out_of_the_shards(corpus, tmp_path, capsys):
    from download.safety_classifier import SCORERS, register_scorer
    from download.shardsdir import check_shard

    register_scorer("test-red", _red_scorer)
    try:
        subset = _subset(tmp_path / "subset.parquet", punsafe=False, nsfw=False)  # a corpus without the columns
        out = tmp_path / "shards"
        args = ["--safety", "classifier", "--safety-scorer", "test-red"]
        with serve_corpus(corpus) as web:
            assert _download(subset, out, *args) == 0
            assert web.served == 10
        dropped = {"k0", "k3", "k7"}
        assert _shard_keys(out) == set(ALL) - dropped
        s = _summary(out)
        assert (s["requested"], s["downloaded"], s["failed"]) == (8, 7, 1)
        safety = s["safety"]
        assert (safety["mode"], safety["scorer"], safety["checked"], safety["dropped"]) == \
            ("classifier", "test-red", 10, 3)
        assert safety["dropped_by_reason"]["classifier"] == 3
        assert {c: v["dropped"] for c, v in safety["per_class"].items()} == {"bird": 1, "cat": 1, "dog": 1}
        record = {r["subset_key"]: r for r in pq.read_table(out / SAFETY_DROPPED_FILE).to_pylist()}
        assert set(record) == dropped and all(r["reason"] == "classifier" and r["score"] > 0.9
                                              and r["label"] == "RED" for r in record.values())
        # Each shard's files agree after the rewrite: the resume check passes them, sizes.json counts what is in.
        sizes = json.loads((out / SHARD_SIZES_FILE).read_text())
        statuses = {}
        for shard in (0, 1, 2):
            info = check_shard(out, shard)
            assert sizes[f"{shard:05d}.tar"] == info.successes
            t = pq.read_table(out / f"{shard:05d}.parquet")
            statuses.update(zip(t.column("subset_key").to_pylist(), t.column("status").to_pylist()))
        assert {k for k, v in statuses.items() if v == SAFETY_DROPPED_STATUS} == dropped
        assert sum(sizes.values()) == 7
        # The shards read back as a corpus without the dropped images.
        from index.readers import read_corpus

        assert len(read_corpus(out).metadata) == 7
        # A resume re-downloads nothing and scores nothing again; --retry-failed
        # re-attempts the 404 only, never a dropped image.
        calls = []
        register_scorer("test-red", lambda: (lambda images: calls.append(len(images)) or _red_scorer()(images)))
        with serve_corpus(corpus) as web:
            assert _download(subset, out, *args, "--resume") == 0
            assert _download(subset, out, *args, "--retry-failed") == 0
            assert (web.served, web.not_found) == (0, 1)
        assert calls == [] and _summary(out)["safety"]["dropped"] == 3 and _shard_keys(out) == set(ALL) - dropped
    finally:
        SCORERS.pop("test-red", None)
    assert "10 checked, 3 dropped (3 classifier)" in _said(capsys)


def test_a_failing_scorer_is_one_line_naming_the_shard(corpus, tmp_path, capsys):
    from download.safety_classifier import SCORERS, register_scorer

    def broken():
        def score(images):
            raise RuntimeError("model exploded\nwith a traceback-ish second line")
        return score

    register_scorer("test-broken", broken)
    try:
        subset = _subset(tmp_path / "subset.parquet", punsafe=False, nsfw=False)
        with serve_corpus(corpus):
            assert _download(subset, tmp_path / "shards", "--safety", "classifier",
                             "--safety-scorer", "test-broken") == 2
    finally:
        SCORERS.pop("test-broken", None)
    err = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(r"error: --safety-scorer test-broken failed on 00000\.tar \(samples \d+\.\.\d+\): "
                        r"RuntimeError: model exploded", err[-1]), err[-1]
    # nothing half-filtered is passed off as done: the manifest is not complete
    assert json.loads((tmp_path / "shards" / DOWNLOAD_MANIFEST).read_text())["complete"] is False


@pytest.mark.skipif(importlib.util.find_spec("nudenet") is None,
                    reason="the safety extra is not installed (pip install 'react-clip[safety]'): "
                           "NudeNet's packaged ONNX detector is not here to run")
def test_classifier_with_the_packaged_nudenet_model(corpus, tmp_path):
    subset = _subset(tmp_path / "subset.parquet", punsafe=False, nsfw=False)
    out = tmp_path / "shards"
    with serve_corpus(corpus):
        assert _download(subset, out, "--safety", "classifier") == 0
    safety = _summary(out)["safety"]
    # plain colour fields: scored, none unsafe, every image kept
    assert (safety["scorer"], safety["checked"], safety["dropped"]) == ("nudenet", 10, 0)
    assert _shard_keys(out) == set(ALL)
    stats = json.loads((out / "00000_stats.json").read_text())["react_safety"]
    assert stats == {"scorer": "nudenet", "max_score": 0.5, "checked": 5, "dropped": []}


# --- the columns reach the subset from the corpus metadata ----------------------------------------

def test_retrieve_carries_the_corpus_safety_columns(tiny_model, tiny_model_dir, tmp_path):
    """LAION-style metadata with punsafe/NSFW -> index -> react retrieve: the subset
    carries both as they are, and --safety metadata reads them from there."""
    from service_fixtures import CLASSES, TEMPLATES, build_task_index

    from download.inputs import read_subset
    from download.options import DownloadOptions
    from download.safety import metadata_drops
    from index.build import build_index

    build_task_index(tmp_path, tiny_model, tiny_model_dir)
    unsafe = {"catdog": (0.93, "NSFW"), "dog": (0.2, "UNSURE"), "car": (float("nan"), None)}
    for part in sorted((tmp_path / "emb" / "metadata").glob("*.parquet")):
        t = pq.read_table(part)
        keys = t.column("key").to_pylist()
        t = t.append_column("punsafe", pa.array([unsafe.get(k, (0.01, ""))[0] for k in keys], pa.float64()))
        t = t.append_column("NSFW", pa.array([unsafe.get(k, (0, "UNLIKELY"))[1] for k in keys], pa.string()))
        pq.write_table(t, part)
    build_index(tmp_path / "emb", tmp_path / "index2", n_queries=20, k=10)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    subset = tmp_path / "subset.parquet"
    assert run(["retrieve", "--index", str(tmp_path / "index2"), "--classes", str(tmp_path / "classes.txt"),
                "--templates", str(tmp_path / "templates.txt"), "--k", "5", "--threshold", "0",
                "--out", str(subset)]) == 0
    table = pq.read_table(subset)
    assert table.schema.field("punsafe").type == pa.float64() and table.schema.field("NSFW").type == pa.string()
    got = {r["key"]: (r["punsafe"], r["NSFW"]) for r in table.to_pylist()}
    assert got == {"cat": (0.01, "UNLIKELY"), "catdog": (0.93, "NSFW"), "dog": (0.2, "UNSURE"),
                   "car": (None, None)}  # a NaN score arrives as null (JSON has no NaN)
    drops = metadata_drops(read_subset(subset), DownloadOptions(safety="metadata", safety_strict=True))
    assert sorted((d.key, d.reason) for d in drops) == [("car", "unscored"), ("catdog", "punsafe"),
                                                         ("dog", "nsfw_label")]
