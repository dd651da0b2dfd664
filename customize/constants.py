"""Names and defaults shared by the CLI and the trainer, each defined once,
kept free of heavy imports so that ``react --help`` never loads torch.
``TrainConfig`` (customize.config) takes its defaults from here and the
CLI (customize/cli.py) reads them from ``TrainConfig``."""
from __future__ import annotations

MODES = ("gated-image", "locked-text", "locked-image", "full")
DEFAULT_MODE = "gated-image"
AUGMENTATIONS = ("light", "reference", "none")
DEFAULT_AUGMENT = "light"
DEFAULT_GAMMA = 0.9  # the paper's setting for classification tasks
DEFAULT_MLP_RATIO = 4.0  # the reference configurations'
GPU_WORKERS = 6  # image-decoding workers on a GPU when --workers is not given (0 on CPU)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # autocast
DEFAULT_PRECISION = "auto"  # bf16 on CUDA, fp32 on CPU
