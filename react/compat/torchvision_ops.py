"""Make torchvision importable on a CPU-only torch.

The registry's torchvision 0.28.0 wheel is CUDA-linked. On a CPU torch its
native extension fails to load, and ``import torchvision`` then dies in
``_meta_registrations`` with ``operator torchvision::nms does not exist``.
Defining the two op schemas it needs (with a plain CPU kernel for nms) before
torchvision's first import lets it import; everything else (transforms, the
python roi_align path, model code) works without the extension.

Wherever torchvision's own extension loads (CUDA machines), this is a no-op.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

_LIB = None  # the fallback torch.library.Library; kept alive for the process


def _has_native_nms() -> bool:
    import torch

    try:
        torch.ops.torchvision.nms
    except (AttributeError, RuntimeError):
        return False
    return True


def _try_load_extension() -> bool:
    """Load torchvision's own ``_C`` library, as torchvision itself would."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    for lib in sorted(Path(spec.origin).parent.glob("_C*")):
        if lib.suffix in {".so", ".pyd", ".dylib"}:
            try:
                torch.ops.load_library(str(lib))
            except (OSError, RuntimeError, ImportError):
                return False
            return _has_native_nms()
    return False


def nms_cpu(boxes, scores, iou_threshold: float):
    """Greedy NMS; the same contract as ``torchvision.ops.nms``."""
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]
    areas = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    suppressed = torch.zeros(len(b), dtype=torch.bool)
    keep: list[int] = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = b[i + 1 :]
        lt = torch.maximum(rest[:, :2], b[i, :2])
        rb = torch.minimum(rest[:, 2:], b[i, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        iou = inter / (areas[i] + areas[i + 1 :] - inter).clamp(min=1e-12)
        suppressed[i + 1 :] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def ensure_torchvision_ops() -> str:
    """Return how torchvision's ops are provided: 'native' or 'fallback'."""
    global _LIB
    import torch

    if _LIB is not None:
        return "fallback"
    if _has_native_nms() or _try_load_extension():
        return "native"
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms_cpu, "CPU")
    _LIB = lib
    return "fallback"
