"""The demo's transfer stage: every ``react eval`` task for the base and the
customized model, then ``react report`` over everything the demo measured.

A result is reused only for the same weights (their digest is recorded beside
the results), so a second demo only rewrites the report.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from react.models import WEIGHTS_FILE, file_digest
from react.schemas import write_text

# task -> extra options. Detection and segmentation build (and cache) the
# composed scenes of the embedded corpus on first use.
TASKS: dict[str, list[str]] = {
    "linear-probe": ["--shots", "5", "20", "--seeds", "3"],
    "retrieval": [],
    "detection": [],
    "segmentation": [],
}
HEADLINE = {"linear-probe": "top1", "retrieval": "image_to_text_R@1", "detection": "AP50", "segmentation": "mIoU"}


INPUTS_FILE = ".measured.json"  # result file name -> digest of the weights it measured


def _digest(model: Path) -> str:
    return file_digest(model / WEIGHTS_FILE)


def _measured(results: Path) -> dict[str, str]:
    try:
        return json.loads((results / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def transfer_suite(step: Callable[[str, list[str]], None], results: Path, corpus: Path,
                   models: dict[str, Path]) -> dict[str, dict[str, Path]]:
    """{task: {label: RESULT.json}} for every task and model (model dirs, not runs)."""
    written: dict[str, dict[str, Path]] = {}
    measured = _measured(results)
    digests = {label: _digest(model) for label, model in models.items()}
    for task, extra in TASKS.items():
        for label, model in models.items():
            result = results / f"{label}_{task}.json"
            if not (result.is_file() and measured.get(result.name) == digests[label]):
                step(f"eval {task} {label}", ["eval", task, "--model", str(model), "--dataset", str(corpus),
                                               "--out", str(result), *extra])
                measured[result.name] = digests[label]
                write_text(results / INPUTS_FILE, json.dumps(measured, indent=1) + "\n")
            written.setdefault(task, {})[label] = result
    return written


def transfer_summary(written: dict[str, dict[str, Path]]) -> dict:
    """Each task's headline metric per model, and the customized model's gain."""
    summary = {}
    for task, by_label in written.items():
        metric = HEADLINE[task]
        values = {label: json.loads(path.read_text())["metrics"][metric] for label, path in by_label.items()}
        labels = list(values)
        summary[task] = {"metric": metric, **values,
                         "gain": values[labels[-1]] - values[labels[0]] if len(labels) > 1 else None}
    return summary


def report(step: Callable[[str, list[str]], None], out: Path, labelled: list[tuple[str, Path]], subset: Path,
           summary: Path) -> Path:
    """``react report`` over (label, RESULT.json) pairs; the first label is the base."""
    step("report", ["report", *[f"{label}={path}" for label, path in labelled], "--base", labelled[0][0],
                    "--subset", str(subset), "--summary", str(summary), "--out", str(out / "report")])
    return out / "report" / "report.html"
