"""Classification metrics: pure functions over torch tensors or numpy arrays.

Every function returns plain Python numbers (or a tensor for the confusion
matrix) so results go straight into JSON. Fractions are in [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | Sequence


def _as_long(values: ArrayLike, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if tensor.dim() != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor.long().cpu()


def _as_logits(logits: ArrayLike) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    if tensor.dim() != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(tensor.shape)}")
    return tensor.float().cpu()


def _check_same_length(a: torch.Tensor, b: torch.Tensor) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions for {len(b)} labels")
    if len(a) == 0:
        raise ValueError("no samples")


def topk_accuracy(logits: ArrayLike, labels: ArrayLike, k: int = 1) -> float:
    """Fraction of samples whose label is among the k highest scores.

    ``k`` larger than the number of classes is clamped (every label is then
    in the top k), so callers may ask for top-5 on a 3-class task."""
    scores, targets = _as_logits(logits), _as_long(labels, "labels")
    _check_same_length(scores, targets)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == targets[:, None]).any(dim=1).float().mean())


def confusion_matrix(preds: ArrayLike, labels: ArrayLike, num_classes: int) -> torch.Tensor:
    """[num_classes, num_classes] counts; rows are true labels, columns predictions."""
    p, t = _as_long(preds, "preds"), _as_long(labels, "labels")
    _check_same_length(p, t)
    for name, v in (("preds", p), ("labels", t)):
        if v.min() < 0 or v.max() >= num_classes:
            raise ValueError(f"{name} outside [0, {num_classes}): {int(v.min())}..{int(v.max())}")
    flat = t * num_classes + p
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_recall(
    preds: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    classnames: Sequence[str] | None = None,
) -> dict:
    """Recall of each class that occurs in ``labels`` (absent classes have none).

    Keys are class indices, or names when ``classnames`` is given."""
    if classnames is not None and len(classnames) != num_classes:
        raise ValueError(f"{len(classnames)} class names for {num_classes} classes")
    cm = confusion_matrix(preds, labels, num_classes)
    support = cm.sum(dim=1)
    out = {}
    for c in range(num_classes):
        if support[c] > 0:
            key = classnames[c] if classnames is not None else c
            out[key] = float(cm[c, c]) / float(support[c])
    return out


def mean_per_class_recall(preds: ArrayLike, labels: ArrayLike, num_classes: int) -> float:
    """Balanced accuracy: the mean of per-class recalls over classes present in ``labels``."""
    recalls = per_class_recall(preds, labels, num_classes)
    return float(sum(recalls.values()) / len(recalls))
