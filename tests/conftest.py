"""Shared fixtures: a tiny native-text open_clip model, saved and reloaded
through the project's own checkpoint code."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw

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


@pytest.fixture()
def stamp_corpus(tmp_path: Path) -> Path:
    """An embedded-corpus-shaped folder of six drawn stamps, two a class (one per half):
    what detection and segmentation compose their scenes from."""
    root = tmp_path / "corpus"
    (root / "cutouts").mkdir(parents=True)
    keys, labels = [], []
    classes = ["red disc", "green square", "blue bar"]
    # two stamps a class: one for each half (val, test) of the held-out task
    for i, (label, colour) in enumerate([("red disc", (220, 30, 30)), ("green square", (30, 200, 30)),
                                         ("blue bar", (30, 30, 220))] * 2):
        bar = label == "blue bar"
        im = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
        ImageDraw.Draw(im).rectangle([3, 3 + 10 * bar, 46 - 4 * (i > 2), 36 - 10 * bar], fill=(*colour, 255))
        im.save(root / "cutouts" / f"k{i}.png")
        keys.append(f"k{i}")
        labels.append(label)
    pq.write_table(pa.table({"key": keys, "label": labels}), root / "downstream.parquet")
    (root / "downstream_classes.txt").write_text("\n".join(classes) + "\n")
    (root / "downstream_templates.txt").write_text("a {}.\na picture of a {}.\n")
    return root
