"""Names and defaults shared by the CLI and the trainer, kept free of heavy
imports so that ``react --help`` never loads torch."""
from __future__ import annotations

MODES = ("gated-image", "locked-text", "locked-image", "full")
DEFAULT_MODE = "gated-image"
AUGMENTATIONS = ("light", "reference", "none")
DEFAULT_AUGMENT = "light"
DEFAULT_GAMMA = 0.9  # the paper's setting for classification tasks
DEFAULT_MLP_RATIO = 4.0  # the reference configurations'
