"""Stage: subset download -- a retrieved subset (urls + captions) to training
shards, through img2dataset, without ever storing the whole corpus
(``react download``; the CLI is download/cli.py).

Reads a subset parquet or CSV with ``url`` and ``caption`` (``react retrieve``
writes one), or with ``--local-corpus`` the images of a corpus folder on disk.
Writes a shards folder: ``{00000..N}.tar`` (``.jpg``, ``.txt``, ``.json``),
img2dataset's ``*_stats.json`` and per-shard parquet, ``sizes.json`` and
``download.json`` (manifest and summary).

Public functions (the door, imported lazily): ``download_subset(subset, out,
...)`` is what ``react download`` runs; ``DownloadOptions`` holds its
img2dataset settings and their defaults. Its steps, one module each:

- ``inputs``: read and validate the subset (parquet or CSV with ``url`` and
  ``caption``; kept columns; unique keys) and digest its rows;
- ``shardsdir``: the output folder -- manifest, shard verification (a truncated
  tar is caught, never used), atomic commits, ``sizes.json``;
- ``runner``: one img2dataset run ("round") into a staging folder, committing
  each shard as it completes;
- ``local``: ``--local-corpus``, the same run fed from files on disk;
- ``spark``: ``--distributor pyspark``'s session (local[N] or ``--spark-master``);
- ``summary``: outcome per reason and per class, as a table and JSON;
- ``safety`` / ``safety_classifier``: ``--safety``, off by default -- LAION's
  punsafe/NSFW columns filtered before the fetch, or a packaged image scorer
  (``register_scorer``) whose unsafe images are taken out of the shards;
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
