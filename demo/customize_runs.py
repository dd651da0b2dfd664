"""The demo's customization stage: the REACT effect, measured.

Two variants, each over several seeds, each through the same ``react``
commands a user runs (``customize``, ``export``, ``eval zeroshot``):

- ``gated``: gated-image tuning on the retrieved subset (the method);
- ``random``: gated-image tuning on a random subset of the retrieval corpus
  of the same size -- the control that shows the gain comes from retrieval,
  not from more training.

The other tuning modes (locked-text, full, LiT) are compared in
benchmarks/tuning_modes.py, outside the demo's 30-minute budget.

A finished run with the same settings and data is reused, so a second demo
only re-reads results.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from react.errors import ReactError
from react.progress import console
from react.schemas import SUBSET_SCHEMA, read_parquet, write_parquet, write_text

SEEDS = (0, 1, 2)
# The demo's recipe on ~600 pairs. Settings a user would pass to react customize. Gated-image's
# was chosen on the validation halves alone by benchmarks/recipe_sweep.py, for the current (mosaic)
# base (docs/evidence.md, "For the mosaic base"); locked-text's (benchmarks/tuning_modes.py)
# predates the split and was not re-tuned.
RECIPE = ("--batch-size", "128")
MODE_RECIPE = {
    "gated-image": ("--steps", "128", "--lr", "5e-4", "--gate-lr", "5e-3", "--gated-layers", "2"),
    "locked-text": ("--steps", "128", "--lr", "1e-4"),
}
METRICS = ("top1", "top5", "mean_per_class_recall")


@dataclass(frozen=True)
class Variant:
    name: str
    data: str        # "retrieved" or "random"
    mode: str
    label: str


VARIANTS = (
    Variant("gated", "retrieved", "gated-image", "gated-image on the retrieved subset (REACT)"),
    Variant("random", "random", "gated-image", "gated-image on a random subset (control)"),
)


def random_subset(corpus: Path, rows: int, seed: int, out: Path) -> Path:
    """``rows`` pairs of the retrieval corpus drawn uniformly, in the subset
    form ``react download`` reads (no similarity, no classes: nothing was asked)."""
    table = read_parquet(corpus / "retrieval.parquet", required=("key", "url", "caption"))
    if rows > table.num_rows:
        raise ReactError(f"random control: {rows} rows asked, the corpus has {table.num_rows}")
    pick = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=rows, replace=False))
    chosen = table.take(pa.array(pick))
    columns = {
        "key": chosen["key"], "url": chosen["url"], "caption": chosen["caption"],
        "similarity": pa.array([float("nan")] * rows, pa.float32()),
        "classes": pa.array([[] for _ in range(rows)], pa.list_(pa.string())),
    }
    return write_parquet(pa.table(columns, schema=SUBSET_SCHEMA), out)


def run_key(argv: list[str], base: Path, shards: Path) -> dict:
    """What a reusable run must share with the one asked for: the command, the
    base's weights and the downloaded subset (paths alone stay the same when
    the corpus, the base or the subset change)."""
    from react.models import WEIGHTS_FILE, file_digest
    from react.schemas import DOWNLOAD_MANIFEST

    try:
        data = json.loads((shards / DOWNLOAD_MANIFEST).read_text())["input"]["digest"]
    except (OSError, ValueError, KeyError):
        data = None
    return {"argv": argv, "base": file_digest(base / WEIGHTS_FILE), "data": data}


def _run_state(run_dir: Path, key: dict) -> str:
    """'done' (same key, finished), 'resume' (same key, stopped early) or 'new'."""
    from customize.checkpoint import latest_checkpoint, read_run

    try:
        info = read_run(run_dir)
    except ReactError:
        return "new"
    if key["data"] is None or info.get("demo_key") != key:
        return "new"
    last = latest_checkpoint(run_dir)
    if last is not None and last[0] >= info["plan"]["steps"]:
        return "done"
    return "resume"


@dataclass(frozen=True)
class PlannedRun:
    run_dir: Path
    result: Path
    argv: list[str]      # the command the run is keyed by (no --resume/--overwrite)
    key: dict
    state: str           # 'done', 'resume' or 'new'
    steps: int


def plan_run(base: Path, shards: Path, run_dir: Path, result: Path, mode: str, seed: int) -> PlannedRun:
    """One ``react customize`` of the demo, and whether a finished run can be reused."""
    argv = ["customize", "--base", str(base), "--train-data", str(shards), "--out", str(run_dir),
            "--mode", mode, "--seed", str(seed), *RECIPE, *MODE_RECIPE[mode]]
    key = run_key(argv, base, shards)
    steps = int(argv[argv.index("--steps") + 1])
    return PlannedRun(run_dir, result, argv, key, _run_state(run_dir, key), steps)


def run_customizations(step: Callable[[str, list[str]], None], runs: list[PlannedRun],
                       parallel: int | None, logs: Path) -> dict | None:
    """Every run not already done: in this process one at a time, or several at once in
    child processes (demo.parallel_runs); then each is marked reusable. Returns how the
    runs went in parallel (their wall time: the demo's timings), or None."""
    from customize.checkpoint import read_run, write_run
    from demo.parallel_runs import Job, run_jobs

    todo = [r for r in runs if r.state != "done"]
    flag = {"resume": ["--resume"], "new": ["--overwrite"]}
    ran = run_jobs([Job(r.run_dir.name, r.argv + flag[r.state], r.run_dir, r.steps) for r in todo], parallel, logs,
                   in_process=lambda job: step(f"customize {job.name}", job.argv))
    parallel_info = None
    if ran["parallel"]:
        parallel_info = {"runs": len(todo), "logs": str(logs)} | {k: ran[k] for k in ("at_once", "threads", "seconds")}
        console.print(f"{len(todo)} customizations, {ran['at_once']} at once with {ran['threads']} thread(s) each: "
                      f"{ran['seconds']:.0f} s (logs in {logs})", highlight=False)
    for r in todo:
        info = read_run(r.run_dir)
        info["demo_key"] = r.key  # what makes a later demo reuse it
        write_run(r.run_dir, info)
    return parallel_info


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def react_effect(step: Callable[[str, list[str]], None], out: Path, corpus: Path, base: Path,
                 base_result: dict, shards: dict[str, Path], seeds: tuple[int, ...] = SEEDS,
                 parallel: int | None = None) -> dict:
    """Every variant over ``seeds``; returns the summary's ``react_effect`` part.

    ``shards``: {"retrieved": SHARDS_DIR, "random": SHARDS_DIR}. The first
    variant's first seed is the demo's ``run/``; it is exported to ``customized/``.
    ``parallel``: customizations at once (default: 2 on a CPU, 1 on a GPU)."""
    from demo.transfer import evaluate

    planned: dict[str, list[PlannedRun]] = {}
    for variant in VARIANTS:
        for seed in seeds:
            first = variant is VARIANTS[0] and seed == seeds[0]
            run_dir = out / "run" if first else out / "runs" / f"{variant.name}-s{seed}"
            result = out / "results" / f"{variant.name}-s{seed}_zeroshot.json"
            planned.setdefault(variant.name, []).append(
                plan_run(base, shards[variant.data], run_dir, result, variant.mode, seed))
    parallel_info = run_customizations(step, [r for runs in planned.values() for r in runs], parallel, out / "logs")
    results = {name: [json.loads(evaluate(step, r.result, "zeroshot", r.run_dir, corpus).read_text()) for r in runs]
               for name, runs in planned.items()}
    step("export", ["export", str(out / "run"), "--out", str(out / "customized"), "--overwrite"])
    from downstream.report.intervals import correct, gain_interval

    effect = {"recipe": {mode: " ".join(RECIPE + extra) for mode, extra in MODE_RECIPE.items()},
              "seeds": list(seeds), "variants": {}, "parallel": parallel_info}
    answers = {name: [correct(r) for r in runs] for name, runs in results.items()}
    for variant in VARIANTS:
        runs = results[variant.name]
        entry = {"label": variant.label, "mode": variant.mode, "data": variant.data}
        for key in METRICS:
            entry[key] = _spread([r["metrics"][key] for r in runs])
        entry["gain_top1"] = _spread([r["metrics"]["top1"] - base_result["metrics"]["top1"] for r in runs])
        # 95 % interval over the evaluation images and the seeds (downstream.report.intervals)
        entry["gain_top1"]["interval"] = gain_interval(answers[variant.name], [correct(base_result)])
        entry["per_class"] = {c: statistics.fmean(r["per_class"][c] for r in runs) for c in runs[0]["per_class"]}
        entry["result"] = str(write_text(out / "results" / f"{variant.name}_zeroshot.json",
                                         json.dumps(_mean_result(variant, runs, entry), indent=2) + "\n"))
        effect["variants"][variant.name] = entry
    effect["gated_vs_random"] = gain_interval(answers["gated"], answers["random"])
    print_effect(base_result, effect)
    return effect


def _mean_result(variant: Variant, runs: list[dict], entry: dict) -> dict:
    """A ``react eval`` result of the seeds' mean, for ``react report``."""
    metrics = {k: entry[k]["mean"] for k in METRICS}
    metrics.update({f"{k}_std": entry[k]["std"] for k in METRICS})
    metrics.update({k: runs[0]["metrics"][k] for k in ("num_images", "num_classes")})
    return {"task": "zeroshot", "model": f"{variant.label}, mean of {len(runs)} seeds",
            "dataset": runs[0]["dataset"], "metrics": metrics, "per_class": entry["per_class"],
            "seeds": [r["model"] for r in runs]}


def _interval(i: dict) -> str:
    """[lo, hi] in points, marked when it contains 0 (no gain distinguishable)."""
    text = f"[{100 * i['ci95'][0]:+.1f}, {100 * i['ci95'][1]:+.1f}]"
    return text + (" (contains 0)" if i["contains_zero"] else "")


def print_effect(base_result: dict, effect: dict) -> None:
    """Base vs every variant, overall (mean ± std over seeds) and per class."""
    from rich.table import Table

    seeds = len(effect["seeds"])
    overall = Table(title=f"zero-shot on the held-out task: base vs customized (mean ± std of {seeds} seeds)")
    for column in ("model", "top-1 %", "gain (points)", "gain 95 % interval", "mean per-class recall %"):
        overall.add_column(column, justify="left" if column == "model" else "right")
    b = base_result["metrics"]
    overall.add_row("base", f"{100 * b['top1']:.1f}", "", "", f"{100 * b['mean_per_class_recall']:.1f}")
    for entry in effect["variants"].values():
        t, g, r = entry["top1"], entry["gain_top1"], entry["mean_per_class_recall"]
        overall.add_row(entry["label"], f"{100 * t['mean']:.1f} ± {100 * t['std']:.1f}",
                        f"{100 * g['mean']:+.1f} ± {100 * g['std']:.1f}", _interval(g["interval"]),
                        f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}")
    console.print(overall)
    console.print(f"gated-image minus the random-subset control: {_interval(effect['gated_vs_random'])}; "
                  f"intervals bootstrap the {b['num_images']} test images and the seeds", highlight=False)
    per_class = Table(title="per-class recall % (customized: mean over seeds)")
    per_class.add_column("class")
    per_class.add_column("base", justify="right")
    names = list(effect["variants"])
    for name in names:
        per_class.add_column(name, justify="right")
    for cls, recall in sorted(base_result["per_class"].items()):
        per_class.add_row(cls, f"{100 * recall:.0f}",
                          *(f"{100 * effect['variants'][n]['per_class'][cls]:.0f}" for n in names))
    console.print(per_class)
