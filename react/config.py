"""Process-wide settings: cache location and the offline guarantees."""
from __future__ import annotations

import os
from pathlib import Path

# The image decoders of react.batch_decode, as --decoder names them (here, free of
# torch, so that the stages' parsers can offer them without importing it).
DECODERS = ("auto", "gpu", "cpu", "pil")
DEFAULT_DECODER = "auto"  # gpu on a CUDA device, else pil


def cache_dir() -> Path:
    """Where fetched sources, the embedded corpus and the base model live."""
    root = os.environ.get("REACT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "react"
    )
    return Path(root)


def apply_offline_defaults() -> None:
    """Keep third-party libraries from phoning home.

    albumentations (imported by img2dataset) checks for updates over the
    internet unless told not to; wandb must stay off; HF telemetry off. These
    are defaults: a user's explicit setting wins.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_DISABLED", "true")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Classification datasets (react.datasets): the split evaluated, and the split a linear probe trains on.
DEFAULT_SPLIT = "test"
DEFAULT_TRAIN_SPLIT = "train"
