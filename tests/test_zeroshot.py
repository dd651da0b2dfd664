"""Zero-shot evaluation: metrics, dataset builders, templates, end to end on a tiny model."""
from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from downstream.tasks import metrics
from react.datasets import build_classification_dataset
from react.templates import IMAGENET_TEMPLATES, get_templates
from react.errors import ReactError
from react.schemas import CLASSES_FILE, RESULT_KEYS

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def _png(color=(200, 10, 10), size=(12, 10), fmt="PNG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def _imagefolder(root: Path, per_class: int = 2, names=("red", "green", "blue_sky")) -> Path:
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        color = COLORS.get(name.split("_")[0], (0, 0, 0))
        for i in range(per_class):
            (folder / f"{i}.png").write_bytes(_png(color))
    return root


# --- metrics ----------------------------------------------------------------------

# 4 samples, 3 classes. Sample ranks of the true label: 1, 2, 1, 3.
LOGITS = torch.tensor([[0.9, 0.1, 0.0],
                       [0.2, 0.7, 0.1],
                       [0.3, 0.6, 0.1],
                       [0.5, 0.4, 0.1]])
LABELS = torch.tensor([0, 0, 1, 2])
PREDS = LOGITS.argmax(1)  # [0, 1, 1, 0]


def test_topk_accuracy_known_values():
    assert metrics.topk_accuracy(LOGITS, LABELS, 1) == pytest.approx(0.5)
    assert metrics.topk_accuracy(LOGITS, LABELS, 2) == pytest.approx(0.75)
    assert metrics.topk_accuracy(LOGITS, LABELS, 3) == pytest.approx(1.0)
    # k beyond the class count is clamped, so top-5 on 3 classes is 1.
    assert metrics.topk_accuracy(LOGITS, LABELS, 5) == pytest.approx(1.0)
    # numpy and lists are accepted too.
    assert metrics.topk_accuracy(LOGITS.numpy(), LABELS.tolist(), 1) == pytest.approx(0.5)


def test_recall_metrics_known_values_with_a_zero_class():
    assert metrics.per_class_recall(PREDS, LABELS, 3) == {0: 0.5, 1: 1.0, 2: 0.0}
    assert metrics.per_class_recall(PREDS, LABELS, 3, ["a", "b", "c"]) == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert metrics.mean_per_class_recall(PREDS, LABELS, 3) == pytest.approx(0.5)
    # A class absent from the labels neither counts nor appears.
    assert metrics.mean_per_class_recall(PREDS, LABELS, 4) == pytest.approx(0.5)
    assert 3 not in metrics.per_class_recall(PREDS, LABELS, 4)


def test_metrics_agree_with_scikit_learn_on_random_predictions():
    from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 7, size=200)
        logits = rng.normal(size=(200, 7))
        preds = logits.argmax(1)
        assert metrics.mean_per_class_recall(preds, labels, 7) == pytest.approx(
            balanced_accuracy_score(labels, preds))
        for k in (1, 3):
            assert metrics.topk_accuracy(logits, labels, k) == pytest.approx(
                top_k_accuracy_score(labels, logits, k=k, labels=range(7)))


def test_confusion_matrix_rows_are_true_labels():
    cm = metrics.confusion_matrix(PREDS, LABELS, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError):
        metrics.topk_accuracy(LOGITS, LABELS[:3], 1)
    with pytest.raises(ValueError):
        metrics.topk_accuracy(LOGITS, LABELS, 0)
    with pytest.raises(ValueError):
        metrics.confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)


# --- templates ----------------------------------------------------------------------

def test_template_sets():
    assert len(IMAGENET_TEMPLATES) == 80 == len(set(IMAGENET_TEMPLATES))
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert get_templates("simple")[0] == "a photo of a {}."
    assert len(get_templates(None)) == 80


