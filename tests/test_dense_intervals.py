"""Intervals for detection and segmentation gains: AP50 and mIoU recomputed from
per-image statistics must equal what pycocotools and the confusion matrix give, and
the bootstrap over re-weighted images must behave like one over duplicated images."""
from __future__ import annotations

import numpy as np
import pytest

from downstream.data.coco import DetectionData, ImageRecord
from downstream.report.intervals import metric_gain_interval
from downstream.tasks.ap50 import ap50
from downstream.tasks.detection import coco_ap, matched_per_image
from downstream.tasks.segmentation import confusion_matrix, miou_from_counts, segmentation_metrics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


def _scene_set(rng: np.random.Generator, images: int = 12, classes: int = 4, crowd: bool = False):
    """Random ground truth and noisy detections around it (plus pure false positives)."""
    records, annotations, results = [], [], []
    for i in range(images):
        records.append(ImageRecord(id=i + 1, path=None, width=200, height=200))  # type: ignore[arg-type]
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(15, 50, 2)
            c = int(rng.integers(0, classes))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 10 + c,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(rng.integers(1, 3)):  # jittered copies: one may match, the rest are duplicates
                j = rng.normal(0, 6, 4)
                results.append({"image_id": i + 1, "category_id": 10 + int(rng.integers(0, classes)
                                                                          if rng.random() < 0.3 else c),
                                "bbox": [x + j[0], y + j[1], max(2.0, w + j[2]), max(2.0, h + j[3])],
                                "score": float(rng.random())})
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 150, 2)
            results.append({"image_id": i + 1, "category_id": 10 + int(rng.integers(0, classes)),
                            "bbox": [x, y, 30.0, 30.0], "score": float(rng.random())})
        if crowd and i % 4 == 0:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 10,
                                "bbox": [0.0, 0.0, 200.0, 200.0], "area": 40000.0, "iscrowd": 1})
    categories = [{"id": 10 + c, "name": f"c{c}"} for c in range(classes)]
    gt = {"images": [{"id": r.id, "width": 200, "height": 200, "file_name": f"{r.id}.png"} for r in records],
          "annotations": annotations, "categories": categories}
    data = DetectionData("synthetic", records, [10 + c for c in range(classes)], [f"c{c}" for c in range(classes)], gt)
    return data, results


@pytest.mark.parametrize("seed,crowd", [(0, False), (1, False), (2, True), (3, True)])
def test_ap50_from_matches_is_pycocotools_ap50(seed: int, crowd: bool) -> None:
    data, results = _scene_set(np.random.default_rng(seed), crowd=crowd)
    metrics, _ = coco_ap(data.gt, results)
    stats = matched_per_image(data, results)
    assert ap50(stats) == pytest.approx(metrics["AP50"], abs=1e-9)
    assert ap50(stats, np.ones(len(data.images))) == pytest.approx(metrics["AP50"], abs=1e-9)


def test_ap50_weights_count_images_as_duplicates() -> None:
    """Weight 2 on an image = the image twice in the set (ids renumbered), as pycocotools sees it."""
    data, results = _scene_set(np.random.default_rng(5), images=6)
    weights = np.array([2, 0, 1, 3, 1, 0])
    records, annotations, dup = [], [], []
    for i, w in enumerate(weights):
        for _ in range(w):
            new = len(records) + 1
            records.append(ImageRecord(id=new, path=None, width=200, height=200))  # type: ignore[arg-type]
            annotations += [{**a, "id": len(annotations) + k + 1, "image_id": new}
                            for k, a in enumerate(x for x in data.gt["annotations"] if x["image_id"] == i + 1)]
            dup += [{**r, "image_id": new} for r in results if r["image_id"] == i + 1]
    gt = {"images": [{"id": r.id, "width": 200, "height": 200, "file_name": f"{r.id}.png"} for r in records],
          "annotations": annotations, "categories": data.gt["categories"]}
    expected, _ = coco_ap(gt, dup)
    # equal scores of duplicated detections make pycocotools' curve step where ours jumps: close, not equal
    assert ap50(matched_per_image(data, results), weights) == pytest.approx(expected["AP50"], abs=0.02)


