"""The ``func`` of each ``react eval TASK`` and of ``react report``: check the
cheap inputs, open the data, load the model, run the task, write and print the
result. The parsers are in downstream.cli; the work in downstream.tasks.

Heavy imports (torch, open_clip) stay inside the functions so that building
the parsers (``react --help``) stays fast.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from react.errors import ReactError

if TYPE_CHECKING:
    import numpy as np

    from downstream.data.coco import DetectionData


# --- shared glue --------------------------------------------------------------------

def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ReactError(f"--batch-size must be >= 1, got {batch_size}")


def check_device(device: str | None) -> str | None:
    """A device torch knows and this machine has, or ReactError."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ReactError(f"unknown --device {device!r} (e.g. cpu, cuda, cuda:1)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ReactError(f"--device {device}: no CUDA device available here")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ReactError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_workers(requested: int | None, device: str | None) -> int:
    """Decoding in the main process is fine on CPU (the model is the bottleneck);
    a GPU outruns one decoder, so use a few workers there."""
    if requested is not None:
        if requested < 0:
            raise ReactError(f"--workers must be >= 0, got {requested}")
        return requested
    import torch

    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if on_gpu else 0


def write_result(result: dict, out: str | os.PathLike) -> Path:
    """The result JSON of the ``react eval`` contract, written atomically."""
    from react.schemas import RESULT_KEYS, write_text

    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:  # a bug, not user input: keep the traceback
        raise AssertionError(f"result lacks {missing}")
    return write_text(out, json.dumps(result, indent=2) + "\n")


def _save(result: dict, out: str | None) -> None:
    if out:
        from react.progress import console

        console.log(f"wrote {write_result(result, out)}")


# --- zeroshot -----------------------------------------------------------------------

def run_zeroshot(args: argparse.Namespace) -> int:
    from react.datasets import build_classification_dataset
    from downstream.tables import print_classification_table
    from downstream.tasks.zeroshot import evaluate_zeroshot
    from react.models import load_model
    from react.templates import get_templates

    # Validate the cheap inputs before loading a model.
    check_batch_size(args.batch_size)
    if args.templates:
        get_templates(args.templates)
    device = check_device(args.device)
    workers = resolve_workers(args.workers, device)
    dataset = build_classification_dataset(args.dataset, split=args.split)
    model = load_model(args.model, pretrained=args.pretrained, device=device)
    result = evaluate_zeroshot(model, dataset, templates=args.templates,
                               batch_size=args.batch_size, num_workers=workers)
    _save(result, args.out)
    print_classification_table(result)
    return 0


# --- linear-probe -------------------------------------------------------------------

def parse_seeds(values: Sequence[int]) -> list[int]:
    """One number N means seeds 0..N-1; two or more are the seeds themselves."""
    if not values:
        raise ReactError("--seeds needs a count or a list of seeds")
    if len(values) == 1:
        if values[0] < 1:
            raise ReactError(f"--seeds {values[0]}: need at least one seed")
        return list(range(values[0]))
    if len(set(values)) != len(values):
        raise ReactError(f"--seeds lists a seed twice: {' '.join(map(str, values))}")
    return list(values)


def check_shots(shots: Sequence[int]) -> list[int]:
    bad = [k for k in shots if k < 1]
    if bad:
        raise ReactError(f"--shots must be >= 1, got {bad[0]}")
    return sorted(set(shots))


def run_linear_probe(args: argparse.Namespace) -> int:
    from react.datasets import open_splits
    from downstream.tables import print_linear_probe_table
    from downstream.tasks.linear_probe import evaluate_linear_probe
    from react.models import load_model
    from react.templates import get_templates

    # Cheap checks before a model is loaded.
    check_batch_size(args.batch_size)
    shots, seeds = check_shots(args.shots), parse_seeds(args.seeds)
    if args.templates:
        get_templates(args.templates)
    device = check_device(args.device)
    workers = resolve_workers(args.workers, device)
    # Bad paths and splits fail before the model loads.
    train_set, test_set, rule = open_splits(args.dataset, args.train_split, args.split)
    model = load_model(args.model, pretrained=args.pretrained, device=device)
    result = evaluate_linear_probe(model, train_set, test_set, rule, shots, seeds,
                                   args.text_init, args.templates, args.batch_size, workers)
    _save(result, args.out)
    print_linear_probe_table(result)
    return 0


# --- retrieval ----------------------------------------------------------------------

def run_retrieval(args: argparse.Namespace) -> int:
    from downstream.data.captioned import build_captioned_dataset
    from downstream.tables import print_retrieval_table
    from downstream.tasks.retrieval import evaluate_retrieval
    from react.models import load_model

    check_batch_size(args.batch_size)
    device = check_device(args.device)
    workers = resolve_workers(args.workers, device)
    dataset = build_captioned_dataset(args.dataset, split=args.split, images=args.images)
    model = load_model(args.model, pretrained=args.pretrained, device=device)
    result = evaluate_retrieval(model, dataset, batch_size=args.batch_size, num_workers=workers)
    _save(result, args.out)
    print_retrieval_table(result)
    return 0


# --- detection ----------------------------------------------------------------------

