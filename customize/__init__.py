"""Stage: customization -- grow a base CLIP with gated blocks and train them on
retrieved image-text pairs, every original weight frozen (``react customize``,
``react export``; the CLI is customize/cli.py).

Reads a base model (open_clip name or model directory) and the shards folder
``react download`` wrote (``{00000..N}.tar`` + ``sizes.json``). Writes a run
directory (``react_run.json``, ``checkpoints/``, ``log.jsonl``, ``cache/``) and,
on export, a standalone model directory.

Public functions (the door; heavy modules load on first use):
``train(TrainConfig(...)) -> summary`` runs or resumes a run;
``export(run_dir, out)`` writes the standalone model; ``load_run(run_dir)``
loads a run as a model (``react.load_model`` accepts both).
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
