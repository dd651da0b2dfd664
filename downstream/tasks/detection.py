"""Zero-shot detection with given boxes, RegionCLIP's zero-shot setting.

Each box (ground truth, or from a proposals file) gets a region feature and is
scored against prompt-ensembled class text embeddings; every (box, class) pair
becomes a detection with the class's softmax probability as its score; per-class
NMS; then COCO AP via pycocotools.

Region features (``region_features``):

- ``"roi"`` (default): the image tower's dense patch features
  (``downstream.tasks.dense.dense_features``, the MaskCLIP value path) over the whole
  image, pooled inside each box with RoIAlign and L2-normalized. The image is
  resized (aspect kept) so its longer side is ``dense_size`` pixels (default:
  the tower's training size), rounded to whole patches: larger inputs give a
  finer patch grid but are further from what the tower was trained on.
- ``"crop"``: each box is cut from the image, padded to a square with CLIP's
  mean colour (so the model's centre crop keeps the whole box), and encoded
  as a whole image. Slower (one forward pass per box) and blind to context.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from downstream.data.coco import DetectionData, ImageRecord
from downstream.defaults import DEFAULT_BATCH_SIZE, DEFAULT_NMS_IOU, DENSE_MODES, REGION_MODES
from react.errors import ReactError
from react.images import load_rgb
from react.models import LoadedModel
from react.progress import progress

ROI_OUTPUT = 4            # RoIAlign bins per side before averaging (sub-patch sampling)
MAX_DETS = 100            # COCO's maxDets: detections kept per image
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalization(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean/std of the model's own transform (CLIP's where it has none)."""
    mean, std = CLIP_MEAN, CLIP_STD
    for t in getattr(model.preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            mean, std = tuple(t.mean), tuple(t.std)
    return torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)


def _dense_input(model: LoadedModel, image: Image.Image, dense_size: int) -> tuple[torch.Tensor, float, float]:
    """[3, H', W'] normalized tensor and the x/y scale from image to tensor pixels."""
    from downstream.tasks.dense import round_to_patches

    w, h = image.size
    scale = dense_size / max(w, h)
    th, tw = round_to_patches(model, h * scale, w * scale)
    resized = image.resize((tw, th), Image.BICUBIC)
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = _normalization(model)
    return (tensor - mean) / std, tw / w, th / h


def roi_mean(features: torch.Tensor, rois: torch.Tensor, samples: int = 2 * ROI_OUTPUT) -> torch.Tensor:
    """[D, h, w] map, [K, 4] xyxy boxes in cell units -> [K, D]: the mean of a
    ``samples`` x ``samples`` grid of bilinear samples inside each box.

    This is RoIAlign (aligned=True) with ``samples / s`` bins per side and
    ``s`` samples per bin, averaged over the bins -- the same numbers as
    torchvision.ops.roi_align(...).mean((2, 3)) for boxes inside the map. It
    exists because torchvision's fallback without compiled ops goes through
    torch.compile (tens of seconds on the first call)."""
    d, h, w = features.shape
    k = (torch.arange(samples, dtype=torch.float32) + 0.5) / samples
    xs = rois[:, 0:1] + k * (rois[:, 2:3] - rois[:, 0:1]) - 0.5  # aligned: cell i is centred on i
    ys = rois[:, 1:2] + k * (rois[:, 3:4] - rois[:, 1:2]) - 0.5
    gx = xs / max(w - 1, 1) * 2 - 1
    gy = ys / max(h - 1, 1) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, samples, -1), gy[:, :, None].expand(-1, -1, samples)], dim=-1)
    # Border padding = roi_align's clamp of samples within half a cell of the edge.
    sampled = F.grid_sample(features[None].expand(len(rois), -1, -1, -1), grid, mode="bilinear",
                            padding_mode="border", align_corners=True)
    return sampled.mean(dim=(2, 3))


