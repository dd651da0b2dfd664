"""Segmentation metrics on hand-computed masks (and against scikit-learn),
the dataset reader's checks, and `react eval segmentation` end to end on a
tiny dataset built here."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from downstream.data.segmentation import build_segmentation_dataset
from downstream.tasks.segmentation import (TextHead, confusion_matrix, evaluate_segmentation, patch_log_probs,
                                     predict_labels, segmentation_metrics)
from react.errors import ReactError

# A 4x4 ground truth over 3 classes with two ignored pixels, and a prediction.
GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [2, 2, 255, 1],
               [2, 2, 255, 0]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 0, 1, 2],
                 [2, 0, 1, 1],
                 [2, 2, 0, 0]])


def test_metrics_on_a_hand_computed_4x4_mask():
    conf = confusion_matrix(PRED, GT, 3, ignore_index=255)
    # 14 scored pixels. class 0: gt {00,01,10,11,33} pred {00,10,11,21,33}: tp 4, union 6
    # class 1: gt {02,03,12,13,23} pred {01,02,03,12,23}: tp 4, union 6
    # class 2: gt {20,21,30,31} pred {13,20,30,31}: tp 3, union 5
    assert conf.sum() == 14
    metrics, per_class = segmentation_metrics(conf, ["a", "b", "c"])
    assert per_class == pytest.approx({"a": 4 / 6, "b": 4 / 6, "c": 3 / 5})
    assert metrics["mIoU"] == pytest.approx((4 / 6 + 4 / 6 + 3 / 5) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(11 / 14)
    assert metrics["mean_accuracy"] == pytest.approx((4 / 5 + 4 / 5 + 3 / 4) / 3)
    # the ignored pixels' predictions (1 and 0) change nothing
    other = PRED.copy()
    other[GT == 255] = 2
    assert np.array_equal(confusion_matrix(other, GT, 3, 255), conf)


def test_miou_counts_only_classes_in_ground_truth_or_prediction():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 0], [1, 0]])
    metrics, per_class = segmentation_metrics(confusion_matrix(pred, gt, 4, 255), list("abcd"))
    assert set(per_class) == {"a", "b"}  # c, d absent everywhere: not averaged as 0 or 1
    assert metrics["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx(3 / 4)


def test_metrics_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix as sk_confusion, jaccard_score

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, size=(30, 40))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 5, size=gt.shape)) % 255
    pred[pred > 4] = 0
    keep = gt != 255
    conf = confusion_matrix(pred, gt, 6, 255)  # class 5 never occurs
    assert np.array_equal(conf, sk_confusion(gt[keep], pred[keep], labels=range(6)))
    metrics, per_class = segmentation_metrics(conf, list("abcdef"))
    assert metrics["mIoU"] == pytest.approx(jaccard_score(gt[keep], pred[keep], labels=range(5), average="macro"))
    assert metrics["pixel_accuracy"] == pytest.approx(accuracy_score(gt[keep], pred[keep]))


def test_all_ignored_is_an_error():
    conf = confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 255), 2, 255)
    with pytest.raises(ReactError, match="no labelled pixels"):
        segmentation_metrics(conf, ["a", "b"])


# --- datasets ------------------------------------------------------------------

def make_dataset(root, classes=("background", "cat", "dog"), n=3, size=(40, 32), mask_fn=None, ext="png"):
    """Left half cat-coloured, a dog square, background elsewhere, a 255 border row."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = size
        mask = np.zeros((h, w), np.uint8)
        mask[:, : w // 2] = 1
        mask[4:12, w - 12 : w - 4] = 2
        mask[0] = 255
        if mask_fn:
            mask = mask_fn(i, mask)
        image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i}.{ext}")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"im{i}.png")
    return root


def test_reader_reads_the_layout_and_splits(tmp_path):
    root = make_dataset(tmp_path / "d", ext="jpg")
    ds = build_segmentation_dataset(root)
    assert len(ds) == 3 and ds.classnames == ["background", "cat", "dog"] and ds.background_index == 0
    image, mask = ds[1]
    assert image.size == (40, 32) and mask.shape == (32, 40) and set(np.unique(mask)) == {0, 1, 2, 255}
    (root / "val.txt").write_text("im2\nim0\n")
    assert [p.stem for p in build_segmentation_dataset(root, split="val").images] == ["im2", "im0"]
    assert len(build_segmentation_dataset(root, split="test")) == 3  # no test.txt: all images


def test_reader_rejects_bad_input(tmp_path):
    def bad_label(i, mask):
        if i == 2:
            mask[5, 5] = 7
        return mask

    ds = build_segmentation_dataset(make_dataset(tmp_path / "a", mask_fn=bad_label))
    ds.load_mask(0)
    with pytest.raises(ReactError, match=r"im2\.png has label 7 not in the 3 classes"):
        ds.load_mask(2)

    root = make_dataset(tmp_path / "b")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(root / "masks" / "im1.png")
    with pytest.raises(ReactError, match=r"im1\.png is 10x10, its image im1\.png is 40x32"):
        build_segmentation_dataset(root).load_mask(1)

    root = make_dataset(tmp_path / "c")
    (root / "masks" / "im0.png").unlink()
    with pytest.raises(ReactError, match=r"1 image\(s\) have no mask .* im0\.png"):
        build_segmentation_dataset(root)

    root = make_dataset(tmp_path / "e")
    (root / "meta.json").write_text(json.dumps({"num_classes": 21}))
    with pytest.raises(ReactError, match="meta.json says 21 classes, classes.txt names 3"):
        build_segmentation_dataset(root)

    root = make_dataset(tmp_path / "f")
    Image.new("RGB", (40, 32)).save(root / "masks" / "im0.png")
    with pytest.raises(ReactError, match="mode RGB is not a label map"):
        build_segmentation_dataset(root).load_mask(0)

    with pytest.raises(ReactError, match="ignore label 1 is also class 'cat'"):
        build_segmentation_dataset(make_dataset(tmp_path / "g"), ignore_index=1)
    with pytest.raises(ReactError, match="no classes.txt"):
        (tmp_path / "h").mkdir()
        build_segmentation_dataset(tmp_path / "h")


