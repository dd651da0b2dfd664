"""Subset download: a retrieved subset (urls + captions) to training shards,
through img2dataset, without ever storing the whole corpus.

One entry point, ``download_subset(subset, out, ...)`` (what ``react download``
runs). Its steps, one module each:

- ``inputs``: read and validate the subset (parquet or CSV with ``url`` and
  ``caption``; kept columns; unique keys) and digest its rows;
- ``shardsdir``: the output folder -- manifest, shard verification (a truncated
  tar is caught, never used), atomic commits, ``sizes.json``;
- ``runner``: one img2dataset run ("round") into a staging folder, committing
  each shard as it completes;
- ``local``: ``--local-corpus``, the same run fed from files on disk;
- ``spark``: ``--distributor pyspark``'s session (local[N] or ``--spark-master``);
- ``summary``: outcome per reason and per class, as a table and JSON;
- ``loopback``: a corpus served on loopback as "the web" (the demo).
"""
from __future__ import annotations

from typing import Any

__all__ = ["download_subset", "DownloadOptions"]

_LAZY = {"download_subset": "download.pipeline", "DownloadOptions": "download.options"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'download' has no attribute {name!r}")
