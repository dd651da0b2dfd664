"""The torchvision CPU fix: imports work, nms is correct, subprocesses get it."""
import subprocess
import sys

import torch

from react.compat.torchvision_ops import ensure_torchvision_ops, nms_cpu


def test_torchvision_and_open_clip_import():
    import open_clip  # noqa: F401
    import torchvision  # noqa: F401

    assert ensure_torchvision_ops() in {"native", "fallback"}


def test_nms_cpu_matches_greedy_definition():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.5]], dtype=torch.float)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # Box 3 wins (0.95), suppresses 0 (IoU .95) and 1 (IoU ~.66); 2 is disjoint.
    assert nms_cpu(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms_cpu(boxes, scores, 0.99).tolist() == [3, 0, 1, 2]
    assert nms_cpu(torch.empty(0, 4), torch.empty(0), 0.5).numel() == 0


def test_registered_op_matches_kernel():
    import torchvision  # noqa: F401

    boxes = torch.rand(50, 2) * 50
    boxes = torch.cat([boxes, boxes + torch.rand(50, 2) * 20 + 1], dim=1)
    scores = torch.rand(50)
    assert torch.equal(torch.ops.torchvision.nms(boxes, scores, 0.3), nms_cpu(boxes, scores, 0.3))


def test_fresh_interpreter_imports_torchvision_without_react():
    """The venv-wide .pth hook covers processes that never import react
    (img2dataset workers, service workers)."""
    code = "import torchvision, torchvision.transforms; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "ok"