def test_miou_from_counts_is_the_confusion_matrix_miou() -> None:
    rng = np.random.default_rng(0)
    classes = ["background", "a", "b", "c"]
    images = []
    for _ in range(7):
        labels = rng.integers(0, 3, (20, 20))  # class c never in ground truth
        pred = np.where(rng.random((20, 20)) < 0.6, labels, rng.integers(0, 4, (20, 20)))
        images.append(confusion_matrix(pred, labels, 4, None))
    counts = {"intersection": [], "ground_truth": [], "predicted": []}
    for conf in images:
        for key, value in zip(counts, (np.diag(conf), conf.sum(1), conf.sum(0))):
            counts[key].append(value.tolist())
    assert miou_from_counts(counts) == pytest.approx(segmentation_metrics(sum(images), classes)[0]["mIoU"])
    w = np.array([0, 2, 1, 1, 0, 3, 1])
    weighted = sum(k * conf for k, conf in zip(w, images))
    assert miou_from_counts(counts, w) == pytest.approx(segmentation_metrics(weighted, classes)[0]["mIoU"])


def test_metric_gain_interval_separates_a_real_gain_from_none() -> None:
    rng = np.random.default_rng(0)
    n = 200
    base = rng.random(n) < 0.3
    better = [np.where(rng.random(n) < 0.3, True, base) for _ in range(3)]  # fixes ~30 % of the misses
    same = [np.where(rng.random(n) < 0.5, base, rng.random(n) < 0.3) for _ in range(3)]
    accuracy = lambda correct, w: float(w @ correct / w.sum())  # noqa: E731
    up = metric_gain_interval(better, [base], accuracy, n, replicates=400)
    flat = metric_gain_interval(same, [base], accuracy, n, replicates=400)
    assert up["mean"] > 0.1 and not up["contains_zero"] and up["ci95"][0] > 0
    assert flat["contains_zero"] and flat["ci95"][0] < flat["mean"] < flat["ci95"][1]
    assert up["images"] == n and up["seeds"] == [3, 1]


def test_demo_dense_gains_runs_every_seed_and_reports_floors(tiny_model_dir, stamp_corpus, tmp_path) -> None:
    """The demo's detection/segmentation stage on real `react eval` runs: each seed scored on the
    test scenes, the gain with its interval, and both floors (crop-and-encode, all-background)."""
    import json

    from demo.transfer import TASKS, dense_gains
    from react.cli import run

    def step(name: str, argv: list[str]) -> None:
        assert run(argv) == 0, argv

    results = tmp_path / "results"
    results.mkdir()
    written = {task: {} for task in ("detection", "segmentation")}
    for task in written:
        for label in ("base", "gated-image"):
            path = results / f"{label}_{task}.json"
            step(task, ["eval", task, "--model", str(tiny_model_dir), "--dataset", str(stamp_corpus),
                        "--out", str(path), *TASKS[task]])
            written[task][label] = path
    seed = tmp_path / "gated-s1"
    seed.symlink_to(tiny_model_dir)
    dense = dense_gains(step, results, stamp_corpus, tiny_model_dir, [seed], written)
    for task in ("detection", "segmentation"):
        entry = dense[task]
        assert len(entry["seeds"]) == 2 and entry["seeds"][0] == entry["seeds"][1] == entry["base"]
        assert entry["gain"]["mean"] == 0.0 and entry["gain"]["ci95"] == [0.0, 0.0]  # the same weights
        assert entry["gain"]["images"] == 200  # the demo's scenes of the test stamps
        assert (results / f"gated-s1_{task}.json").is_file()
    assert 0 <= dense["detection"]["base_crop"] <= 1
    versus = dense["detection"]["base_roi_minus_crop"]  # the same boxes read two ways, paired
    assert versus["mean"] == pytest.approx(dense["detection"]["base"] - dense["detection"]["base_crop"], abs=1e-4)
    assert versus["ci95"][0] <= versus["mean"] <= versus["ci95"][1] and versus["seeds"] == [1, 1]
    seg = json.loads(written["segmentation"]["base"].read_text())
    assert dense["segmentation"]["all_background"] == seg["metrics"]["all_background_mIoU"] > 0
    assert seg["dataset"].endswith("-scenes:test")
