"""The downstream stage: measure a CLIP model on transfer tasks, and compare models.

``react eval TASK`` reads a model (an open_clip name + tag, a model directory,
or a customization run) and a dataset (the embedded corpus, an ImageFolder, a
CLIP_benchmark webdataset, COCO instances, Karpathy captions, segmentation
masks) and writes one result JSON (react.schemas.RESULT_KEYS). ``react report``
reads result JSONs (plus the retrieved subset and the demo's summary.json) and
writes a report directory: report.md with PNGs, and a self-contained report.html.

Layout: ``tasks/`` one module per task (zeroshot, linear_probe, retrieval,
detection, segmentation; dense.py for MaskCLIP features, metrics.py for
classification metrics); ``data/`` the dataset readers; ``report/`` the
report; ``cli.py`` the parsers, ``runners.py`` the commands, ``tables.py`` what
they print, ``defaults.py`` every default once.

Public API (loaded on first use, so importing the package stays cheap):
``build_classification_dataset``, ``open_splits``, ``build_captioned_dataset``,
``build_segmentation_dataset``, ``ensure_scenes``, ``evaluate_zeroshot``,
``evaluate_linear_probe``, ``evaluate_retrieval``, ``evaluate_detection``,
``evaluate_segmentation``, ``dense_features``, ``write_report``, and
``get_templates`` (prompt template sets, from react.templates).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "build_classification_dataset": "react.datasets",
    "open_splits": "react.datasets",
    "build_captioned_dataset": "downstream.data.captioned",
    "build_segmentation_dataset": "downstream.data.segmentation",
    "ensure_scenes": "downstream.data.scenes",
    "evaluate_zeroshot": "downstream.tasks.zeroshot",
    "evaluate_linear_probe": "downstream.tasks.linear_probe",
    "evaluate_retrieval": "downstream.tasks.retrieval",
    "evaluate_detection": "downstream.tasks.detection",
    "evaluate_segmentation": "downstream.tasks.segmentation",
    "dense_features": "downstream.tasks.dense",
    "write_report": "downstream.report.build",
    "get_templates": "react.templates",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from downstream.data.captioned import build_captioned_dataset
    from react.datasets import build_classification_dataset, open_splits
    from downstream.data.scenes import ensure_scenes
    from downstream.data.segmentation import build_segmentation_dataset
    from downstream.report.build import write_report
    from downstream.tasks.dense import dense_features
    from downstream.tasks.detection import evaluate_detection
    from downstream.tasks.linear_probe import evaluate_linear_probe
    from downstream.tasks.retrieval import evaluate_retrieval
    from downstream.tasks.segmentation import evaluate_segmentation
    from downstream.tasks.zeroshot import evaluate_zeroshot
    from react.templates import get_templates


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'downstream' has no attribute {name!r}")
