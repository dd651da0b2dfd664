"""The safety filter of ``react download`` (``--safety``; off by default).

- ``metadata``: LAION's ``punsafe`` (probability unsafe) and ``NSFW``
  (UNLIKELY / UNSURE / NSFW) columns, read as the subset carries them. Rows
  dropped here are never fetched: the filter runs before img2dataset.
- ``classifier``: an image scorer (download/safety_classifier.py) scores each
  downloaded image; the ones above ``--max-punsafe`` are taken out of their
  shard (tar, parquet status, stats), so every reader of the shards sees only
  what the filter let through.

Either way the download summary gets a ``safety`` block (mode, counts by
reason and per class) and SHARDS_DIR gets SAFETY_DROPPED_FILE, the dropped
rows and why. The summary's own counts (requested, downloaded, failed,
per_class) are over the rows the filter kept: requested + dropped = the subset.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from react.errors import ReactError
from react.progress import console
from react.schemas import SAFETY_COLUMNS, SAFETY_DROPPED_FILE, SHARD_SUBSET_KEY, write_parquet

from download.inputs import Subset
from download.options import DownloadOptions

NSFW_LABELS = ("UNLIKELY", "UNSURE", "NSFW")
# why a row was dropped, as the summary and the record name it
REASONS = ("punsafe", "nsfw_label", "unscored", "classifier")
RECORD_SCHEMA = pa.schema([(SHARD_SUBSET_KEY, pa.string()), ("classes", pa.list_(pa.string())),
                           ("url", pa.string()), ("caption", pa.string()), ("reason", pa.string()),
                           ("score", pa.float64()), ("label", pa.string())])


@dataclass(frozen=True)
class Drop:
    key: str           # the subset key
    reason: str        # one of REASONS
    score: float | None = None
    label: str | None = None


# --- metadata ------------------------------------------------------------------------
def _punsafe(sub: Subset) -> list[float | None] | None:
    if sub.safety is None or "punsafe" not in sub.safety.column_names:
        return None
    column = sub.safety.column("punsafe")
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise ReactError(f"{sub.path}: column punsafe must hold numbers (probability unsafe), not {column.type}")
    values = []
    for key, v in zip(sub.table.column(SHARD_SUBSET_KEY).to_pylist(), column.to_pylist()):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            values.append(None)  # pandas writes a missing score as NaN: unscored, not bad
        elif not 0 <= v <= 1:
            raise ReactError(f"{sub.path}: punsafe {v} for key {key!r} is outside [0, 1]")
        else:
            values.append(float(v))
    return values


def _nsfw(sub: Subset) -> list[str | None] | None:
    if sub.safety is None or "NSFW" not in sub.safety.column_names:
        return None
    column = sub.safety.column("NSFW")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ReactError(f"{sub.path}: column NSFW must hold labels ({', '.join(NSFW_LABELS)}), not {column.type}")
    values = []
    for key, v in zip(sub.table.column(SHARD_SUBSET_KEY).to_pylist(), column.to_pylist()):
        if v is None or not v.strip():
            values.append(None)
        elif v.strip().upper() not in NSFW_LABELS:
            raise ReactError(f"{sub.path}: NSFW label {v!r} for key {key!r} is not one of {', '.join(NSFW_LABELS)}")
        else:
            values.append(v.strip().upper())
    return values


def metadata_drops(sub: Subset, opts: DownloadOptions) -> list[Drop]:
    """The rows ``--safety metadata`` drops, in subset order. A row goes when its
    punsafe is above --max-punsafe or its NSFW label is NSFW (UNSURE too with
    --safety-strict, and, with --safety-strict, a row neither column scores)."""
    punsafe, nsfw = _punsafe(sub), _nsfw(sub)
    if punsafe is None and nsfw is None:
        raise ReactError(f"--safety metadata: {sub.path} has no {' or '.join(SAFETY_COLUMNS)} column "
                         "(use --safety classifier to score the images instead)")
    keys = sub.table.column(SHARD_SUBSET_KEY).to_pylist()
    drops = []
    for i, key in enumerate(keys):
        p = punsafe[i] if punsafe else None
        label = nsfw[i] if nsfw else None
        if p is not None and p > opts.max_punsafe:
            drops.append(Drop(key, "punsafe", p, label))
        elif label == "NSFW" or (label == "UNSURE" and opts.safety_strict):
            drops.append(Drop(key, "nsfw_label", p, label))
        elif p is None and label is None and opts.safety_strict:
            drops.append(Drop(key, "unscored"))
    return drops


def without(sub: Subset, keys: set[str]) -> Subset:
    """``sub`` less the rows of ``keys``; same digest (the input is the same
    subset; the filter's settings are in the shards' layout)."""
    if not keys:
        return sub
    subset_keys = sub.table.column(SHARD_SUBSET_KEY).to_pylist()
    keep = [i for i, k in enumerate(subset_keys) if k not in keys]
    index = pa.array(keep, pa.int64())
    return replace(sub, table=sub.table.take(index),
                   image_paths=[sub.image_paths[i] for i in keep] if sub.image_paths else sub.image_paths,
                   safety=sub.safety.take(index) if sub.safety is not None else None,
                   queries=[sub.queries[i] for i in keep] if sub.queries else sub.queries)


def scored_rows(sub: Subset) -> int:
    """Rows with a punsafe or NSFW value (what ``--safety metadata`` would check)."""
    if sub.safety is None:
        return 0
    have = None
    for name in sub.safety.column_names:
        valid = sub.safety.column(name).is_valid()
        have = valid if have is None else pc.or_(have, valid)
    return int(pc.sum(have).as_py() or 0)


# --- the summary block and the record -------------------------------------------------
def report(opts: DownloadOptions, full: pa.Table, sub: Subset, checked_keys: set[str] | list[str],
           drops: list[Drop]) -> dict:
    """The summary's ``safety`` block. ``full``: the subset as read (before the
    filter); ``checked_keys``: the rows the filter looked at."""
    columns = sub.safety.column_names if sub.safety is not None else []
    if opts.safety == "off":
        return {"mode": "off", "columns": columns, "subset_rows": full.num_rows, "would_check": scored_rows(sub)}
    by_reason = Counter({r: 0 for r in REASONS})
    by_reason.update(d.reason for d in drops)
    classes_of = dict(zip(full.column(SHARD_SUBSET_KEY).to_pylist(), _classes(full)))
    checked, dropped = Counter(), Counter()
    for key in checked_keys:
        checked.update(classes_of.get(key) or [])
    for d in drops:
        dropped.update(classes_of.get(d.key) or [])
    per_class = {c: {"checked": checked[c], "dropped": dropped[c]}
                 for c in sorted(checked, key=lambda c: (-dropped[c], c))}
    # a class the filter empties is as lost as one whose links rotted: said, not silent
    warnings = [f"class {c!r} lost most of its checked images to the safety filter: {v['dropped']} of {v['checked']}"
                for c, v in per_class.items() if v["dropped"] and v["checked"] - v["dropped"] < opts.warn_below * v["checked"]]
    out = {"mode": opts.safety, "max_punsafe": opts.max_punsafe, "columns": columns,
           "subset_rows": full.num_rows, "checked": len(checked_keys), "dropped": len(drops),
           "dropped_by_reason": dict(by_reason), "per_class": per_class, "record": SAFETY_DROPPED_FILE,
           "warnings": warnings}
    if opts.safety == "metadata":
        out["strict"] = opts.safety_strict
    else:
        out["scorer"] = opts.safety_scorer
    return out


def _classes(table: pa.Table) -> list:
    if "classes" in table.column_names:
        return table.column("classes").to_pylist()
    return [None] * table.num_rows


def write_record(path, full: pa.Table, drops: list[Drop]) -> None:
    """SAFETY_DROPPED_FILE: each dropped row, its classes, url, caption and why (atomic)."""
    position = {k: i for i, k in enumerate(full.column(SHARD_SUBSET_KEY).to_pylist())}
    rows = [position[d.key] for d in drops]
    take = pa.array(rows, pa.int64())
    classes = full.column("classes").take(take) if "classes" in full.column_names \
        else pa.nulls(len(rows), pa.list_(pa.string()))
    table = pa.table({
        SHARD_SUBSET_KEY: pa.array([d.key for d in drops], pa.string()),
        "classes": classes.cast(pa.list_(pa.string())),
        "url": full.column("url").take(take), "caption": full.column("caption").take(take),
        "reason": pa.array([d.reason for d in drops], pa.string()),
        "score": pa.array([d.score for d in drops], pa.float64()),
        "label": pa.array([d.label for d in drops], pa.string()),
    }, schema=RECORD_SCHEMA)
    write_parquet(table, path)


def print_safety(block: dict) -> None:
    if block["mode"] == "off":  # said, so that a user learns the filter exists
        if block["columns"]:
            console.print(f"safety filter: off ({block['would_check']} rows carry {'/'.join(block['columns'])}: "
                          "--safety metadata would check them)", highlight=False)
        else:
            console.print(f"safety filter: off ({block['subset_rows']} rows; no punsafe/NSFW columns: "
                          "--safety classifier would score the downloaded images)", style="dim", highlight=False)
        return
    reasons = ", ".join(f"{n} {r}" for r, n in block["dropped_by_reason"].items() if n)
    console.print(f"[bold]safety filter ({block['mode']}, max punsafe {block['max_punsafe']:g}):[/] "
                  f"{block['checked']} checked, {block['dropped']} dropped{f' ({reasons})' if reasons else ''} "
                  f"-- listed in {block['record']}", highlight=False)
    hit = [(c, v) for c, v in block["per_class"].items() if v["dropped"]]
    if hit:
        console.print("  dropped per class: " + ", ".join(f"{c} {v['dropped']}/{v['checked']}" for c, v in hit[:10])
                      + (f" (+{len(hit) - 10} more)" if len(hit) > 10 else ""), highlight=False)
    for w in block["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
