"""``react report``: result files of several models -> one comparison report
(``report.md`` + PNGs beside it, and a self-contained ``report.html``).

The directory is written atomically: built in a temporary sibling and renamed
over ``--out`` only when every file is in place.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from react.errors import ReactError

if TYPE_CHECKING:
    import numpy as np

    from downstream.report import Collection, Result
    from downstream.report_html import Block

REPORT_MD, REPORT_HTML = "report.md", "report.html"


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="compare models' result files in a Markdown + HTML report",
        description="Put the results of several models (base, customized, controls) side by side: one table "
                    "per task and dataset with each model's gain over the base (in points), a sorted per-class "
                    "gain chart for classification (and any task with per-class numbers), few-shot curves for "
                    "linear-probe results, and per-class similarity histograms of the retrieved subset. Writes "
                    "REPORT_DIR/report.md (PNGs beside it) and REPORT_DIR/report.html (figures inlined, no "
                    "external references).",
        epilog="example: react report base=out/demo/results/base_zeroshot.json "
               "gated=out/demo/results/customized_zeroshot.json --subset out/demo/subset.parquet "
               "--summary out/demo/summary.json --out out/demo/report",
    )
    p.add_argument("results", nargs="+", metavar="[LABEL=]RESULT.json",
                   help="result files from `react eval` (any tasks, any models); LABEL= names the model "
                        "in the report (default: the result's \"model\" field, or --label)")
    p.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR",
                   help="report directory; replaced atomically if it already holds a report")
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="model label for the result files without LABEL=, in order; repeat once per such file")
    p.add_argument("--base", default=None, metavar="LABEL",
                   help="the model the gains are measured against (default: the first result's model)")
    p.add_argument("--subset", type=Path, default=None, metavar="SUBSET.parquet",
                   help="retrieved subset (`react retrieve` output: similarity + classes columns): adds the "
                        "per-class similarity histograms")
    p.add_argument("--summary", type=Path, default=None, metavar="SUMMARY.json",
                   help="the run's summary.json (`react demo`): adds its headline (corpus sizes, index, "
                        "subset rows, timings) at the top")
    p.add_argument("--title", default="REACT comparison report", metavar="TEXT",
                   help="report title (default: %(default)s)")
    p.set_defaults(func=run_report)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _check_out(out: Path) -> None:
    # atomic_dir replaces --out wholesale: never let a typo delete a folder of other things.
    if out.exists() and not out.is_dir():
        raise ReactError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_MD).is_file():
        raise ReactError(f"--out {out} is a non-empty directory that holds no {REPORT_MD}; "
                         f"refusing to replace it")


def build_report(results: list[Result], collection: Collection, directory: Path,
                 subset: dict[str, np.ndarray] | None = None, summary: dict | None = None,
                 title: str = "REACT comparison report") -> list[Block]:
    """Blocks of the report; the figures are written into ``directory``."""
    from downstream import report_figures as figs
    from downstream.report import (PER_CLASS_METRIC, TASK_TITLES, fewshot_curve, models_table, per_class_gains,
                                   per_class_table, summary_lines, task_table)
    from downstream.report_html import Bullets, Figure, Heading, Paragraph
    from react.progress import progress

    blocks: list[Block] = [Heading(title, 1)]
    if summary:
        lines = summary_lines(summary)
        if lines:
            blocks += [Heading("Run", 2), Bullets(lines)]
    blocks += [Paragraph(f"Gains are each model's metric minus the base's ({collection.base}), in percentage "
                         f"points; “—” marks a task a model has no result for."),
               models_table(results, collection)]
    steps = len(collection.groups) + (1 if subset else 0)
    with progress(transient=True) as bar:
        job = bar.add_task("report figures", total=steps, unit="section")
        for (task, dataset), group in collection.groups.items():
            stem = f"{_slug(task)}_{_slug(dataset)}"
            blocks += [Heading(f"{TASK_TITLES.get(task, task)} — {dataset}", 2),
                       task_table(task, dataset, group, collection)]
            gains = per_class_gains(group, collection)
            if gains:
                metric = PER_CLASS_METRIC.get(task, "value")
                name = f"{stem}_per_class_gain.png"
                figs.per_class_gain_figure(gains, collection.base, metric, directory / name,
                                           title=f"{TASK_TITLES.get(task, task)} on {dataset}: per-class gain")
                blocks.append(Figure(name, f"Per-class {metric} gain over {collection.base} ({task}, {dataset}), "
                                           f"sorted"))
            table = per_class_table(task, dataset, group, collection)
            if table is not None:
                blocks.append(table)
            curves = {label: fewshot_curve(group[label]) for label in collection.labels if label in group}
            curves = {label: c for label, c in curves.items() if c}
            if curves:
                name = f"{stem}_fewshot.png"
                full = {label: group[label].metrics["top1"] for label in curves if "top1" in group[label].metrics}
                figs.fewshot_figure(curves, directory / name, full_shot=full,
                                    title=f"Few-shot linear probe on {dataset}")
                blocks.append(Figure(name, f"Few-shot top-1 vs shots per class ({dataset}): mean ± spread over "
                                           f"seeds; dotted lines are full-shot"))
            bar.advance(job)
        if subset:
            name = "subset_similarity.png"
            figs.similarity_histograms(subset, directory / name)
            rows = sum(len(v) for v in subset.values())
            blocks += [Heading("Retrieved subset", 2),
                       Figure(name, f"Retrieval similarity per class ({len(subset)} classes, {rows} class-row "
                                    f"pairs; a row retrieved for several classes counts for each; dashed: median)")]
            bar.advance(job)
    return blocks


def write_report(specs: list[str], out: Path, labels: list[str] | None = None, base: str | None = None,
                 subset_path: Path | None = None, summary_path: Path | None = None,
                 title: str = "REACT comparison report") -> Path:
    """Check every input, then build the report directory atomically; returns it."""
    from downstream.report import collect, load_result, load_subset_similarities, load_summary, parse_inputs
    from downstream.report_html import to_html, to_markdown
    from react.schemas import atomic_dir

    out = Path(out)
    _check_out(out)
    results = [load_result(path, label) for label, path in parse_inputs(specs, labels)]
    collection = collect(results, base)
    subset = load_subset_similarities(subset_path) if subset_path else None
    summary = load_summary(summary_path) if summary_path else None
    with atomic_dir(out) as tmp:
        blocks = build_report(results, collection, tmp, subset=subset, summary=summary, title=title)
        (tmp / REPORT_MD).write_text(to_markdown(blocks))
        (tmp / REPORT_HTML).write_text(to_html(blocks, tmp, title))
    return out


def run_report(args: argparse.Namespace) -> int:
    out = write_report(args.results, args.out, labels=args.label, base=args.base, subset_path=args.subset,
                       summary_path=args.summary, title=args.title)
    print(f"report: {out / REPORT_HTML}")
    print(f"markdown: {out / REPORT_MD}")
    return 0
