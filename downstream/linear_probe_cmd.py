"""``react eval linear-probe``: the command, its datasets and its result file."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from react.errors import ReactError

if TYPE_CHECKING:
    from downstream.datasets import ClassificationDataset
    from react.models import LoadedModel

DEFAULT_SHOTS = (5, 20, 50)
DEFAULT_SEEDS = 3
EPILOG = """\
Protocol: images are encoded once per split; each few-shot run draws SHOTS images per
class from the train split with its seed (classes with fewer use all theirs; the result
counts them), carves ~20% of those per class off as validation, picks the L2 strength
lambda there by a coarse sweep (1e-6..1e6, every 2 decades) and a finer one (every half
decade around the best), refits on all its images and scores the test split. The
full-shot run does the same with the whole train split.

The embedded corpus (downstream.parquet) has one split, as has an ImageFolder without
train/ and test/ (or val/) folders: each class is shuffled with seed 0, floor(n/2) of its
images train, the rest test; --train-split/--split are then ignored.
"""


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


def add_linear_probe(tasks: argparse._SubParsersAction) -> None:
    from downstream.cli import add_common_args

    p = tasks.add_parser(
        "linear-probe", help="few-shot and full-shot logistic regression on frozen image features",
        description="Linear probe (ELEVATER protocol): top-1 and mean per-class recall, full-shot "
                    "and few-shot (mean and sample std over seeds).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    p.add_argument("--train-split", default="train", metavar="SPLIT",
                   help="split the classifier is trained on (default: train)")
    p.add_argument("--shots", type=int, nargs="*", default=list(DEFAULT_SHOTS), metavar="K",
                   help="few-shot sizes, images per class (default: 5 20 50; none: full-shot only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[DEFAULT_SEEDS], metavar="S",
                   help="one number N: seeds 0..N-1; several numbers: those seeds (default: 3)")
    p.add_argument("--text-init", action="store_true",
                   help="language-augmented head: start from and regularize towards the class-name "
                        "text embeddings x the model's logit scale (large lambda = zero-shot)")
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help="prompt templates for --text-init (default: the dataset's own, else imagenet)")
    p.set_defaults(func=run_linear_probe)


def open_splits(path: str | Path, train_split: str = "train", split: str = "test"
                ) -> tuple[ClassificationDataset, ClassificationDataset | None, str]:
    """(train dataset, test dataset or None, the split rule in words). None:
    a dataset with one split (the embedded corpus, an ImageFolder without
    split folders), which ``evaluate_linear_probe`` halves per class."""
    from downstream.datasets import build_classification_dataset, detect_format

    root = Path(path).expanduser()
    if not root.exists():
        raise ReactError(f"dataset not found: {root}")
    if detect_format(root) == "embedded":
        return (build_classification_dataset(root, "test"), None,
                "embedded: per class floor(n/2) train, rest test (seed 0)")
    if train_split == split:
        raise ReactError(f"--train-split and --split are both {split!r}: the probe would be tested "
                         "on its training images")
    train = build_classification_dataset(root, train_split)
    test = build_classification_dataset(root, split)
    if getattr(train, "paths", None) is not None and train.paths == getattr(test, "paths", None):
        # An ImageFolder without split folders answers every split with the
        # whole tree; halve it rather than test on the training images.
        return (test, None, f"one split ({root.name} has no {train_split!r}/{split!r} folders): "
                            "per class floor(n/2) train, rest test (seed 0)")
    if train.classnames != test.classnames:
        raise ReactError(f"{root}: splits {train_split!r} and {split!r} have different classes "
                         f"({len(train.classnames)} vs {len(test.classnames)})")
    return train, test, f"{train_split} -> {split}"


def evaluate_linear_probe(model: LoadedModel, train_set: ClassificationDataset,
                          test_set: ClassificationDataset | None = None, rule: str = "",
                          shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = (0, 1, 2),
                          text_init: bool = False, templates: str | None = None,
                          batch_size: int = 64, num_workers: int = 0) -> dict:
    """The linear-probe result dict of the ``react eval`` contract for ``model``
    (datasets from ``open_splits``; ``test_set`` None halves ``train_set``)."""
    import time

    import numpy as np
    import torch

    from downstream.linear_probe import ProbeData, run_protocol, stratified_halves, text_prior
    from downstream.zeroshot import class_embeddings, encode_dataset, resolve_templates
    from react.progress import console, progress

    classnames = train_set.classnames
    if test_set is None:
        feats, labels = encode_dataset(model, train_set, batch_size, num_workers)
        train_idx, test_idx = stratified_halves(labels.numpy())
        train_x, train_y = feats[train_idx], labels[train_idx]
        test_x, test_y = feats[test_idx], labels[test_idx]
    else:
        train_x, train_y = encode_dataset(model, train_set, batch_size, num_workers,
                                          description="encoding train images")
        test_x, test_y = encode_dataset(model, test_set, batch_size, num_workers,
                                        description="encoding test images")
    prior, prompt_label = None, None
    if text_init:
        prompts, prompt_label = resolve_templates(train_set, templates)
        scale = float(model.model.logit_scale.detach().exp())
        prior = text_prior(class_embeddings(model, classnames, prompts), scale)
    data = ProbeData(train_x, train_y, test_x, test_y, len(classnames), prior)
    console.log(f"linear probe: {len(train_y)} train / {len(test_y)} test images, {len(classnames)} "
                f"classes ({rule}); shots {list(shots) or 'none'} x seeds {list(seeds)} + full-shot")
    start = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("fitting probes", total=len(shots) * len(seeds) + 1, unit="run")
        parts = run_protocol(data, shots, seeds, classnames, on_run=lambda: bar.advance(task))
    per_class_train = np.bincount(train_y.numpy(), minlength=len(classnames))
    return {
        "task": "linear-probe",
        "model": model.name,
        "dataset": train_set.name,
        "metrics": parts["metrics"],
        "per_class": parts["per_class"],
        "fewshot": parts["fewshot"],
        "linear_probe": {
            "split_rule": rule,
            "text_init": bool(text_init),
            "templates": prompt_label,
            "regularization": "mean CE + lambda/2 ||W - W0||^2 (W0 = text head with --text-init, else 0)",
            "full_shot_lambda": parts["full"]["lambda"],
            "full_shot_lambda_from": parts["full"]["lambda_from"],
            "full_shot_val_images": parts["full"]["val_images"],
            "min_train_images_per_class": int(per_class_train.min()),
            "std": "sample standard deviation over seeds (ddof=1)",
            "fit_seconds": round(time.perf_counter() - start, 2),
        },
    }


def print_linear_probe_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"linear-probe: {result['model']} on {result['dataset']}")
    for column in ("shots", "top-1 %", "mean per-class recall %", "lambda"):
        table.add_column(column, justify="right")
    for run in result["fewshot"]:
        lams = ", ".join(f"{x:.0e}" for x in run["lambda"])
        table.add_row(str(run["shots"]), f"{100 * run['top1_mean']:.2f} ± {100 * run['top1_std']:.2f}",
                      f"{100 * run['mean_per_class_recall_mean']:.2f} ± "
                      f"{100 * run['mean_per_class_recall_std']:.2f}", lams)
    m = result["metrics"]
    table.add_row("full", f"{100 * m['top1']:.2f}", f"{100 * m['mean_per_class_recall']:.2f}",
                  f"{result['linear_probe']['full_shot_lambda']:.0e}")
    Console().print(table)


def run_linear_probe(args: argparse.Namespace) -> int:
    from downstream.cli import check_device, resolve_workers, write_result
    from react.templates import get_templates
    from react.models import load_model
    from react.progress import console

    # Cheap checks before a model is loaded.
    if args.batch_size < 1:
        raise ReactError(f"--batch-size must be >= 1, got {args.batch_size}")
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
    if args.out:
        console.log(f"wrote {write_result(result, args.out)}")
    print_linear_probe_table(result)
    return 0
