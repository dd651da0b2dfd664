"""Zero-shot detection: AP against hand-computed numbers, pycocotools and an
independent implementation; NMS and RoI pooling; bad input; the command end to end."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from downstream.data.coco import load_instances, load_proposals, resolve_detection_dataset
from downstream.tasks.detection import coco_ap, greedy_nms, per_class_nms, roi_mean
from react.errors import ReactError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


def _gt(boxes_by_image: dict[int, list[tuple[int, list[float]]]], num_classes: int = 2,
        size: int = 100) -> dict:
    images = [{"id": i, "width": size, "height": size} for i in sorted(boxes_by_image)]
    anns = [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for n, (i, c, b) in enumerate((i, c, b) for i, rows in sorted(boxes_by_image.items())
                                           for c, b in rows)]
    return {"images": images, "annotations": anns,
            "categories": [{"id": c + 1, "name": f"class{c + 1}"} for c in range(num_classes)]}


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def reference_ap50(gt: dict, results: list[dict], category_id: int) -> float:
    """AP at IoU 0.5 written from the COCO definition: detections by falling score,
    each matched to the best still-unmatched ground truth with IoU >= 0.5; precision
    made non-increasing; read at the 101 recall points 0, 0.01, ..., 1."""
    gts: dict[int, list[list[float]]] = {}
    for a in gt["annotations"]:
        if a["category_id"] == category_id:
            gts.setdefault(a["image_id"], []).append(a["bbox"])
    total = sum(len(v) for v in gts.values())
    dets = sorted((r for r in results if r["category_id"] == category_id), key=lambda r: -r["score"])
    used = {i: [False] * len(v) for i, v in gts.items()}
    tp = []
    for det in dets:
        best, best_iou = -1, 0.5
        for j, box in enumerate(gts.get(det["image_id"], [])):
            iou = _iou(det["bbox"], box)
            if not used[det["image_id"]][j] and iou >= best_iou:
                best, best_iou = j, iou
        if best >= 0:
            used[det["image_id"]][best] = True
        tp.append(best >= 0)
    hits = np.cumsum(tp)
    recall = hits / total
    precision = hits / np.arange(1, len(tp) + 1)
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    points = []
    for r in np.linspace(0, 1, 101):
        reached = np.nonzero(recall >= r)[0]
        points.append(precision[reached[0]] if len(reached) else 0.0)
    return float(np.mean(points))


def test_ap50_three_boxes_by_hand() -> None:
    # Three ground-truth boxes; a hit (0.9), a miss (0.8), a hit (0.7); one box never found.
    # Precision/recall after each: (1, 1/3), (1/2, 1/3), (2/3, 2/3). Interpolated precision is
    # 1 for recall points 0..0.33 (34 points), 2/3 for 0.34..0.66 (33 points), 0 above:
    # AP50 = (34 + 33 * 2/3) / 101 = 56/101.
    gt = _gt({1: [(1, [0, 0, 20, 20]), (1, [50, 50, 20, 20]), (1, [0, 60, 30, 30])]})
    results = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [30, 0, 20, 20], "score": 0.8},
               {"image_id": 1, "category_id": 1, "bbox": [52, 50, 20, 20], "score": 0.7}]
    metrics, per_class = coco_ap(gt, results)
    assert metrics["AP50"] == pytest.approx(56 / 101)
    assert per_class == {1: pytest.approx(56 / 101)}  # class 2 has no ground truth: left out
    assert reference_ap50(gt, results, 1) == pytest.approx(56 / 101)
    # IoU of the first hit is 361/439 = 0.82 and of the second 360/440 = 0.82: both miss at 0.85+,
    # so AP@[.5:.95] averages 56/101 over the 7 thresholds 0.50..0.80 and 0 over the other 3.
    assert metrics["AP"] == pytest.approx(56 / 101 * 7 / 10)


def test_ap_matches_independent_implementation_on_random_case() -> None:
    rng = np.random.default_rng(0)
    boxes_by_image = {}
    for image_id in range(1, 6):
        rows = []
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, 60, size=2)
            rows.append((int(rng.integers(1, 3)), [float(x), float(y), *map(float, rng.uniform(10, 40, 2))]))
        boxes_by_image[image_id] = rows
    gt = _gt(boxes_by_image)
    results = []
    for a in gt["annotations"]:
        for c in (1, 2):  # every box under both classes, slightly moved: TPs and FPs mixed
            x, y, w, h = a["bbox"]
            jitter = rng.uniform(-6, 6, size=2)
            results.append({"image_id": a["image_id"], "category_id": c,
                            "bbox": [x + jitter[0], y + jitter[1], w, h], "score": float(rng.uniform())})
    _, per_class = coco_ap(gt, results)
    for c in (1, 2):
        assert per_class[c] == pytest.approx(reference_ap50(gt, results, c), abs=1e-9)


def test_perfect_and_empty_detections() -> None:
    gt = _gt({1: [(1, [0, 0, 20, 20]), (2, [40, 40, 30, 30])], 2: [(2, [5, 5, 50, 50])]})
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    metrics, per_class = coco_ap(gt, perfect)
    assert metrics == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})
    assert per_class == pytest.approx({1: 1.0, 2: 1.0})
    metrics, per_class = coco_ap(gt, [])
    assert metrics["AP50"] == 0.0 and per_class == {1: 0.0, 2: 0.0}


def test_nms_by_hand() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([0, 0, 1, 0])
    # Box 1 overlaps box 0 (IoU 9/11) in the same class: suppressed. Box 2 is another class: kept.
    assert per_class_nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]
    assert per_class_nms(boxes, scores, classes, 0.85).tolist() == [0, 1, 2, 3]
    assert greedy_nms(boxes[:2], scores[:2], 0.5).tolist() == [0]


def test_roi_mean_equals_torchvision_roi_align() -> None:
    from torchvision.ops import roi_align

    torch.manual_seed(0)
    features = torch.randn(5, 6, 7)
    rois = torch.tensor([[0.0, 0.0, 7.0, 6.0], [1.3, 0.5, 4.2, 5.9], [2.0, 2.0, 2.5, 2.4]])
    with torch._dynamo.config.patch(disable=True):  # without compiled ops torchvision would torch.compile
        expected = roi_align(features[None], [rois], output_size=4, spatial_scale=1.0,
                             sampling_ratio=2, aligned=True).mean(dim=(2, 3))
    torch.testing.assert_close(roi_mean(features, rois), expected, atol=1e-5, rtol=1e-5)
    # A constant map pools to that constant whatever the box.
    assert torch.allclose(roi_mean(torch.full((2, 3, 3), 0.25), rois), torch.tensor(0.25))


# --- data files and bad input ----------------------------------------------------------

def _coco_dir(root: Path, annotations: list[dict], categories=None) -> Path:
    (root / "images").mkdir(parents=True)
    for i, colour in ((1, "red"), (2, "blue")):
        Image.new("RGB", (40, 30), colour).save(root / "images" / f"im{i}.png")
    data = {"images": [{"id": 1, "file_name": "im1.png", "width": 40, "height": 30},
                       {"id": 2, "file_name": "im2.png", "width": 40, "height": 30}],
            "annotations": annotations,
            "categories": categories or [{"id": 3, "name": "red thing"}, {"id": 7, "name": "blue thing"}]}
    (root / "instances.json").write_text(json.dumps(data))
    return root


def test_instances_clip_skip_and_counts(tmp_path: Path) -> None:
    root = _coco_dir(tmp_path / "d", [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [-5, 10, 20, 40]},   # clipped to [0,10,15,20]
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 0, 10, 10]},   # wholly outside: skipped
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 0, 8]},      # no width: skipped
        {"id": 4, "image_id": 2, "category_id": 7},                            # no bbox: skipped
        {"id": 5, "image_id": 2, "category_id": 7, "bbox": [1, 2, 3, 4]},
    ])
    data = load_instances(*resolve_detection_dataset(root))
    assert data.category_ids == [3, 7] and data.classnames == ["red thing", "blue thing"]
    assert data.counts == {"clipped_boxes": 1, "skipped_empty_boxes": 3, "images_without_boxes": 0}
    assert [a["bbox"] for a in data.gt["annotations"]] == [[0, 10, 15, 20], [1, 2, 3, 4]]
    np.testing.assert_array_equal(data.gt_boxes()[1], [[0, 10, 15, 30]])
    renamed = load_instances(root / "instances.json", root / "images", ["red", "blue"])
    assert renamed.classnames == ["red", "blue"]
    # Proposals: clipped/skipped likewise; both list and {"annotations": [...]} forms.
    props = tmp_path / "props.json"
    props.write_text(json.dumps({"annotations": [{"image_id": 1, "bbox": [30, 20, 20, 20], "score": 0.3},
                                                 {"image_id": 2, "bbox": [0, 0, -1, 5]}]}))
    boxes, counts = load_proposals(props, data)
    np.testing.assert_array_equal(boxes[1], [[30, 20, 40, 30]])
    assert boxes[2].shape == (0, 4)
    assert counts == {"clipped_proposals": 1, "skipped_empty_proposals": 1}


@pytest.mark.parametrize("annotations, categories, names, message", [
    ([{"id": 9, "image_id": 1, "category_id": 4, "bbox": [0, 0, 5, 5]}], None, None,
     "annotation 9: unknown category_id 4"),
    ([{"id": 9, "image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5]}], None, None,
     "annotation 9: unknown image_id 5"),
    ([{"id": 9, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}], None, ["only one"],
     "1 class names given for the 2 categories"),
    ([{"id": 9, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}],
     [{"id": 3, "name": "a"}, {"id": 3, "name": "b"}], None, "duplicate category ids"),
    ([{"id": 9, "image_id": 1, "category_id": 3, "bbox": [0, 0, 0, 5]}], None, None,
     "no usable annotations \\(1 empty\\)"),
    ([{"id": 9, "image_id": 1, "category_id": 3, "bbox": [0, 0, "w", 5]}], None, None,
     "annotation 9: bbox must be numbers"),
])
def test_instances_errors(tmp_path: Path, annotations, categories, names, message) -> None:
    root = _coco_dir(tmp_path / "d", annotations, categories)
    with pytest.raises(ReactError, match=message):
        load_instances(root / "instances.json", root / "images", names)


def test_missing_files_and_bad_proposals(tmp_path: Path) -> None:
    root = _coco_dir(tmp_path / "d", [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}])
    data = load_instances(root / "instances.json", root / "images")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 42, "bbox": [0, 0, 5, 5]}]))
    with pytest.raises(ReactError, match="entry 0: image_id 42 is not in the dataset"):
        load_proposals(bad, data)
    (root / "images" / "im2.png").unlink()
    with pytest.raises(ReactError, match="1 image file\\(s\\) .* missing, e.g. .*im2.png"):
        load_instances(root / "instances.json", root / "images")
    with pytest.raises(ReactError, match="no instances.json"):
        resolve_detection_dataset(tmp_path)
    with pytest.raises(ReactError, match="no such file"):
        resolve_detection_dataset(tmp_path / "nope")


# --- the command, end to end on composed scenes of a tiny corpus -----------------------------

def _parse(argv: list[str]) -> argparse.Namespace:
    from downstream.cli import add_detection

    parser = argparse.ArgumentParser(prog="react eval")
    add_detection(parser.add_subparsers(dest="task", required=True))
    return parser.parse_args(["detection", *argv])


@pytest.mark.parametrize("mode", ["roi", "crop"])
def test_cli_on_composed_scenes(tiny_model_dir: Path, stamp_corpus: Path, tmp_path: Path, mode: str, capsys) -> None:
    out = tmp_path / "res" / f"{mode}.json"
    corpus = stamp_corpus
    args = _parse(["--model", str(tiny_model_dir), "--dataset", str(corpus), "--scenes", "4",
                   "--region-features", mode, "--device", "cpu", "--out", str(out)])
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "detection" and result["dataset"] == "corpus-scenes:test"
    m = result["metrics"]
    assert all(0.0 <= m[k] <= 1.0 for k in ("AP50", "AP", "AP75"))
    assert m["num_images"] == 4 and m["num_boxes_scored"] == m["num_gt_boxes"] > 0
    assert set(result["per_class"]) <= {"red disc", "green square", "blue bar"}
    assert set(result["per_class"]) | set(result["counts"]["classes_without_gt"]) == {
        "red disc", "green square", "blue bar"}
    assert result["settings"]["region_features"] == mode
    assert result["settings"]["num_templates"] == 2  # the corpus' own templates
    assert (corpus / "scenes").is_dir()
    assert "AP50" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_cli_with_proposals_and_bad_options(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = _coco_dir(tmp_path / "d", [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 20, 20]},
                                      {"id": 2, "image_id": 2, "category_id": 7, "bbox": [10, 5, 25, 20]}])
    props = tmp_path / "props.json"
    props.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 20, 20]}, {"image_id": 1, "bbox": [20, 10, 20, 20]},
                                 {"image_id": 2, "bbox": [10, 5, 25, 20]}]))
    out = tmp_path / "p.json"
    args = _parse(["--model", str(tiny_model_dir), "--dataset", str(root / "instances.json"),
                   "--boxes", str(props), "--templates", "simple", "--out", str(out)])
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["num_boxes_scored"] == 3 and result["settings"]["boxes"] == str(props)
    for extra, message in ((["--nms-iou", "0"], "--nms-iou"), (["--dense-size", "0"], "--dense-size"),
                           (["--templates", "nonesuch"], "unknown templates")):
        bad = _parse(["--model", str(tmp_path / "no_model"), "--dataset", str(root), *extra])
        with pytest.raises(ReactError, match=message):
            bad.func(bad)
