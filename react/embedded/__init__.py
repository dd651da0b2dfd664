"""The embedded default: a real corpus from registry packages and a small base CLIP.

Where no CLIP weights or web corpus can be downloaded, this is the world the
whole pipeline runs on, through the same code paths as a real CLIP and LAION:

- sources.py: the registry packages (Debian's tuxpaint stamps, npm's Noto
  emoji), fetched by name and checked by SHA-256;
- corpus.py: the corpus directory (``react corpus fetch-embedded``) -- the
  deterministic split into pretraining, retrieval ("the web") and the held-out
  downstream task; categories.py maps stamp folders to the task's classes;
- base.py: the base CLIP trained on the pretraining part (``react base
  train-embedded``); cli.py: both commands' parsers.

Part of the core: it imports no stage (docs/embedded.md has the figures).
"""
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
