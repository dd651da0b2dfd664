"""The REACT core: what every stage shares, and nothing stage-specific.

The lowest layer of the project (react < index < retrieval_service < download
< downstream < customize < demo). It holds:

- the data contracts between the stages, defined once -- the corpus form,
  embedding and index folder layouts, required columns, atomic writes and
  recovery of killed ones (schemas.py) -- and reading webdataset shards
  without decoding them up front (shards.py);
- model loading and saving for every kind of ``MODEL`` -- an open_clip name and
  tag, a model directory, an exported customization, a run directory
  (models.py; ``react.load_model``);
- the evaluation image-classification datasets in their three on-disk forms
  (datasets.py), shared by every stage that reads evaluation images;
- prompt templates (templates.py), image reading and the batched GPU/CPU
  decoder (images.py, batch_decode.py), decoding in DataLoader workers with
  one-line errors (loading.py), configuration and offline defaults
  (config.py), errors (``ReactError``: one line, exit 2), progress bars,
  Spark sessions (spark.py);
- the embedded world: the corpus built from registry packages and the small
  base CLIP (embedded/), and the torchvision fix for a CPU torch (compat/);
- the ``react`` command (cli.py), which assembles the sub-commands the stages
  register.

It imports no stage, not even by name in a string: stages plug in through the
entry points of ``pyproject.toml`` (commands, model architectures, run-directory
formats), which plugins.py looks up by group. tests/test_import_graph.py checks
this for every file.

Kept light on import (no torch): heavy modules load on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from react.compat import tv_hook as _tv_hook  # noqa: F401  (installs the torchvision fix)
from react.config import apply_offline_defaults as _apply_offline_defaults
from react.errors import ReactError

_apply_offline_defaults()

__version__ = "0.1.0"
__all__ = ["ReactError", "load_model", "__version__"]

if TYPE_CHECKING:
    from react.models import load_model


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from react.models import load_model

        return load_model
    raise AttributeError(name)
