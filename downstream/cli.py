"""``react eval TASK``: downstream evaluation commands.

Each task adds its own sub-command through a function in ``TASKS``; they share
the model/dataset/output options from ``add_common_args``. Heavy imports
(torch, open_clip) happen inside the ``run_*`` functions so ``react --help``
stays fast.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable

from react.errors import ReactError

DEFAULT_BATCH_SIZE = 64


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options every evaluation task takes: which model, which data, where to write."""
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="open_clip model name (with --pretrained), a model directory "
                             "(open_clip_config.json + open_clip_model.safetensors)")
    parser.add_argument("--pretrained", default=None, metavar="TAG|PATH",
                        help="pretrained tag or checkpoint file for an open_clip model name")
    parser.add_argument("--dataset", required=True, metavar="DATASET",
                        help="corpus directory (downstream.parquet), ImageFolder directory, "
                             "or CLIP_benchmark webdataset directory (classnames.txt + SPLIT/*.tar)")
    parser.add_argument("--split", default="test", metavar="SPLIT",
                        help="dataset split to evaluate (default: test; ImageFolder falls back to val)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"images per forward pass (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="image-decoding worker processes (default: 0 on CPU, up to 8 on GPU)")
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    parser.add_argument("--out", default=None, metavar="RESULT.json",
                        help="write the result JSON here (atomically); without it, only print")


def _add_zeroshot(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "zeroshot", help="zero-shot classification with prompt-ensemble class embeddings",
        description="Zero-shot classification: top-1, top-5 and mean per-class recall.",
    )
    add_common_args(p)
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help="prompt templates: imagenet, simple, classname, or a file with one template per "
                        "line using {} or {c} (default: the dataset's own if it has them, else imagenet)")
    p.set_defaults(func=run_zeroshot)


# Later tasks (linear-probe, retrieval, detection, segmentation) append here.
TASKS: list[Callable[[argparse._SubParsersAction], None]] = [_add_zeroshot]

from downstream.linear_probe_cmd import add_linear_probe  # noqa: E402

TASKS.append(add_linear_probe)

from downstream.retrieval_cmd import add_retrieval  # noqa: E402

TASKS.append(add_retrieval)

from downstream.detection_cmd import add_detection_parser  # noqa: E402

TASKS.append(add_detection_parser)

from downstream.segmentation_cmd import add_segmentation  # noqa: E402

TASKS.append(add_segmentation)


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` and its task sub-commands on the top-level subparsers."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a model on a downstream task",
        description="Evaluate a model on a downstream task; writes a result JSON (see --out).",
    )
    tasks = parser.add_subparsers(dest="eval_task", metavar="TASK", required=True)
    for add in TASKS:
        add(tasks)
    return parser


# The spelling react/cli.py looks for on every stage module.
add_parsers = add_eval_parser


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
    from react.schemas import RESULT_KEYS, write_text

    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:  # a bug, not user input: keep the traceback
        raise AssertionError(f"result lacks {missing}")
    return write_text(out, json.dumps(result, indent=2) + "\n")


def print_result(result: dict, headline: dict[str, str], per_class: str, worst: int = 5) -> None:
    """A result's headline figures (column -> formatted value), then its
    ``worst`` classes by the per-class metric named ``per_class``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['task']}: {result['model']} on {result['dataset']}")
    for column in headline:
        table.add_column(column, justify="right")
    table.add_row(*headline.values())
    console = Console()
    console.print(table)
    ranked = sorted(result["per_class"].items(), key=lambda kv: (kv[1], kv[0]))[:worst]
    if ranked:
        low = Table(title=f"{len(ranked)} worst classes")
        low.add_column("class")
        low.add_column(f"{per_class} %", justify="right")
        for name, value in ranked:
            low.add_row(name, f"{100 * value:.1f}")
        console.print(low)


def print_classification_table(result: dict, worst: int = 5) -> None:
    """Headline metrics in %, then the classes the model gets wrong most."""
    m = result["metrics"]
    print_result(result, {"top-1 %": f"{100 * m['top1']:.2f}", "top-5 %": f"{100 * m['top5']:.2f}",
                          "mean per-class recall %": f"{100 * m['mean_per_class_recall']:.2f}",
                          "images": str(m["num_images"]), "classes": str(m["num_classes"])}, "recall", worst)


def run_zeroshot(args: argparse.Namespace) -> int:
    from downstream.datasets import build_classification_dataset
    from react.templates import get_templates
    from downstream.zeroshot import evaluate_zeroshot
    from react.models import load_model
    from react.progress import console

    # Validate the cheap inputs before loading a model.
    if args.batch_size < 1:
        raise ReactError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.templates:
        get_templates(args.templates)
    device = check_device(args.device)
    workers = resolve_workers(args.workers, device)
    dataset = build_classification_dataset(args.dataset, split=args.split)
    model = load_model(args.model, pretrained=args.pretrained, device=device)
    result = evaluate_zeroshot(model, dataset, templates=args.templates,
                               batch_size=args.batch_size, num_workers=workers)
    if args.out:
        path = write_result(result, args.out)
        console.log(f"wrote {path}")
    print_classification_table(result)
    return 0