def pool_regions(features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """torchvision's RoIAlign where its compiled ops load, else ``roi_mean``; [K, D]."""
    from torchvision.extension import _has_ops

    if _has_ops():
        from torchvision.ops import roi_align

        pooled = roi_align(features[None], [rois], output_size=ROI_OUTPUT, spatial_scale=1.0,
                           sampling_ratio=2, aligned=True)
        return pooled.mean(dim=(2, 3))
    return roi_mean(features, rois)


def roi_features(model: LoadedModel, images: list[Image.Image], boxes: list[np.ndarray],
                 dense_size: int, dense_mode: str = DENSE_MODES[0]) -> list[torch.Tensor]:
    """Per image, [K, 4] xyxy boxes in image pixels -> [K, D] normalized
    RoIAlign-pooled dense features. Images of one resized shape share a forward pass."""
    from downstream.tasks.dense import dense_features, vision_tower

    ph, pw = vision_tower(model).conv1.kernel_size
    inputs = [_dense_input(model, image, dense_size) for image in images]
    out: list[torch.Tensor | None] = [None] * len(images)
    shapes = sorted({tuple(t.shape) for t, _, _ in inputs})
    for shape in shapes:
        members = [i for i, (t, _, _) in enumerate(inputs) if tuple(t.shape) == shape]
        dense = dense_features(model, torch.stack([inputs[i][0] for i in members]), dense_mode)  # [B, h, w, D]
        for row, i in enumerate(members):
            _, sx, sy = inputs[i]
            # Boxes straight into patch-grid units: one feature cell per patch.
            rois = torch.as_tensor(boxes[i], dtype=torch.float32) * torch.tensor(
                [sx / pw, sy / ph, sx / pw, sy / ph])
            out[i] = F.normalize(pool_regions(dense[row].permute(2, 0, 1), rois), dim=-1)
    return out  # type: ignore[return-value]


def _square_crop(image: Image.Image, box: Sequence[float], fill: tuple[int, int, int]) -> Image.Image:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    crop = image.crop((x0, y0, x1, y1))
    side = max(crop.size)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(crop, ((side - crop.size[0]) // 2, (side - crop.size[1]) // 2))
    return canvas


def crop_features(model: LoadedModel, images: list[Image.Image], boxes: list[np.ndarray],
                  batch_size: int) -> list[torch.Tensor]:
    """Per image, [K, 4] xyxy boxes -> [K, D] features of each box encoded as its own image."""
    mean, _ = _normalization(model)
    fill = tuple(int(round(255 * m)) for m in mean.flatten().tolist())
    crops = [model.preprocess(_square_crop(image, box, fill)) for image, bs in zip(images, boxes) for box in bs]
    feats = [model.encode_images(torch.stack(crops[i : i + batch_size]))
             for i in range(0, len(crops), batch_size)]
    flat = torch.cat(feats) if feats else torch.empty(0, model.embed_dim)
    return list(flat.split([len(b) for b in boxes]))


def _logit_scale(model: LoadedModel) -> float:
    scale = getattr(model.model, "logit_scale", None)
    return float(scale.detach().exp()) if scale is not None else 100.0


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept by greedy NMS, highest score first (torchvision.ops.nms's rule:
    drop a box whose IoU with a kept, higher-scoring box exceeds the threshold)."""
    from torchvision.ops import box_iou  # pure torch, no compiled ops

    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def per_class_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                  iou_threshold: float) -> torch.Tensor:
    """torchvision's batched_nms where its compiled ops load; else the same rule
    class by class in pure torch (a torchvision wheel built for another torch
    has no ops), merged by descending score."""
    from torchvision.extension import _has_ops

    if _has_ops():
        from torchvision.ops import batched_nms

        return batched_nms(boxes, scores, classes, iou_threshold)
    kept = [idx[greedy_nms(boxes[idx], scores[idx], iou_threshold)]
            for c in classes.unique() for idx in [torch.nonzero(classes == c).flatten()]]
    if not kept:
        return torch.zeros(0, dtype=torch.long)
    kept_all = torch.cat(kept)
    return kept_all[torch.argsort(scores[kept_all], descending=True, stable=True)]


def detections_for_image(probs: torch.Tensor, boxes: np.ndarray, image_id: int, category_ids: list[int],
                         nms_iou: float, max_dets: int = MAX_DETS) -> list[dict[str, Any]]:
    """Every (box, class) pair as a COCO result, per-class NMS, the top ``max_dets`` kept."""
    k, c = probs.shape
    if k == 0:
        return []
    flat_boxes = torch.as_tensor(boxes, dtype=torch.float32).repeat_interleave(c, dim=0)
    flat_scores = probs.reshape(-1).float()
    flat_classes = torch.arange(c).repeat(k)
    keep = per_class_nms(flat_boxes, flat_scores, flat_classes, nms_iou)[:max_dets]  # sorted by score
    out = []
    for i in keep.tolist():
        x0, y0, x1, y1 = flat_boxes[i].tolist()
        out.append({"image_id": image_id, "category_id": category_ids[int(flat_classes[i])],
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(flat_scores[i])})
    return out


def coco_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> tuple[dict[str, float], dict[int, float]]:
    """pycocotools bbox evaluation -> ({AP, AP50, AP75}, {category id: AP50}).

    Categories without ground truth are left out of the per-class map (and of
    pycocotools' means)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = {"images": gt["images"], "annotations": gt["annotations"],
                           "categories": gt["categories"]}
        coco_gt.createIndex()
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}, {
                c["id"]: 0.0 for c in gt["categories"]
                if any(a["category_id"] == c["id"] for a in gt["annotations"])}
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # -1 marks "no ground truth"; pycocotools' overall means clamp it the same way.
    stats = [max(0.0, float(s)) for s in evaluator.stats[:3]]
    precision = evaluator.eval["precision"]  # [iou thresholds, recall points, classes, areas, maxDets]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[0, :, k, 0, -1]
        if (p > -1).any():
            per_class[int(cat_id)] = float(p[p > -1].mean())
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2]}, per_class


