"""Image-text retrieval: recall@k on hand-computed matrices and against a naive
top-k implementation, the three dataset forms as real files, bad input, and
the command end to end with the tiny model."""
from __future__ import annotations

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

from downstream.data.captioned import build_captioned_dataset
from downstream.tasks.retrieval import evaluate_retrieval, recall_at_k
from react.errors import ReactError
from react.schemas import CLASSES_FILE, RESULT_KEYS
from cli_helpers import eval_parser

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}

# --- recall@k ---------------------------------------------------------------------------


def test_recall_on_a_hand_computed_3x3():
    # Rows images, columns captions; caption j belongs to image j.
    sim = torch.tensor([[0.9, 0.1, 0.3],
                        [0.2, 0.5, 0.8],
                        [0.4, 0.6, 0.7]])
    r = recall_at_k(sim, [0, 1, 2], ks=(1, 2, 5))
    # image->text: image 1's caption is beaten by caption 2 (0.8 > 0.5); others rank first.
    assert r["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert r["image_to_text_R@2"] == 1.0 and r["image_to_text_R@5"] == 1.0
    # text->image: caption 1 loses to image 2 (0.6 > 0.5), caption 2 to image 1 (0.8 > 0.7).
    assert r["text_to_image_R@1"] == pytest.approx(1 / 3)
    assert r["text_to_image_R@2"] == 1.0


def test_recall_with_several_captions_per_image():
    # Image 0 owns captions 0 and 1, image 1 owns 2 and 3.
    sim = torch.tensor([[0.1, 0.6, 0.7, 0.2],
                        [0.5, 0.4, 0.3, 0.9]])
    r = recall_at_k(sim, [0, 0, 1, 1], ks=(1, 2))
    # Image 0's best own caption (0.6) is beaten by caption 2 (0.7); image 1's (0.9) wins.
    assert r["image_to_text_R@1"] == 0.5 and r["image_to_text_R@2"] == 1.0
    # Captions 0 and 2 prefer the other image; 1 and 3 their own.
    assert r["text_to_image_R@1"] == 0.5 and r["text_to_image_R@2"] == 1.0


def test_ties_count_against_the_model():
    r = recall_at_k(torch.zeros(3, 3), [0, 1, 2], ks=(1, 3))
    assert r["image_to_text_R@1"] == 0.0 and r["text_to_image_R@1"] == 0.0
    assert r["image_to_text_R@3"] == 1.0 and r["text_to_image_R@3"] == 1.0
    # A rival within float noise of the right answer is a tie too.
    near = torch.eye(2) * 1e-8
    assert recall_at_k(near, [0, 1], ks=(1,))["image_to_text_R@1"] == 0.0


def _naive(sim: np.ndarray, owner: np.ndarray, k: int) -> tuple[float, float]:
    """Recall@k the obvious way: sort, take the top k, look for a right answer."""
    i2t = [any(owner[j] == i for j in np.argsort(-sim[i])[:k]) for i in range(sim.shape[0])]
    t2i = [owner[j] in np.argsort(-sim[:, j])[:k] for j in range(sim.shape[1])]
    return float(np.mean(i2t)), float(np.mean(t2i))


def test_recall_matches_a_naive_implementation():
    rng = np.random.default_rng(0)
    owner = np.repeat(np.arange(40), rng.integers(1, 4, size=40))  # 1-3 captions per image
    sim = rng.standard_normal((40, len(owner))).astype(np.float32)  # distinct scores: no ties
    sim[owner, np.arange(len(owner))] += 1.5  # better than chance, not perfect
    r = recall_at_k(torch.from_numpy(sim), owner, ks=(1, 5, 10))
    for k in (1, 5, 10):
        i2t, t2i = _naive(sim, owner, k)
        assert r[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert r[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    assert 0 < r["image_to_text_R@1"] < 1


# --- dataset forms ------------------------------------------------------------------------

def _png(color, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _embedded(root: Path, captions: list[str | None]) -> Path:
    (root / "images").mkdir(parents=True)
    names = list(COLORS)
    rows = []
    for i, caption in enumerate(captions):
        label = names[i % 3]
        rel = f"images/{i}.png"
        (root / rel).write_bytes(_png(COLORS[label]))
        rows.append({"key": f"k{i}", "image_path": rel, "caption": caption, "label": label})
    pq.write_table(pa.Table.from_pylist(rows), root / "downstream.parquet")
    (root / CLASSES_FILE).write_text("\n".join(names) + "\n")
    return root


def _karpathy(root: Path, entries: list[dict], name: str = "dataset_flickr30k.json",
              write_images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for e in entries:
        if write_images:
            path = root / "imgs" / e.get("filepath", "") / e["filename"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_png(COLORS[e["filename"].split(".")[0].rstrip("0123456789")]))
    (root / name).write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return root / name


def _karpathy_entries() -> list[dict]:
    def entry(fname, split, *caps, filepath=None):
        e = {"filename": fname, "split": split, "sentences": [{"raw": c, "tokens": c.split()} for c in caps]}
        if filepath:
            e["filepath"] = filepath
        return e

    return [entry("red1.png", "test", "a red square", "something red"),
            entry("green1.png", "test", "a green square", filepath="val2014"),
            entry("blue1.png", "train", "a blue square"),
            entry("blue2.png", "restval", "blue again")]


def _wds(root: Path, samples: list[tuple[str, bytes | None, bytes | None]], split: str = "test") -> Path:
    (root / split).mkdir(parents=True)
    with tarfile.open(root / split / "0.tar", "w") as tf:
        for key, image, txt in samples:
            for ext, data in (("png", image), ("txt", txt)):
                if data is not None:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return root


def test_embedded_form(tmp_path):
    ds = build_captioned_dataset(_embedded(tmp_path / "corpus", ["a red one", "a green one", "a blue one"]))
    assert ds.captions == [["a red one"], ["a green one"], ["a blue one"]]
    assert ds.labels == [0, 1, 2] and ds.classnames == ["red", "green", "blue"]
    image, index = ds[1]
    assert index == 1 and image.getpixel((0, 0))[1] > 150


def test_karpathy_form_file_dir_and_splits(tmp_path):
    json_path = _karpathy(tmp_path / "flickr", _karpathy_entries())
    ds = build_captioned_dataset(json_path, "test", images=tmp_path / "flickr" / "imgs")
    assert ds.name == "flickr30k-test"
    assert ds.captions == [["a red square", "something red"], ["a green square"]]
    assert ds.images[1] == tmp_path / "flickr" / "imgs" / "val2014" / "green1.png"
    assert ds.flat_captions() == (["a red square", "something red", "a green square"], [0, 0, 1])
    assert ds[1][0].getpixel((0, 0))[1] > 150
    # Karpathy's restval is training data.
    assert len(build_captioned_dataset(json_path, "train", images=tmp_path / "flickr" / "imgs")) == 2
    # A directory holding the JSON and the images (here under the JSON's folder).
    both = tmp_path / "both"
    _karpathy(both, _karpathy_entries())
    for e in ("red1.png", "val2014/green1.png"):
        (both / e).parent.mkdir(parents=True, exist_ok=True)
        (both / e).write_bytes((both / "imgs" / e).read_bytes())
    assert len(build_captioned_dataset(both)) == 2


def test_clip_benchmark_wds_form(tmp_path):
    root = _wds(tmp_path / "wds_flickr", [("a", _png(COLORS["red"]), b"a red square\nsomething red\n"),
                                          ("b", _png(COLORS["blue"]), "a blue square \u2713".encode())])
    ds = build_captioned_dataset(root)
    assert ds.name == "flickr-test"
    assert ds.captions == [["a red square", "something red"], ["a blue square \u2713"]]
    assert ds[1][0].getpixel((0, 0))[2] > 150


def test_bad_input_names_the_culprit(tmp_path):
    with pytest.raises(ReactError, match="image 'k1' has no caption"):
        build_captioned_dataset(_embedded(tmp_path / "c1", ["a red one", "  ", "x"]))
    c2 = _embedded(tmp_path / "c2", ["a", "b", "c"])
    (c2 / "images" / "2.png").unlink()
    with pytest.raises(ReactError, match=r"image file missing: .*2\.png"):
        build_captioned_dataset(c2)
    with pytest.raises(ReactError, match="only a 'test' split"):
        build_captioned_dataset(c2, "train")

    entries = _karpathy_entries()
    entries[1]["sentences"] = []
    j = _karpathy(tmp_path / "k1", entries)
    with pytest.raises(ReactError, match="'green1.png' has no captions"):
        build_captioned_dataset(j, images=tmp_path / "k1" / "imgs")
    j = _karpathy(tmp_path / "k2", _karpathy_entries(), write_images=False)
    with pytest.raises(ReactError, match=r"image file missing: .*red1\.png \(and 1 more\)"):
        build_captioned_dataset(j)
    with pytest.raises(ReactError, match=r"no 'dev' split .*\(has: restval, test, train\)"):
        build_captioned_dataset(j, "dev")
    with pytest.raises(ReactError, match="image folder not found"):
        build_captioned_dataset(j, images=tmp_path / "nowhere")

    w = _wds(tmp_path / "w1", [("a", _png(COLORS["red"]), b"red"), ("b", _png(COLORS["blue"]), None)])
    with pytest.raises(ReactError, match=r"0\.tar: image 'b' has no captions"):
        build_captioned_dataset(w)
    with pytest.raises(ReactError, match=r"no 'val' split in .*w1 \(has: test\)"):
        build_captioned_dataset(w, "val")
    with pytest.raises(ReactError, match="--images goes with a Karpathy JSON"):
        build_captioned_dataset(w, images=tmp_path)
    with pytest.raises(ReactError, match="dataset not found"):
        build_captioned_dataset(tmp_path / "nope")


# --- end to end -------------------------------------------------------------------------------

def test_evaluate_matches_recall_on_the_features(tiny_model, tmp_path):
    from downstream.tasks.zeroshot import encode_dataset

    json_path = _karpathy(tmp_path / "k", _karpathy_entries()
                          + [{"filename": f"red{i}.png", "split": "test",
                              "sentences": [{"raw": f"red number {i}"}, {"raw": f"crimson {i}"}]}
                             for i in range(2, 6)])
    ds = build_captioned_dataset(json_path, images=tmp_path / "k" / "imgs")
    result = evaluate_retrieval(tiny_model, ds, batch_size=4, chunk=3)  # chunks split rows mid-image
    assert all(k in result for k in RESULT_KEYS) and result["task"] == "retrieval"
    assert result["per_class"] == {}
    texts, owners = ds.flat_captions()
    image_feats, _ = encode_dataset(tiny_model, ds, batch_size=6)
    expected = recall_at_k(image_feats @ tiny_model.encode_texts(texts).T, owners)
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value)
    assert result["metrics"]["num_images"] == 6 and result["metrics"]["num_captions"] == 11


@pytest.mark.parametrize("form", ["embedded", "karpathy", "wds"])
def test_cli_retrieval_writes_result(form, tiny_model_dir, tmp_path, capsys):
    extra = []
    if form == "embedded":
        dataset, n_images = _embedded(tmp_path / "corpus", ["a red one", "a green one", "a blue one"]), 3
    elif form == "karpathy":
        dataset, n_images = _karpathy(tmp_path / "k", _karpathy_entries()), 2
        extra = ["--images", str(tmp_path / "k" / "imgs")]
    else:
        dataset, n_images = _wds(tmp_path / "wds_x", [("a", _png(COLORS["red"]), b"red\nscarlet"),
                                                      ("b", _png(COLORS["green"]), b"green")]), 2
    out = tmp_path / "results" / "ret.json"
    args = eval_parser().parse_args(["eval", "retrieval", "--model", str(tiny_model_dir), "--dataset", str(dataset),
                                 "--device", "cpu", "--batch-size", "2", "--out", str(out), *extra])
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    m = result["metrics"]
    assert m["num_images"] == n_images
    for direction in ("image_to_text", "text_to_image"):
        assert [0.0 <= m[f"{direction}_R@{k}"] <= 1.0 for k in (1, 5, 10)] == [True] * 3
        assert m[f"{direction}_R@10"] == 1.0  # fewer than 10 candidates: always a hit
    if form == "embedded":
        assert set(result["per_class"]) == set(COLORS)
    assert [p.name for p in out.parent.iterdir()] == ["ret.json"]
    assert "image -> text" in capsys.readouterr().out


def test_react_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from react.cli import run

    j = _karpathy(tmp_path / "k", _karpathy_entries(), write_images=False)
    out = tmp_path / "ret.json"
    code = run(["eval", "retrieval", "--model", str(tmp_path / "no_model"), "--dataset", str(j),
                "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err.startswith("error: ") and "red1.png" in err and "\n" not in err
