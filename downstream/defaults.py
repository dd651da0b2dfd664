"""The evaluation defaults, one definition each.

The task code (downstream.tasks, downstream.data) and the command line
(downstream.cli) both read these, so a default shown by ``react eval TASK
--help`` is the one a function uses when called from Python. Standard library
only: ``react --help`` imports this module and must not pull in torch.
"""
from __future__ import annotations

from react.config import DEFAULT_SPLIT, DEFAULT_TRAIN_SPLIT  # noqa: F401  (defined with the dataset contract)

# Every task
DEFAULT_BATCH_SIZE = 64          # images per forward pass

# linear-probe
DEFAULT_SHOTS = (5, 20, 50)      # few-shot sizes, images per class
DEFAULT_SEEDS = 3                # few-shot runs per size: seeds 0..DEFAULT_SEEDS-1

# detection
REGION_MODES = ("roi", "crop")   # how a box becomes a feature; the first is the default
DEFAULT_NMS_IOU = 0.5            # IoU threshold of the per-class NMS

# composed scenes of the embedded corpus (detection, segmentation)
DEFAULT_SCENES = 200             # number of scenes
DEFAULT_SCENE_SEED = 0

# segmentation (and the dense features behind roi detection)
DENSE_MODES = ("maskclip", "value", "tokens")                  # last-block path; the first is the default
BACKGROUND_MODES = ("threshold", "prompts", "class")  # how 'background' is scored; the first is the default
DEFAULT_DENOISE_THRESHOLD = 0.5
DEFAULT_BACKGROUND_THRESHOLD = 0.3
DEFAULT_IGNORE_INDEX = 255       # mask label not scored, unless meta.json names another
