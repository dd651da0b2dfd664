"""AP50 from per-image matches, so that a bootstrap can re-weight the images.

pycocotools gives AP over the whole evaluation set; an interval over images needs AP
on resampled sets, thousands of times. Matching a detection to a ground-truth box
depends only on its own image, so it is done once (``match_image``: COCO's greedy
rule at IoU 0.5 -- highest-scoring detection first, to the unmatched box it overlaps
most; a detection on a crowd region is ignored, not false). AP50 for any image weights
(``ap50``: a weight is how often the bootstrap drew the image) is then a weighted
precision-recall curve per class, interpolated at COCO's 101 recall points and
averaged over the classes with ground truth. With every weight 1 it is pycocotools'
AP50 (tested).
"""
from __future__ import annotations

import numpy as np

RECALL_POINTS = np.linspace(0.0, 1.0, 101)
IOU = 0.5


def _iou(a: np.ndarray, b: np.ndarray, crowd: bool = False) -> np.ndarray:
    """[len(a), len(b)] IoU of xyxy boxes; for crowd regions, intersection over a's area (COCO)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)[:, None]
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)[None, :]
    union = area_a if crowd else area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(det_boxes: np.ndarray, det_classes: np.ndarray, det_scores: np.ndarray,
                gt_boxes: np.ndarray, gt_classes: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Per detection of one image: 1 true positive, 0 false positive, -1 ignored (on a crowd region)."""
    out = np.zeros(len(det_boxes), dtype=np.int8)
    for c in np.unique(det_classes):
        dets = np.flatnonzero(det_classes == c)
        dets = dets[np.argsort(-det_scores[dets], kind="mergesort")]
        own = (gt_classes == c) & ~crowd
        gts, crowds = gt_boxes[own], gt_boxes[(gt_classes == c) & crowd]
        ious = _iou(det_boxes[dets], gts) if len(gts) else np.zeros((len(dets), 0))
        crowd_ious = _iou(det_boxes[dets], crowds, crowd=True) if len(crowds) else np.zeros((len(dets), 0))
        taken = np.zeros(len(gts), dtype=bool)
        for row, d in enumerate(dets):
            cand = np.where(taken, -1.0, ious[row])
            if len(cand) and cand.max() >= IOU:
                taken[int(np.argmax(cand))] = True
                out[d] = 1
            elif crowd_ious.shape[1] and crowd_ious[row].max() >= IOU:
                out[d] = -1
    return out


def ap50(stats: dict, weights: np.ndarray | None = None) -> float:
    """Mean AP50 over the classes with ground truth, each image counted ``weights[i]`` times.

    ``stats`` is a detection result's ``per_image``: ``gt`` [images, classes] counts of
    non-crowd boxes, and per detection ``image``, ``class``, ``score``, ``tp50``."""
    gt = np.asarray(stats["gt"], dtype=np.float64)
    w = np.ones(len(gt)) if weights is None else np.asarray(weights, dtype=np.float64)
    image, cls = np.asarray(stats["image"], dtype=np.int64), np.asarray(stats["class"], dtype=np.int64)
    score, tp = np.asarray(stats["score"], dtype=np.float64), np.asarray(stats["tp50"], dtype=np.int64)
    n_gt = w @ gt
    keep = (tp >= 0) & (w[image] > 0)
    aps = []
    for c in np.flatnonzero(n_gt > 0):
        sel = np.flatnonzero(keep & (cls == c))
        if not len(sel):  # ground truth but no detection of the class: AP 0
            aps.append(0.0)
            continue
        sel = sel[np.argsort(-score[sel], kind="mergesort")]
        dw = w[image[sel]]
        tps, fps = np.cumsum(dw * (tp[sel] == 1)), np.cumsum(dw * (tp[sel] == 0))
        recall = tps / n_gt[c]
        precision = np.maximum.accumulate((tps / (tps + fps))[::-1])[::-1]  # COCO's envelope
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        aps.append(float(np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0).mean()))
    return float(np.mean(aps)) if aps else 0.0
