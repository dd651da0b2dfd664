"""The suite report, ELEVATER-style: per task the base's and the customized model's
zero-shot top-1 and the gain with its 95 % interval (intervals.py: paired over
images, and over seeds when several customized runs are given), the average over
tasks, and wins / ties / losses. A tie is a gain whose interval contains 0, so
"no harm" to a task customization did not target reads as a tie or a win.
Markdown and JSON, each written atomically.
"""
from __future__ import annotations

import json
from pathlib import Path

from downstream.report.intervals import correct, gain_interval, mean_gain_interval
from react.errors import ReactError
from react.schemas import write_text

REPORT_JSON = "suite_report.json"
REPORT_MD = "suite_report.md"


def verdict(interval: dict) -> str:
    """win: the whole interval above 0; loss: below 0; tie: it contains 0."""
    lo, hi = interval["ci95"]
    return "win" if lo > 0 else "loss" if hi < 0 else "tie"


def _answers(result: dict, task: str, who: str) -> tuple[list[int], object]:
    try:
        entry = result["tasks"][task]
        return entry["per_image"]["label"], correct(entry)
    except (KeyError, TypeError, ValueError):
        raise ReactError(f"suite result of {who} has no per-image answers for task {task!r}") from None


def compare(base: dict, customized: list[dict], base_label: str = "base",
            label: str = "customized") -> dict:
    """The report's content from suite results (``score_suite``): one base, one or more
    customized runs (seeds) scored on the same tasks, split and images."""
    if not customized:
        raise ReactError("the suite report needs at least one customized result")
    tasks = list(base["tasks"])
    for i, run in enumerate(customized):
        if list(run["tasks"]) != tasks:
            raise ReactError(f"customized run {i} was scored on tasks {list(run['tasks'])}, the base on {tasks}")
        if run.get("split") != base.get("split"):
            raise ReactError(f"customized run {i} was scored on split {run.get('split')!r}, "
                             f"the base on {base.get('split')!r}")
    rows, paired = {}, {}
    for task in tasks:
        labels, b = _answers(base, task, base_label)
        runs = []
        for i, run in enumerate(customized):
            run_labels, answers = _answers(run, task, f"{label} run {i}")
            if run_labels != labels:
                raise ReactError(f"task {task!r}: {label} run {i} was scored on other images than the base")
            runs.append(answers)
        paired[task] = (runs, [b])
        interval = gain_interval(runs, [b])
        rows[task] = {"images": len(labels), "classes": base["tasks"][task]["metrics"]["num_classes"],
                      "base_top1": round(float(b.mean()), 4),
                      "customized_top1": round(float(sum(r.mean() for r in runs) / len(runs)), 4),
                      "customized_seeds_top1": [round(float(r.mean()), 4) for r in runs],
                      "gain": interval, "verdict": verdict(interval)}
    average = mean_gain_interval(paired)
    verdicts = [row["verdict"] for row in rows.values()]
    return {
        "split": base.get("split"), "base": base_label, "customized": label,
        "base_model": base.get("model"), "customized_models": [run.get("model") for run in customized],
        "tasks": rows,
        "average": {"base_top1": round(sum(r["base_top1"] for r in rows.values()) / len(rows), 4),
                    "customized_top1": round(sum(r["customized_top1"] for r in rows.values()) / len(rows), 4),
                    "gain": average, "verdict": verdict(average)},
        "wins": verdicts.count("win"), "ties": verdicts.count("tie"), "losses": verdicts.count("loss"),
    }


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def render_markdown(report: dict) -> str:
    seeds = len(report["customized_models"])
    lines = [f"# Evaluation suite: {report['customized']} vs {report['base']} (split {report['split']})", "",
             f"Zero-shot top-1 per task; gain in points with its 95 % interval (paired bootstrap over images"
             f"{' and the ' + str(seeds) + ' customized seeds' if seeds > 1 else ''}). "
             "A tie is a gain whose interval contains 0.", "",
             f"| task | images | classes | {report['base']} | {report['customized']} | gain | 95 % interval | |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for task, row in report["tasks"].items():
        lo, hi = row["gain"]["ci95"]
        lines.append(f"| {task} | {row['images']} | {row['classes']} | {100 * row['base_top1']:.1f} % | "
                     f"{100 * row['customized_top1']:.1f} % | {_pts(row['gain']['mean'])} | "
                     f"[{_pts(lo)}, {_pts(hi)}] | {row['verdict']} |")
    avg = report["average"]
    lo, hi = avg["gain"]["ci95"]
    lines += [f"| **average** | | | {100 * avg['base_top1']:.1f} % | {100 * avg['customized_top1']:.1f} % | "
              f"{_pts(avg['gain']['mean'])} | [{_pts(lo)}, {_pts(hi)}] | {avg['verdict']} |", "",
              f"Wins / ties / losses: **{report['wins']} / {report['ties']} / {report['losses']}**", ""]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """``OUT/suite_report.json`` and ``OUT/suite_report.md``, each atomically."""
    return (write_text(out / REPORT_JSON, json.dumps(report, indent=2) + "\n"),
            write_text(out / REPORT_MD, render_markdown(report)))
