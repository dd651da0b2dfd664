"""The demo's transfer stage: every ``react eval`` task for the base and the
customized model, then ``react report`` over everything the demo measured.

A result is reused only for the same weights, task, dataset content and eval
options (recorded beside the results, ``evaluate``; the other demo stages use
it too), so a second demo only rewrites the report, and a changed option or
dataset is measured again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

from react.models import WEIGHTS_FILE, file_digest
from react.schemas import write_text

# task -> extra options. Detection and segmentation build (and cache) the
# composed scenes of the embedded corpus on first use.
TASKS: dict[str, list[str]] = {
    "linear-probe": ["--shots", "5", "20", "--seeds", "3"],
    "retrieval": [],
    # RoIAlign over a 128-px dense input (16x16 patches): chosen on the validation scenes
    # (docs/base_variants.md); the 64-px default leaves a scene's objects two or three patches wide
    "detection": ["--dense-size", "128"],
    "segmentation": [],
}
HEADLINE = {"linear-probe": "top1", "retrieval": "image_to_text_R@1", "detection": "AP50", "segmentation": "mIoU"}


RESULT_FORMAT = 3  # older results are re-measured. 2: zero-shot results carry per-image answers (for the
# intervals); 3: detection and segmentation read the scenes of the test half's stamps only
INPUTS_FILE = ".measured.json"  # result file name -> the key (weights, task, dataset, options) it measured


def model_identity(model: Path) -> str:
    """Digest of what a result measured: a model directory's weights, or a
    customization run's newest checkpoint (what trained; the base is in the
    run's reuse key)."""
    from customize.checkpoint import WEIGHTS, latest_checkpoint

    if (model / WEIGHTS_FILE).is_file():
        return file_digest(model / WEIGHTS_FILE)
    last = latest_checkpoint(model)
    return file_digest(last[1] / WEIGHTS) if last else ""


