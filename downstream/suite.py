"""``react eval suite``: zero-shot on every task of the embedded evaluation suite.

The tasks (all in the corpus' task form, each with ``val`` and ``test`` halves):

- ``stamps``: the embedded corpus' own held-out stamps (the task customization targets);
- ``emoji-twemoji``: another vendor's emoji, grouped into 20 concrete classes;
- ``stamp-scenes``: the held-out stamps alone on textured scenes;
- ``openclipart``: the stamps' class names drawn by other artists (Open Clip Art), five
  times as many test images as ``stamps``.

(downstream.data.suite_tasks builds the last three.) One model is scored on each;
with ``--customized`` runs, the base and every run are scored and compared in
the ELEVATER-style report (downstream.report.suite).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from react.errors import ReactError

SUITE_TASKS = ("stamps", "emoji-twemoji", "stamp-scenes", "openclipart")


def task_dataset(corpus: Path, task: str) -> Path:
    """The dataset path of a suite task (built and cached on first use)."""
    if task == "stamps":
        return corpus
    from downstream.data.suite_tasks import ensure_task

    return ensure_task(corpus, task)


def score_suite(model, corpus: Path, split: str, tasks: tuple[str, ...] = SUITE_TASKS,
                batch_size: int = 64, num_workers: int = 0) -> dict:
    """One model's zero-shot results on every task: ``{task, model, dataset, split, metrics
    ({TASK: top1, ..., mean_top1}), per_class ({TASK/CLASS: recall}), tasks ({TASK: result})}``."""
    from downstream.tasks.zeroshot import evaluate_zeroshot
    from react.datasets import build_classification_dataset

    results = {}
    for task in tasks:
        dataset = build_classification_dataset(task_dataset(corpus, task), split)
        dataset.name = f"{task}:{split}"
        results[task] = evaluate_zeroshot(model, dataset, batch_size=batch_size, num_workers=num_workers)
    metrics = {task: r["metrics"]["top1"] for task, r in results.items()}
    metrics["mean_top1"] = sum(metrics.values()) / len(results)
    per_class = {f"{task}/{c}": v for task, r in results.items() for c, v in r["per_class"].items()}
    return {"task": "suite", "model": model.name, "dataset": f"embedded suite ({', '.join(tasks)})",
            "split": split, "metrics": metrics, "per_class": per_class, "tasks": results}


def _check_args(args: argparse.Namespace) -> tuple[Path, list[Path]]:
    from react.embedded.corpus import fetch_embedded

    if args.batch_size < 1:
        raise ReactError(f"--batch-size must be >= 1, got {args.batch_size}")
    unknown = [t for t in args.tasks if t not in SUITE_TASKS]
    if unknown:
        raise ReactError(f"unknown suite task {unknown[0]!r} (known: {', '.join(SUITE_TASKS)})")
    if len(set(args.tasks)) != len(args.tasks):
        raise ReactError("--tasks names a task twice")
    for option, name in (("--label", args.label), ("--customized-label", args.customized_label)):
        if not name or not all(ch.isalnum() or ch in "-_." for ch in name) or name.startswith("."):
            raise ReactError(f"{option} {name!r}: use letters, digits, '-', '_' or '.' (it names a file)")
    if args.label == args.customized_label:
        raise ReactError(f"--label and --customized-label are both {args.label!r}")
    runs = [Path(p) for p in args.customized or []]
    for run in runs:
        if not run.is_dir():
            raise ReactError(f"--customized {run}: not a model or run directory")
    if runs and not args.out:
        raise ReactError("--customized needs --out (the report is written there)")
    corpus = Path(args.corpus) if args.corpus else fetch_embedded()
    if not (corpus / "downstream.parquet").is_file():
        raise ReactError(f"--corpus {corpus}: not an embedded corpus directory (no downstream.parquet)")
    return corpus, runs


def run_suite(args: argparse.Namespace) -> int:
    from downstream.runners import check_device, resolve_workers
    from react.models import load_model
    from react.progress import console
    from react.schemas import write_text

    corpus, runs = _check_args(args)
    device = check_device(args.device)
    workers = resolve_workers(args.workers, device)
    tasks = tuple(args.tasks)
    for task in tasks:  # build (or find) every task before any model loads: bad data fails first
        task_dataset(corpus, task)
    out = Path(args.out) if args.out else None

    def score(spec: str | Path, name: str) -> dict:
        model = load_model(spec, pretrained=args.pretrained if spec == args.model else None, device=device)
        result = score_suite(model, corpus, args.split, tasks, args.batch_size, workers)
        if out:
            write_text(out / f"{name}.json", json.dumps(result, indent=2) + "\n")
        return result

    base = score(args.model, args.label)
    if not runs:
        for task, top1 in base["metrics"].items():
            print(f"{task:>16}  {100 * top1:5.1f} %")
        return 0
    from downstream.report.suite import compare, render_markdown, write_report

    customized = [score(run, f"{args.customized_label}-{i}") for i, run in enumerate(runs)]
    report = compare(base, customized, args.label, args.customized_label)
    report["corpus"] = str(corpus)
    json_path, _ = write_report(report, out)
    print(render_markdown(report))  # the result, on stdout (progress and logs are on stderr)
    console.log(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    return 0
