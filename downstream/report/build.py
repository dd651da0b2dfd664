"""What ``react report`` writes: result files of several models -> one comparison
report (``report.md`` + PNGs beside it, and a self-contained ``report.html``).

The directory is written atomically: built in a temporary sibling and renamed
over ``--out`` only when every file is in place. The command line is in
downstream.cli; the tables and inputs in downstream.report.results, the figures
in downstream.report.figures, Markdown/HTML in downstream.report.render.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from react.errors import ReactError

if TYPE_CHECKING:
    import numpy as np

    from downstream.report.results import Collection, Result
    from downstream.report.render import Block

REPORT_MD, REPORT_HTML = "report.md", "report.html"
REPORT_TITLE = "REACT comparison report"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _check_out(out: Path) -> None:
    # atomic_dir replaces --out wholesale: never let a typo delete a folder of other things.
    if out.exists() and not out.is_dir():
        raise ReactError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_MD).is_file():
        raise ReactError(f"--out {out} is a non-empty directory that holds no {REPORT_MD}; "
                         f"refusing to replace it")


def _head_blocks(results: list[Result], collection: Collection, summary: dict | None, title: str) -> list[Block]:
    """Title, the run's headline (from summary.json) and the models table."""
    from downstream.report.render import Bullets, Heading, Paragraph
    from downstream.report.headline import summary_lines
    from downstream.report.results import models_table

    blocks: list[Block] = [Heading(title, 1)]
    if summary:
        lines = summary_lines(summary)
        if lines:
            blocks += [Heading("Run", 2), Bullets(lines)]
    blocks += [Paragraph(f"Gains are each model's metric minus the base's ({collection.base}), in percentage "
                         f"points; “—” marks a task a model has no result for."),
               models_table(results, collection)]
    return blocks


def _group_blocks(task: str, dataset: str, group: dict[str, Result], collection: Collection,
                  directory: Path) -> list[Block]:
    """One (task, dataset) section: its table, per-class gain chart and table,
    few-shot curves; the figures are written into ``directory``."""
    from downstream.report import figures as figs
    from downstream.report.render import Figure, Heading
    from downstream.report.results import (PER_CLASS_METRIC, TASK_TITLES, fewshot_curve, per_class_gains,
                                           per_class_table, task_table)

    stem = f"{_slug(task)}_{_slug(dataset)}"
    blocks: list[Block] = [Heading(f"{TASK_TITLES.get(task, task)} — {dataset}", 2),
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
    return blocks


def _subset_blocks(subset: dict[str, np.ndarray], directory: Path) -> list[Block]:
    """The retrieved subset's per-class similarity histograms."""
    from downstream.report import figures as figs
    from downstream.report.render import Figure, Heading

    name = "subset_similarity.png"
    figs.similarity_histograms(subset, directory / name)
    rows = sum(len(v) for v in subset.values())
    return [Heading("Retrieved subset", 2),
            Figure(name, f"Retrieval similarity per class ({len(subset)} classes, {rows} class-row "
                         f"pairs; a row retrieved for several classes counts for each; dashed: median)")]


def build_report(results: list[Result], collection: Collection, directory: Path,
                 subset: dict[str, np.ndarray] | None = None, summary: dict | None = None,
                 title: str = REPORT_TITLE) -> list[Block]:
    """Blocks of the report; the figures are written into ``directory``."""
    from react.progress import progress

    blocks = _head_blocks(results, collection, summary, title)
    steps = len(collection.groups) + (1 if subset else 0)
    with progress(transient=True) as bar:
        job = bar.add_task("report figures", total=steps, unit="section")
        for (task, dataset), group in collection.groups.items():
            blocks += _group_blocks(task, dataset, group, collection, directory)
            bar.advance(job)
        if subset:
            blocks += _subset_blocks(subset, directory)
            bar.advance(job)
    return blocks


def write_report(specs: list[str], out: Path, labels: list[str] | None = None, base: str | None = None,
                 subset_path: Path | None = None, summary_path: Path | None = None,
                 title: str = REPORT_TITLE) -> Path:
    """Check every input, then build the report directory atomically; returns it."""
    from downstream.report.results import collect, load_result, load_subset_similarities, load_summary, parse_inputs
    from downstream.report.render import to_html, to_markdown
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