def _load(record: ImageRecord) -> Image.Image:
    image = load_rgb(record.path)
    if image.size != (record.width, record.height):
        raise ReactError(f"{record.path}: is {image.size[0]}x{image.size[1]}, the annotations "
                         f"say {record.width}x{record.height}")
    return image


def evaluate_detection(model: LoadedModel, data: DetectionData, text: torch.Tensor,
                       boxes: dict[int, np.ndarray] | None = None, region_features: str = REGION_MODES[0],
                       dense_size: int | None = None, nms_iou: float = DEFAULT_NMS_IOU,
                       batch_size: int = DEFAULT_BATCH_SIZE, dense_mode: str = DENSE_MODES[0]
                       ) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """Score ``boxes`` (default: the ground-truth boxes) of every image against
    ``text`` ([C, D] class embeddings, category order) and evaluate.

    Returns (metrics, per-class AP50 by class name, details)."""
    from downstream.tasks.dense import check_dense_mode

    check_dense_mode(dense_mode)
    if region_features not in REGION_MODES:
        raise ReactError(f"unknown --region-features {region_features!r} (choose from {', '.join(REGION_MODES)})")
    if not 0.0 < nms_iou <= 1.0:
        raise ReactError(f"--nms-iou must be in (0, 1], got {nms_iou}")
    if text.shape[0] != len(data.classnames):
        raise AssertionError("one text embedding per category expected")
    if region_features == "roi":
        from downstream.tasks.dense import tower_size, vision_tower

        vision_tower(model)  # the one-line error for towers without a value path, before any work
        dense_size = dense_size or tower_size(model)
    boxes = data.gt_boxes() if boxes is None else boxes
    scale = _logit_scale(model)
    results: list[dict[str, Any]] = []
    scored = 0
    todo = [r for r in data.images if len(boxes.get(r.id, ()))]
    step = batch_size if region_features == "roi" else max(1, batch_size // 4)
    with progress() as bar:
        task = bar.add_task(f"scoring boxes ({region_features})", total=len(todo), unit="img")
        for start in range(0, len(todo), step):
            records = todo[start : start + step]
            images = [_load(r) for r in records]
            chunk_boxes = [boxes[r.id] for r in records]
            if region_features == "roi":
                feats = roi_features(model, images, chunk_boxes, dense_size, dense_mode)
            else:
                feats = crop_features(model, images, chunk_boxes, batch_size)
            for record, image_boxes, image_feats in zip(records, chunk_boxes, feats):
                probs = (scale * image_feats @ text.T).softmax(dim=-1)
                results += detections_for_image(probs, image_boxes, record.id, data.category_ids, nms_iou)
                scored += len(image_boxes)
            bar.advance(task, len(records))
    metrics, per_class_ids = coco_ap(data.gt, results)
    per_image = matched_per_image(data, results)
    names = dict(zip(data.category_ids, data.classnames))
    per_class = {names[cid]: ap for cid, ap in per_class_ids.items()}
    metrics.update({"num_images": len(data.images), "num_boxes_scored": scored,
                    "num_gt_boxes": sum(1 for a in data.gt["annotations"] if not a.get("iscrowd", 0)),
                    "num_classes": len(data.classnames)})
    details = {"classes_without_gt": sorted(set(data.classnames) - set(per_class)),
               "detections": len(results), "dense_size": dense_size, "per_image": per_image}
    return metrics, per_class, details


def matched_per_image(data: DetectionData, results: list[dict[str, Any]]) -> dict[str, list]:
    """What AP50 needs per image, for intervals over images (downstream.tasks.ap50): each
    image's ground-truth count per class and each detection's image, class, score and match."""
    from downstream.tasks.ap50 import match_image

    cls_of = {cid: i for i, cid in enumerate(data.category_ids)}
    row_of = {im.id: i for i, im in enumerate(data.images)}
    gt = np.zeros((len(data.images), len(data.category_ids)), dtype=np.int64)
    truth: dict[int, list[tuple[list[float], int, bool]]] = {}
    for a in data.gt["annotations"]:
        x, y, w, h = a["bbox"]
        crowd = bool(a.get("iscrowd", 0))
        truth.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], cls_of[a["category_id"]], crowd))
        if not crowd:
            gt[row_of[a["image_id"]], cls_of[a["category_id"]]] += 1
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    out: dict[str, list] = {"image": [], "class": [], "score": [], "tp50": []}
    for image_id, dets in by_image.items():
        boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], dtype=np.float64)
        classes = np.asarray([cls_of[d["category_id"]] for d in dets])
        scores = np.asarray([d["score"] for d in dets], dtype=np.float64)
        own = truth.get(image_id, [])
        tp = match_image(boxes, classes, scores, np.asarray([t[0] for t in own], dtype=np.float64).reshape(-1, 4),
                         np.asarray([t[1] for t in own], dtype=np.int64), np.asarray([t[2] for t in own], dtype=bool))
        out["image"] += [row_of[image_id]] * len(dets)
        out["class"] += classes.tolist()
        out["score"] += [round(float(v), 6) for v in scores]
        out["tp50"] += tp.tolist()
    return {"gt": gt.tolist(), **out}
