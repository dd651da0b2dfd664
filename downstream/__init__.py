"""Downstream evaluation of CLIP models (``react eval``).

Public API (loaded on first use, so importing the package stays cheap):

- ``build_classification_dataset(path, split="test")``: the embedded corpus,
  an ImageFolder tree, or a CLIP_benchmark webdataset directory;
- ``evaluate_zeroshot(model, dataset, templates=None, batch_size=64, num_workers=0)``:
  the result dict of the ``react eval`` contract;
- ``get_templates(name_or_file)``: prompt template sets (``imagenet``, ``simple``, ...).

Metrics live in ``downstream.metrics``; the command line in ``downstream.cli``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["build_classification_dataset", "evaluate_zeroshot", "get_templates"]

_LAZY = {
    "build_classification_dataset": "downstream.datasets",
    "evaluate_zeroshot": "downstream.zeroshot",
    "get_templates": "react.templates",
    "evaluate_linear_probe": "downstream.linear_probe_cmd",
    "build_captioned_dataset": "downstream.captioned",
    "evaluate_retrieval": "downstream.retrieval",
    "ensure_scenes": "downstream.scenes",
    "dense_features": "downstream.dense",
    "build_segmentation_dataset": "downstream.segdata",
    "evaluate_segmentation": "downstream.segmentation",
}

if TYPE_CHECKING:
    from downstream.datasets import build_classification_dataset
    from react.templates import get_templates
    from downstream.zeroshot import evaluate_zeroshot


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'downstream' has no attribute {name!r}")
