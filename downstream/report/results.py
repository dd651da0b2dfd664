"""``react report``'s data side: read result JSONs, check them, group them by
task and dataset, and turn each group into a table of values and gains.

Rendering lives elsewhere (``report.figures`` for PNGs, ``report.render`` for
Markdown/HTML); this module only knows the result contract, so a new task
never breaks the report -- it gets a generic table of its numeric metrics.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from react.errors import ReactError
from react.schemas import RESULT_KEYS

DASH = "—"  # a model without a result for this task

# Headline columns per known task: (metric key, column title). Every key here
# is part of the task's contract: a result lacking one is rejected.
TASK_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "zeroshot": [("top1", "top-1"), ("top5", "top-5"), ("mean_per_class_recall", "mean per-class recall")],
    "linear-probe": [("top1", "top-1 (full)"), ("mean_per_class_recall", "mean per-class recall (full)")],
    "retrieval": [(f"{d}_R@{k}", f"{t} R@{k}") for d, t in (("image_to_text", "I→T"), ("text_to_image", "T→I"))
                  for k in (1, 5, 10)],
    "detection": [("AP50", "AP50"), ("AP", "AP")],
    "segmentation": [("mIoU", "mIoU"), ("pixel_accuracy", "pixel accuracy")],
}
TASK_TITLES = {"zeroshot": "Zero-shot classification", "linear-probe": "Linear probe",
               "retrieval": "Image-text retrieval", "detection": "Zero-shot detection",
               "segmentation": "Zero-shot semantic segmentation"}
PER_CLASS_METRIC = {"zeroshot": "recall", "linear-probe": "recall", "detection": "AP50", "segmentation": "IoU"}
_SHOT_KEY = re.compile(r"^top1_(\d+)shot$")


@dataclass
class Result:
    """One result file, checked, under the label the report shows for its model."""

    path: Path
    label: str
    task: str
    model: str
    dataset: str
    metrics: dict[str, float]
    per_class: dict[str, float]
    raw: dict = field(repr=False)


@dataclass
class Table:
    """A rendered-agnostic table: header, string cells, and a caption line."""

    title: str
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Collection:
    """All results, with the model labels in report order (base first)."""

    labels: list[str]
    base: str
    groups: dict[tuple[str, str], dict[str, Result]]  # (task, dataset) -> label -> result

    @property
    def others(self) -> list[str]:
        return [label for label in self.labels if label != self.base]


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def normalize_task(task: str) -> str:
    # "linear_probe" and "linear-probe" name the same task.
    return task.strip().lower().replace("_", "-")


def load_result(path: str | Path, label: str | None = None) -> Result:
    """Read and check one result JSON; ReactError names the file and the problem."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReactError(f"result file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReactError(f"cannot read result file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ReactError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise ReactError(f"{path}: a result must be a JSON object, got {type(raw).__name__}")
    missing = [key for key in RESULT_KEYS if key not in raw]
    if missing:
        raise ReactError(f"{path}: missing result key(s) {', '.join(missing)}")
    for key in ("task", "model", "dataset"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise ReactError(f"{path}: {key!r} must be a non-empty string")
    if not isinstance(raw["metrics"], dict):
        raise ReactError(f"{path}: 'metrics' must be an object")
    if not isinstance(raw["per_class"], dict):
        raise ReactError(f"{path}: 'per_class' must be an object")
    task = normalize_task(raw["task"])
    for key, _ in TASK_COLUMNS.get(task, []):
        value = raw["metrics"].get(key)
        if value is None:
            raise ReactError(f"{path}: {task} result lacks metric {key!r}")
        if not is_number(value) or not 0.0 <= value <= 1.0:
            raise ReactError(f"{path}: metric {key}={value!r} is not a fraction in [0, 1]")
    metrics = {k: float(v) for k, v in raw["metrics"].items() if is_number(v)}
    per_class = {str(k): float(v) for k, v in raw["per_class"].items() if is_number(v)}
    if task == "linear-probe":
        _check_fewshot(raw, path)
    return Result(path=path, label=label or raw["model"], task=task, model=raw["model"],
                  dataset=raw["dataset"], metrics=metrics, per_class=per_class, raw=raw)


def _check_fewshot(raw: dict, path: Path) -> None:
    entries = raw.get("fewshot", [])
    if not isinstance(entries, list):
        raise ReactError(f"{path}: 'fewshot' must be a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("shots"), int) \
                or not is_number(entry.get("top1_mean")):
            raise ReactError(f"{path}: fewshot[{i}] needs integer 'shots' and numeric 'top1_mean'")


def fewshot_curve(result: Result, metric: str = "top1") -> list[tuple[int, float, float]]:
    """(shots, mean, spread) sorted by shots: from the ``fewshot`` list, else
    from the flat ``top1_{N}shot``/``_std`` metrics."""
    points: dict[int, tuple[float, float]] = {}
    for entry in result.raw.get("fewshot", []) or []:
        mean = entry.get(f"{metric}_mean")
        if is_number(mean):
            std = entry.get(f"{metric}_std")
            points[int(entry["shots"])] = (float(mean), float(std) if is_number(std) else 0.0)
    if not points and metric == "top1":
        for key, value in result.metrics.items():
            match = _SHOT_KEY.match(key)
            if match:
                points[int(match.group(1))] = (value, result.metrics.get(f"{key}_std", 0.0))
    return [(shots, mean, std) for shots, (mean, std) in sorted(points.items())]


def parse_inputs(specs: list[str], labels: list[str] | None) -> list[tuple[str | None, Path]]:
    """``RESULT.json`` or ``LABEL=RESULT.json`` per argument; ``--label`` values
    name, in order, the arguments that carry no label of their own."""
    parsed: list[tuple[str | None, Path]] = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        # A file whose name contains "=" stays a path.
        if sep and name and rest and not Path(spec).exists():
            parsed.append((name.strip(), Path(rest)))
        else:
            parsed.append((None, Path(spec)))
    if labels:
        unlabeled = [i for i, (name, _) in enumerate(parsed) if name is None]
        if len(labels) != len(unlabeled):
            raise ReactError(f"{len(labels)} --label value(s) for {len(unlabeled)} result file(s) without "
                             f"a LABEL= prefix: give one --label per such file, in order")
        for i, name in zip(unlabeled, labels):
            parsed[i] = (name, parsed[i][1])
    for name, path in parsed:
        if name is not None and not name.strip():
            raise ReactError(f"empty model label for {path}")
    return parsed


def collect(results: list[Result], base: str | None = None) -> Collection:
    """Group by (task, dataset); reject a second result for the same model there."""
    if not results:
        raise ReactError("no result files given")
    labels: list[str] = []
    groups: dict[tuple[str, str], dict[str, Result]] = {}
    for result in results:
        if result.label not in labels:
            labels.append(result.label)
        group = groups.setdefault((result.task, result.dataset), {})
        if result.label in group:
            raise ReactError(f"two {result.task} results on {result.dataset} for model {result.label!r}: "
                             f"{group[result.label].path} and {result.path} (give them different --label)")
        group[result.label] = result
    base = base if base is not None else results[0].label
    if base not in labels:
        raise ReactError(f"--base {base!r} is not one of the models: {', '.join(labels)}")
    labels.remove(base)
    return Collection(labels=[base, *labels], base=base, groups=dict(sorted(groups.items(), key=_group_order)))


def _group_order(item: tuple[tuple[str, str], dict]) -> tuple[int, str, str]:
    (task, dataset), _ = item
    known = list(TASK_COLUMNS)
    return (known.index(task) if task in known else len(known), task, dataset)


def _fmt(value: float, pct: bool) -> str:
    return f"{100 * value:.2f}" if pct else f"{value:.4g}"


def _gain(value: float, base: float | None, pct: bool) -> str:
    if base is None:
        return ""
    diff = value - base
    return f" ({100 * diff:+.2f})" if pct else f" ({diff:+.4g})"


def _columns(task: str, group: dict[str, Result]) -> list[tuple[str, str]]:
    if task in TASK_COLUMNS:
        return TASK_COLUMNS[task]
    # Unknown task: every numeric metric any model reports, counts aside.
    keys: list[str] = []
    for result in group.values():
        keys += [k for k in result.metrics if k not in keys and not k.startswith("num_")]
    return [(k, k) for k in keys]


def _is_fraction(key: str, group: dict[str, Result]) -> bool:
    # JSON keeps 1 and 1.0 apart: integers are counts, floats in [0, 1] fractions.
    values = [r.raw["metrics"][key] for r in group.values() if key in r.metrics]
    return bool(values) and all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)


def task_table(task: str, dataset: str, group: dict[str, Result], collection: Collection) -> Table:
    """One row per model; each non-base cell carries its gain over the base."""
    base = group.get(collection.base)
    columns = _columns(task, group)
    fractions = {key: task in TASK_COLUMNS or _is_fraction(key, group) for key, _ in columns}
    shots = sorted({s for r in group.values() for s, _, _ in fewshot_curve(r)}) if task == "linear-probe" else []
    base_curve = {s: (m, sd) for s, m, sd in fewshot_curve(base)} if base else {}
    header = ["model"] + [title + (" %" if fractions[key] else "") for key, title in columns]
    header += [f"top-1 {s}-shot %" for s in shots]
    rows = []
    for label in collection.labels:
        result = group.get(label)
        row = [label + (" (base)" if label == collection.base else "")]
        for key, _ in columns:
            if result is None or key not in result.metrics:
                row.append(DASH)
                continue
            ref = base.metrics.get(key) if base is not None and result is not base else None
            row.append(_fmt(result.metrics[key], fractions[key]) + _gain(result.metrics[key], ref, fractions[key]))
        curve = {s: (m, sd) for s, m, sd in fewshot_curve(result)} if result else {}
        for s in shots:
            if s not in curve:
                row.append(DASH)
                continue
            mean, std = curve[s]
            ref = base_curve[s][0] if result is not base and s in base_curve else None
            row.append(f"{100 * mean:.2f} ± {100 * std:.2f}" + _gain(mean, ref, True))
        rows.append(row)
    caption = f"dataset: {dataset}"
    counts = _counts(base or next(iter(group.values())))
    if counts:
        caption += f"; {counts}"
    if base is None:
        caption += f"; no {task} result for the base {collection.base!r}, so no gains"
    else:
        caption += f"; gains in parentheses are over {collection.base!r}" + (" in points" if any(fractions.values())
                                                                             or shots else "")
    # The section heading above the table already names task and dataset.
    return Table(title="", header=header, rows=rows, caption=caption)


def _counts(result: Result) -> str:
    parts = [f"{int(v)} {k[4:].replace('_', ' ')}" for k, v in result.metrics.items()
             if k.startswith("num_") and float(v).is_integer()]
    return ", ".join(parts)


def per_class_table(task: str, dataset: str, group: dict[str, Result], collection: Collection) -> Table | None:
    """Class x model, base values and each other model's gain, worst base class first."""
    base = group.get(collection.base)
    if base is None or not base.per_class:
        return None
    others = [label for label in collection.others if label in group and group[label].per_class]
    if not others:  # a comparison report: the base alone is in the result file
        return None
    metric = PER_CLASS_METRIC.get(task, "value")
    header = ["class", f"{collection.base} {metric} %"] + [f"{label} {metric} % (gain)" for label in others]
    rows = []
    for name, value in sorted(base.per_class.items(), key=lambda kv: (kv[1], kv[0])):
        row = [name, _fmt(value, True)]
        for label in others:
            other = group[label].per_class.get(name)
            row.append(DASH if other is None else _fmt(other, True) + _gain(other, value, True))
        rows.append(row)
    return Table(title=f"Per-class {metric} — {TASK_TITLES.get(task, task)}, {dataset}", header=header, rows=rows,
                 caption=f"sorted by the base's {metric}, lowest first")


def per_class_gains(group: dict[str, Result], collection: Collection) -> dict[str, dict[str, float]]:
    """label -> class -> gain in points over the base, on the classes both have."""
    base = group.get(collection.base)
    if base is None or not base.per_class:
        return {}
    gains = {}
    for label in collection.others:
        if label in group and group[label].per_class:
            other = group[label].per_class
            gains[label] = {c: 100 * (other[c] - v) for c, v in base.per_class.items() if c in other}
    return {label: g for label, g in gains.items() if g}


def models_table(results: list[Result], collection: Collection) -> Table:
    rows = []
    for label in collection.labels:
        mine = [r for r in results if r.label == label]
        models = sorted({r.model for r in mine})
        rows.append([label + (" (base)" if label == collection.base else ""), ", ".join(models),
                     ", ".join(sorted({r.task for r in mine})), str(len(mine))])
    return Table(title="Models", header=["label", "model", "tasks", "result files"], rows=rows)


def load_subset_similarities(path: str | Path) -> dict[str, "np.ndarray"]:
    """class -> similarities of the subset rows retrieved for it. A row found
    by several classes counts for each; classes named in the subset's task
    spec but without rows get an empty array (a visible gap, not a silent one)."""
    import numpy as np

    from react.schemas import SUBSET_TASK_KEY, read_parquet

    table = read_parquet(path, required=("similarity", "classes"))
    sims = table.column("similarity").to_pylist()
    classes = table.column("classes").to_pylist()
    buckets: dict[str, list[float]] = {}
    for i, (sim, names) in enumerate(zip(sims, classes)):
        if sim is None or not isinstance(names, list):
            raise ReactError(f"{path}: row {i} lacks a similarity or a classes list")
        for name in names:
            buckets.setdefault(str(name), []).append(float(sim))
    order = sorted(buckets)
    meta = (table.schema.metadata or {}).get(SUBSET_TASK_KEY.encode())
    if meta:
        try:
            spec_classes = [str(c) for c in json.loads(meta)["spec"]["classes"]]
        except (ValueError, KeyError, TypeError):
            spec_classes = []  # the report is optional decoration; the rows are what counts
        order = spec_classes + [c for c in order if c not in spec_classes]
    if not order:
        raise ReactError(f"{path}: the subset has no rows with classes")
    return {name: np.asarray(buckets.get(name, []), dtype=float) for name in order}


def load_summary(path: str | Path) -> dict:
    path = Path(path)
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReactError(f"summary file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReactError(f"{path}: not a readable summary JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise ReactError(f"{path}: a summary must be a JSON object")
    return summary