def _read_classnames(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReactError(f"cannot read --classnames {path}: {exc.__class__.__name__}") from None
    return [line.strip() for line in lines if line.strip()]


def _detection_data(args: argparse.Namespace
                    ) -> tuple[DetectionData, str | None, list[str], dict[int, np.ndarray] | None, dict[str, int]]:
    """(dataset, --templates as resolved, the templates, proposals or None for
    the ground truth, proposal counts). An embedded corpus stands for its
    composed scenes (built once) and lends them its own templates."""
    from downstream.data.coco import load_instances, load_proposals, resolve_detection_dataset
    from downstream.data.scenes import ensure_scenes, is_embedded_corpus
    from react.schemas import TEMPLATES_FILE
    from react.templates import get_templates

    classnames = _read_classnames(args.classnames) if args.classnames else None
    templates_arg = args.templates
    dataset_name = None
    if is_embedded_corpus(args.dataset):
        corpus = Path(args.dataset)
        scenes = ensure_scenes(corpus, n=args.scenes, seed=args.scene_seed, split=args.split)
        instances, images = resolve_detection_dataset(scenes)
        dataset_name = f"{corpus.resolve().name}-scenes:{args.split}"
        if templates_arg is None and (corpus / TEMPLATES_FILE).is_file():
            templates_arg = str(corpus / TEMPLATES_FILE)
    else:
        instances, images = resolve_detection_dataset(args.dataset, args.images)
    templates = get_templates(templates_arg)
    data = load_instances(instances, images, classnames)
    if dataset_name:
        data.name = dataset_name
    proposals, proposal_counts = (None, {}) if args.boxes == "gt" else load_proposals(args.boxes, data)
    return data, templates_arg, templates, proposals, proposal_counts


def run_detection(args: argparse.Namespace) -> int:
    from downstream.tables import print_detection_table
    from downstream.tasks.detection import evaluate_detection
    from downstream.tasks.zeroshot import class_embeddings
    from react.models import load_model
    from react.templates import describe_templates

    # The cheap checks first, before scenes or a model are built.
    check_batch_size(args.batch_size)
    if args.dense_size is not None and args.dense_size < 1:
        raise ReactError(f"--dense-size must be >= 1, got {args.dense_size}")
    if not 0.0 < args.nms_iou <= 1.0:
        raise ReactError(f"--nms-iou must be in (0, 1], got {args.nms_iou}")
    device = check_device(args.device)
    data, templates_arg, templates, proposals, proposal_counts = _detection_data(args)

    model = load_model(args.model, pretrained=args.pretrained, device=device)
    start = time.perf_counter()
    text = class_embeddings(model, data.classnames, templates)
    metrics, per_class, details = evaluate_detection(
        model, data, text, boxes=proposals, region_features=args.region_features,
        dense_size=args.dense_size, nms_iou=args.nms_iou, batch_size=args.batch_size, dense_mode=args.dense_mode)
    per_image = details.pop("per_image")
    result = {
        "task": "detection", "model": model.name, "dataset": data.name,
        "metrics": metrics, "per_class": per_class,
        "settings": {"boxes": args.boxes, "region_features": args.region_features,
                     "dense_size": details.pop("dense_size"), "dense_mode": args.dense_mode, "nms_iou": args.nms_iou,
                     "templates": describe_templates(templates_arg), "num_templates": len(templates)},
        "counts": {**data.counts, **proposal_counts, **details},
        "per_image": per_image,
        "seconds": round(time.perf_counter() - start, 2),
    }
    _save(result, args.out)
    print_detection_table(result)
    return 0


# --- segmentation -------------------------------------------------------------------

def _segmentation_templates(choice: str | None, own: list[str] | None, name: str) -> tuple[list[str], str]:
    """(templates, their label): --templates, else the dataset's own, else the default set."""
    from react.templates import DEFAULT_TEMPLATES, describe_templates, get_templates

    if choice:
        return get_templates(choice), describe_templates(choice)
    if own:
        return own, f"{name} (dataset's own)"
    return get_templates(DEFAULT_TEMPLATES), DEFAULT_TEMPLATES


def run_segmentation(args: argparse.Namespace) -> int:
    from downstream.data.segmentation import build_segmentation_dataset
    from downstream.tables import print_segmentation_table
    from downstream.tasks.segmentation import evaluate_segmentation
    from react.models import load_model

    # Cheap inputs first, before a model is loaded.
    if args.input_size is not None and args.input_size < 1:
        raise ReactError(f"--input-size must be >= 1, got {args.input_size}")
    for name, value in (("--denoise-threshold", args.denoise_threshold),
                        ("--background-threshold", args.background_threshold)):
        if not 0 < value < 1:
            raise ReactError(f"{name} must lie in (0, 1), got {value}")
    device = check_device(args.device)
    dataset = build_segmentation_dataset(args.dataset, split=args.split, ignore_index=args.ignore_index)
    templates, label = _segmentation_templates(args.templates, dataset.templates, dataset.name)
    model = load_model(args.model, pretrained=args.pretrained, device=device)
    result = evaluate_segmentation(
        model, dataset, templates, templates_label=label, input_size=args.input_size, mode=args.dense_mode,
        key_smoothing=args.key_smoothing, prompt_denoising=args.prompt_denoising,
        denoise_threshold=args.denoise_threshold, background=args.background,
        background_threshold=args.background_threshold,
    )
    _save(result, args.out)
    print_segmentation_table(result)
    return 0


# --- report -------------------------------------------------------------------------

def run_report(args: argparse.Namespace) -> int:
    from downstream.report.build import REPORT_HTML, REPORT_MD, write_report

    out = write_report(args.results, args.out, labels=args.label, base=args.base, subset_path=args.subset,
                       summary_path=args.summary, title=args.title)
    print(f"report: {out / REPORT_HTML}")
    print(f"markdown: {out / REPORT_MD}")
    return 0