def test_template_file_accepts_both_placeholders(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a photo of a {c}.\n\n# comment\nan {} drawing.\n")
    assert get_templates(str(f)) == ["a photo of a {}.", "an {} drawing."]
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder here\n")
    with pytest.raises(ReactError, match="placeholder"):
        get_templates(str(bad))
    with pytest.raises(ReactError, match="unknown templates"):
        get_templates("nonesuch")


# --- datasets: ImageFolder ----------------------------------------------------------

def test_imagefolder(tmp_path):
    root = _imagefolder(tmp_path / "colors")
    (root / "red" / "notes.txt").write_text("not an image")
    (root / "red" / ".hidden.png").write_bytes(_png())
    ds = build_classification_dataset(root)
    assert ds.classnames == ["blue sky", "green", "red"]
    assert ds.templates is None and ds.name == "colors"
    assert len(ds) == 6
    image, label = ds[0]
    assert image.mode == "RGB" and label == 0


def test_imagefolder_splits(tmp_path):
    root = tmp_path / "split"
    _imagefolder(root / "train", per_class=3)
    _imagefolder(root / "val", per_class=1)
    assert len(build_classification_dataset(root, "train")) == 9
    # "test" falls back to "val", as for ImageNet.
    assert len(build_classification_dataset(root, "test")) == 3
    only_train = tmp_path / "only_train"
    _imagefolder(only_train / "train")
    with pytest.raises(ReactError, match="no 'test' split"):
        build_classification_dataset(only_train, "test")


def test_empty_and_unknown_paths(tmp_path):
    with pytest.raises(ReactError, match="no classes found"):
        build_classification_dataset(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ReactError, match="no classes found"):
        build_classification_dataset(tmp_path)
    with pytest.raises(ReactError, match="dataset not found"):
        build_classification_dataset(tmp_path / "missing")
    odd = tmp_path / "file.bin"
    odd.write_bytes(b"x")
    with pytest.raises(ReactError, match="unrecognised dataset"):
        build_classification_dataset(odd)


def test_corrupt_image_names_the_file(tmp_path):
    root = _imagefolder(tmp_path / "c", per_class=1)
    bad = root / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    ds = build_classification_dataset(root)
    index = ds.paths.index(bad)
    with pytest.raises(ReactError, match="broken.jpg"):
        ds[index]


# --- datasets: CLIP_benchmark webdataset ---------------------------------------------

def _wds(root: Path, samples: list[tuple[str, str, bytes, bytes]], compress: bool = False) -> Path:
    """samples: (key, image ext, image bytes, cls bytes)."""
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("red\ngreen\nblue\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na {c} thing.\n")
    shard = root / "test" / ("0.tar.gz" if compress else "0.tar")
    with tarfile.open(shard, "w:gz" if compress else "w") as tf:
        for key, ext, image, cls in samples:
            for suffix, data in ((ext, image), ("cls", cls)):
                if data is None:
                    continue
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return root


def _color_samples() -> list[tuple[str, str, bytes, bytes]]:
    return [(f"s{i}", ext, _png(COLORS[c], fmt=fmt), str(label).encode())
            for i, (c, label, ext, fmt) in enumerate([("red", 0, "png", "PNG"), ("green", 1, "webp", "WEBP"),
                                                      ("blue", 2, "jpg", "JPEG"), ("red", 0, "png", "PNG")])]


@pytest.mark.parametrize("compress", [False, True])
def test_clip_benchmark_wds(tmp_path, compress):
    ds = build_classification_dataset(_wds(tmp_path / "wds_colors", _color_samples(), compress))
    assert ds.name == "colors"
    assert ds.classnames == ["red", "green", "blue"]
    assert ds.templates == ["a photo of a {}.", "a {} thing."]
    assert ds.labels == [0, 1, 2, 0]
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.mode == "RGB" and image.size == (12, 10)
        assert max(image.getpixel((0, 0))) > 150  # decoded the right colour, not garbage


def test_clip_benchmark_wds_written_by_webdataset(tmp_path):
    import webdataset as wds

    root = tmp_path / "wds_tw"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("red\ngreen\n")
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        sink.write({"__key__": "a", "png": _png(COLORS["red"]), "cls": b"0"})
        sink.write({"__key__": "b", "png": _png(COLORS["green"]), "cls": b"1"})
    ds = build_classification_dataset(root)
    assert ds.templates is None and ds.labels == [0, 1]
    assert ds[1][0].getpixel((0, 0))[1] > 150


def test_clip_benchmark_wds_bad_samples(tmp_path):
    samples = _color_samples()
    samples[1] = ("s1", "png", b"garbage", b"1")
    ds = build_classification_dataset(_wds(tmp_path / "a", samples))
    with pytest.raises(ReactError, match=r"0\.tar:s1\.png"):
        ds[1]
    with pytest.raises(ReactError, match="outside the 3 classes"):
        build_classification_dataset(_wds(tmp_path / "b", [("s0", "png", _png(), b"7")]))
    with pytest.raises(ReactError, match="no .cls label"):
        build_classification_dataset(_wds(tmp_path / "c", [("s0", "png", _png(), None)]))
    with pytest.raises(ReactError, match="non-integer"):
        build_classification_dataset(_wds(tmp_path / "d", [("s0", "png", _png(), b"red")]))
    with pytest.raises(ReactError, match="no 'train' split"):
        build_classification_dataset(tmp_path / "a", "train")


# --- datasets: the embedded corpus form -----------------------------------------------

def _embedded(root: Path, labels: list[str | None], classes: str = "green\nred\n") -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i, label in enumerate(labels):
        rel = f"images/{i}.png"
        (root / rel).write_bytes(_png(COLORS.get(label or "red", (0, 0, 0))))
        rows.append({"key": f"k{i}", "image_path": rel, "caption": f"a {label} stamp.", "label": label})
    pq.write_table(pa.Table.from_pylist(rows), root / "downstream.parquet")
    (root / CLASSES_FILE).write_text(classes)
    return root


def test_embedded_corpus(tmp_path):
    root = _embedded(tmp_path / "corpus", ["red", "green", "red", "green"])
    ds = build_classification_dataset(root)  # the test half: one image per class (tests/test_protocol.py)
    assert ds.classnames == ["green", "red"]  # the classes file sets the order
    assert sorted(ds.labels) == [0, 1] and len(build_classification_dataset(root, "val")) == 2
    red = ds.labels.index(1)
    assert ds[red][0].getpixel((0, 0))[0] > 150
    # The parquet file itself names the same dataset.
    assert build_classification_dataset(root / "downstream.parquet").paths == ds.paths


def test_embedded_corpus_bad_labels(tmp_path):
    with pytest.raises(ReactError, match="'purple'"):
        build_classification_dataset(_embedded(tmp_path / "a", ["red", "purple"]))
    with pytest.raises(ReactError, match="no label for key 'k1'"):
        build_classification_dataset(_embedded(tmp_path / "b", ["red", None]))
    root = _embedded(tmp_path / "c", ["red"])
    pq.write_table(pa.table({"key": ["k0"], "caption": ["x"]}), root / "downstream.parquet")
    with pytest.raises(ReactError, match="missing column"):
        build_classification_dataset(root)


# --- end to end on a tiny native-text open_clip model -------------------------------------


def _check_result(result: dict, classnames: list[str], n: int) -> None:
    assert set(RESULT_KEYS) <= set(result)
    assert result["task"] == "zeroshot"
    m = result["metrics"]
    assert m["num_images"] == n and m["num_classes"] == len(classnames)
    for key in ("top1", "top5", "mean_per_class_recall"):
        assert 0.0 <= m[key] <= 1.0
    assert m["top1"] <= m["top5"]
    assert set(result["per_class"]) == set(classnames)
    assert all(0.0 <= v <= 1.0 for v in result["per_class"].values())
    json.dumps(result)  # serialisable as is


def test_zeroshot_end_to_end(tiny_model, tmp_path):
    from downstream import evaluate_zeroshot

    ds = build_classification_dataset(_imagefolder(tmp_path / "colors", per_class=3))
    result = evaluate_zeroshot(tiny_model, ds, templates="simple", batch_size=4)
    _check_result(result, ds.classnames, 9)
    assert result["model"] == tiny_model.name and result["dataset"] == "colors"
    # 3 classes: top-5 is clamped to top-3, which always hits.
    assert result["metrics"]["top5"] == 1.0


def test_zeroshot_uses_dataset_templates_and_workers(tiny_model, tmp_path):
    from downstream.tasks.zeroshot import evaluate_zeroshot, resolve_templates

    ds = build_classification_dataset(_wds(tmp_path / "wds_colors", _color_samples()))
    assert resolve_templates(ds, None)[0] == ["a photo of a {}.", "a {} thing."]
    assert resolve_templates(ds, "simple")[0] == get_templates("simple")
    result = evaluate_zeroshot(tiny_model, ds, batch_size=3, num_workers=1)
    _check_result(result, ds.classnames, 4)


@pytest.mark.parametrize("workers", [0, 1])
def test_zeroshot_corrupt_image_is_one_line_error(tiny_model, tmp_path, workers):
    from downstream.tasks.zeroshot import evaluate_zeroshot

    root = _imagefolder(tmp_path / "c", per_class=1)
    (root / "green" / "zz_broken.png").write_bytes(b"not a png")
    ds = build_classification_dataset(root)
    with pytest.raises(ReactError, match="zz_broken.png") as info:
        evaluate_zeroshot(tiny_model, ds, templates="simple", batch_size=2, num_workers=workers)
    assert "\n" not in str(info.value)


def test_cli_eval_zeroshot_writes_result(tiny_model_dir, tmp_path, capsys):
    from downstream.cli import add_eval_parser

    parser = argparse.ArgumentParser(prog="react")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    root = _imagefolder(tmp_path / "colors", per_class=2)
    out = tmp_path / "results" / "zs.json"
    args = parser.parse_args(["eval", "zeroshot", "--model", str(tiny_model_dir), "--dataset", str(root),
                              "--templates", "simple", "--device", "cpu", "--batch-size", "4",
                              "--out", str(out)])
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    _check_result(result, ["blue sky", "green", "red"], 6)
    assert [p.name for p in out.parent.iterdir()] == ["zs.json"]  # no temp file left behind
    printed = capsys.readouterr().out
    assert "top-1" in printed and "worst classes" in printed


def test_cli_rejects_bad_input_before_loading(tmp_path):
    from downstream.cli import add_eval_parser

    parser = argparse.ArgumentParser(prog="react")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    base = ["eval", "zeroshot", "--model", str(tmp_path / "no_model"), "--dataset", str(tmp_path)]
    for extra, message in ((["--templates", "nonesuch"], "unknown templates"),
                           (["--device", "tpu9"], "unknown --device"),
                           (["--batch-size", "0"], "batch-size"),
                           ([], "no classes found")):
        args = parser.parse_args(base + extra)
        with pytest.raises(ReactError, match=message):
            args.func(args)


def test_chunked_class_embeddings_match_one_pass(tiny_model):
    from downstream.tasks.zeroshot import class_embeddings

    names, prompts = ["red", "green", "blue", "hot dog", "cat"], get_templates("simple")
    whole = tiny_model.class_embeddings(names, prompts)
    chunked = class_embeddings(tiny_model, names, prompts, prompts_per_step=len(prompts) * 2)
    assert torch.allclose(whole, chunked, atol=1e-5)
