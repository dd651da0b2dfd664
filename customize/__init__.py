"""REACT customization: grow a base CLIP with gated blocks and train them on
retrieved image-text pairs, every original weight frozen.

Entry points: ``customize.train(TrainConfig(...))`` runs (or resumes) a
customization; ``customize.export(run_dir, out)`` writes a standalone model
directory; ``react.load_model`` loads both run directories and exports.
Heavy modules load on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "train", "export", "load_run"]


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from customize.config import TrainConfig

        return TrainConfig
    if name == "train":
        from customize.train import train

        return train
    if name in ("export", "load_run"):
        from customize import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)