def dataset_identity(dataset: Path) -> str:
    """Digest of what ``--dataset`` holds: a file's bytes, or a corpus directory's
    top-level files (parquet parts, class and template lists, manifest). Subfolders
    are left out: images are covered by the parts' per-image sha256, and the scenes
    an eval caches there would otherwise change the key after its first run."""
    if dataset.is_file():
        return file_digest(dataset)
    if not dataset.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(dataset.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            digest.update(f"{path.name}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()[:16]


def evaluate(step: Callable[[str, list[str]], None], result: Path, task: str, model: Path, corpus: Path,
             extra: Sequence[str] = ()) -> Path:
    """``react eval TASK`` of ``model`` into ``result``, unless that file already
    measured these very weights on this dataset with these options."""
    inputs = result.parent / INPUTS_FILE
    try:
        measured = json.loads(inputs.read_text())
    except (OSError, ValueError):
        measured = {}
    weights = model_identity(model)
    key = {"weights": weights, "task": task, "dataset": dataset_identity(corpus), "options": list(extra),
           "format": RESULT_FORMAT}
    if not (weights and key["dataset"] and result.is_file() and measured.get(result.name) == key):
        step(f"eval {task} {result.stem.removesuffix('_' + task)}", ["eval", task, "--model", str(model), "--dataset", str(corpus),
                                           "--out", str(result), *extra])
        measured[result.name] = key
        write_text(inputs, json.dumps(measured, indent=1) + "\n")
    return result


def transfer_suite(step: Callable[[str, list[str]], None], results: Path, corpus: Path,
                   models: dict[str, Path]) -> dict[str, dict[str, Path]]:
    """{task: {label: RESULT.json}} for every task and model."""
    return {task: {label: evaluate(step, results / f"{label}_{task}.json", task, model, corpus, extra)
                   for label, model in models.items()}
            for task, extra in TASKS.items()}


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


# the tasks whose gains get seeds and intervals: task -> the per-image statistic that counts its images
DENSE_TASKS = {"detection": "gt", "segmentation": "intersection"}


def dense_gains(step: Callable[[str, list[str]], None], results: Path, corpus: Path, base: Path,
                seeds: Sequence[Path], written: dict[str, dict[str, Path]]) -> dict:
    """Detection AP50 and segmentation mIoU of every seed of the customized model (the
    first is the exported seed-0 model ``written`` already holds), their gain over the base
    with the paired image x seed interval, and the floors the base must clear: detection's
    crop-and-encode baseline and segmentation's all-background prediction."""
    from downstream.report.intervals import metric_gain_interval
    from downstream.tasks.ap50 import ap50
    from downstream.tasks.segmentation import miou_from_counts

    metrics = {"detection": ap50, "segmentation": miou_from_counts}
    crop = evaluate(step, results / "base_detection_crop.json", "detection", base, corpus,
                    [*TASKS["detection"], "--region-features", "crop"])
    out: dict = {}
    bases = {task: json.loads(written[task]["base"].read_text()) for task in DENSE_TASKS}
    for task, count_key in DENSE_TASKS.items():
        paths = [written[task]["gated-image"]] + [
            evaluate(step, results / f"{run.name}_{task}.json", task, run, corpus, TASKS[task]) for run in seeds]
        runs = [json.loads(p.read_text()) for p in paths]
        base_result = bases[task]
        interval = metric_gain_interval([r["per_image"] for r in runs], [base_result["per_image"]], metrics[task],
                                        len(base_result["per_image"][count_key]))
        headline = HEADLINE[task]
        out[task] = {"metric": headline, "base": base_result["metrics"][headline],
                     "seeds": [r["metrics"][headline] for r in runs], "gain": interval}
    crop_result = json.loads(crop.read_text())
    out["detection"]["base_crop"] = crop_result["metrics"]["AP50"]
    base_det = bases["detection"]["per_image"]
    # the same boxes on the same images, read two ways: a paired interval (seed spread: none, one base)
    out["detection"]["base_roi_minus_crop"] = metric_gain_interval(
        [base_det], [crop_result["per_image"]], ap50, len(base_det["gt"]))
    out["segmentation"]["all_background"] = bases["segmentation"]["metrics"].get("all_background_mIoU")
    return out


def report(step: Callable[[str, list[str]], None], out: Path, labelled: list[tuple[str, Path]], subset: Path,
           summary: Path) -> Path:
    """``react report`` over (label, RESULT.json) pairs; the first label is the base."""
    step("report", ["report", *[f"{label}={path}" for label, path in labelled], "--base", labelled[0][0],
                    "--subset", str(subset), "--summary", str(summary), "--out", str(out / "report")])
    return out / "report" / "report.html"


SUITE_DIR = "suite"  # under the demo's output: each model's suite result and suite_report.{md,json}


def evaluation_suite(step: Callable[[str, list[str]], None], out: Path, corpus: Path, base: Path,
                     runs: Sequence[Path], split: str = "test", label: str = "gated-image") -> dict:
    """``react eval suite``: the base and every seed of the customized model, zero-shot on
    each task of the embedded suite (the stamps it targets, a held-out emoji vendor, stamps
    on scenes, the same classes in clip art), reported ELEVATER-style in OUT/suite/. Reused when the same weights were
    scored on the same corpus and split. Returns the summary's ``suite`` part."""
    from downstream.suite import SUITE_TASKS

    folder = out / SUITE_DIR
    key = {"base": model_identity(base), "runs": [model_identity(r) for r in runs],
           "dataset": dataset_identity(corpus), "split": split, "label": label, "tasks": list(SUITE_TASKS)}
    inputs = folder / INPUTS_FILE
    report = folder / "suite_report.json"
    try:
        fresh = json.loads(inputs.read_text()) == key and report.is_file()
    except (OSError, ValueError):
        fresh = False
    if not fresh:
        step("eval suite", ["eval", "suite", "--model", str(base), "--customized", *map(str, runs),
                            "--customized-label", label, "--corpus", str(corpus), "--split", split,
                            "--out", str(folder)])
        write_text(inputs, json.dumps(key, indent=1) + "\n")
    data = json.loads(report.read_text())
    row = lambda r: {"base": r["base_top1"], label: r["customized_top1"], "gain": r["gain"]["mean"],  # noqa: E731
                     "gain_ci95": r["gain"]["ci95"], "verdict": r["verdict"]}
    return {"split": data["split"], "tasks": {t: row(r) for t, r in data["tasks"].items()},
            "average": row(data["average"]), "wins": data["wins"], "ties": data["ties"], "losses": data["losses"],
            "report": str(folder / "suite_report.md")}
