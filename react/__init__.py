"""REACT core: model loading, data contracts, configuration and the CLI.

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
