"""Shared fixtures: a tiny native-text open_clip model, saved and reloaded
through the project's own checkpoint code."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import open_clip

    from react.models import save_model

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG)
    out = tmp_path_factory.mktemp("models") / "tiny"
    save_model(model, TINY_CFG, out, preprocess_cfg={"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from react.models import load_model

    return load_model(tiny_model_dir, device="cpu")