def test_palette_masks_read_as_indices(tmp_path):
    root = make_dataset(tmp_path / "p", n=1)
    mask = np.asarray(Image.open(root / "masks" / "im0.png"))
    palette = Image.fromarray(mask, mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (768 - 9))
    palette.save(root / "masks" / "im0.png")
    assert np.array_equal(build_segmentation_dataset(root).load_mask(0), mask)


# --- prediction ----------------------------------------------------------------

class _Head:
    """A TextHead over given embeddings, without a model (for the refinements)."""

    def __init__(self, embeddings, columns, background_index=None, background="none"):
        self.embeddings = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=-1)
        self.columns = torch.tensor(columns)
        self.background, self.background_index = background, background_index
        self.is_background = self.columns == (background_index if background_index is not None else -1)


def test_prompt_denoising_drops_classes_weak_everywhere():
    head = _Head(torch.eye(3), [0, 1, 2])
    # 2x2 patches: class 0 strong in three, class 1 strong in one, class 2 never above 0.5
    feats = torch.nn.functional.normalize(torch.tensor([[1, 0, 0.9], [1, 0, 0.9], [1, 0, 0.9], [0, 1, 0.9]]), dim=-1)
    feats = feats.reshape(1, 2, 2, 3)
    plain = patch_log_probs(feats, None, head, 10.0, None).exp()
    denoised = patch_log_probs(feats, None, head, 10.0, 0.5).exp()
    assert plain[0, 2].max() > 0.1 and plain[0, 2].max() < 0.5
    assert torch.all(denoised[0, 2] == 0)
    assert torch.allclose(denoised[0, :2], plain[0, :2])  # survivors keep their probabilities


def test_key_smoothing_follows_key_affinity():
    head = _Head(torch.eye(2), [0, 1])
    feats = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1]]), dim=-1).reshape(1, 2, 2, 2)
    keys = torch.tensor([[1.0, 0], [1, 0], [1, 0], [1, 0]]).reshape(1, 2, 2, 2)  # one group: the outlier joins it
    smoothed = patch_log_probs(feats, keys, head, 10.0, None).exp()
    assert smoothed[0].argmax(0).eq(0).all()
    separate = torch.eye(4).reshape(1, 2, 2, 4)  # orthogonal keys: nothing changes
    assert torch.allclose(patch_log_probs(feats, separate, head, 10.0, None),
                          patch_log_probs(feats, None, head, 10.0, None), atol=1e-5)


def test_background_threshold_and_upsampling():
    head = _Head(torch.eye(2), [1, 2], background_index=0, background="threshold")
    log_probs = torch.log(torch.tensor([[[0.9, 0.45]], [[0.1, 0.55]]]))  # [K=2, h=1, w=2]
    labels = predict_labels(log_probs, head, (2, 4), background_threshold=0.6)
    assert labels[:, 0].eq(1).all() and labels[:, -1].eq(0).all()  # right patch: best 0.55 < 0.6


def test_text_head_background_prompts(tiny_model):
    head = TextHead(tiny_model, ["background", "cat", "dog"], ["a photo of a {}."], 0, "prompts")
    assert head.columns.tolist()[:2] == [1, 2] and set(head.columns.tolist()[2:]) == {0}
    assert int(head.is_background.sum()) == len(head.columns) - 2
    with pytest.raises(ReactError, match="unknown --background"):
        TextHead(tiny_model, ["a"], ["{}"], None, "magic")


def test_evaluate_end_to_end_with_refinements(tiny_model, tmp_path):
    ds = build_segmentation_dataset(make_dataset(tmp_path / "d", n=2))
    result = evaluate_segmentation(tiny_model, ds, ["a photo of a {}."], key_smoothing=True, prompt_denoising=True)
    assert result["task"] == "segmentation" and result["metrics"]["num_images"] == 2
    assert result["settings"]["input_size"] == 32  # the tower's own size by default
    m = result["metrics"]
    assert 0 <= m["mIoU"] <= 1 and 0 <= m["pixel_accuracy"] <= 1
    assert set(result["per_class"]) <= {"background", "cat", "dog"}


def test_cli_writes_result_and_reports_bad_input(tiny_model_dir, tmp_path):
    root = make_dataset(tmp_path / "d", n=2)
    out = tmp_path / "seg.json"
    cmd = [sys.executable, "-m", "react", "eval", "segmentation", "--model", str(tiny_model_dir),
           "--dataset", str(root), "--out", str(out), "--device", "cpu", "--input-size", "32",
           "--templates", "simple", "--background", "prompts"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result) >= {"task", "model", "dataset", "metrics", "per_class"}
    assert result["settings"]["background"] == "prompts"

    def bad(i, mask):
        mask[3, 3] = 9
        return mask

    bad_root = make_dataset(tmp_path / "bad", n=1, mask_fn=bad)
    cmd[cmd.index(str(root))] = str(bad_root)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "label 9 not in the 3 classes" in done.stderr and "Traceback" not in done.stderr
