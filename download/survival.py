"""Link rot per query: how many of the pairs each query (class x template) found
were downloaded, and -- once ``react retrieve --top-up`` subsets were appended
-- how far each class is from the size it was first asked for.

Kept apart from download.summary (reasons and per-class counts): these land
under their own summary keys, ``survival`` and ``top_up``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from react.progress import console
from react.schemas import SHARD_QUERY_SURVIVAL_FILE, SHARD_SUBSET_KEY, SUBSET_TASK_KEY, write_parquet

from download.inputs import Subset

MAX_QUERY_ROWS = 10        # the queries that kept fewest, in the terminal; all are in download.json
QUERY_FILE_OVER = 1000     # more queries than this: also written to SHARD_QUERY_SURVIVAL_FILE


def _rate(got: int, asked: int) -> float | None:
    return round(got / asked, 4) if asked else None


def _query_names(path: Path) -> dict[str, tuple[str, str]]:
    """query text -> (class, template), from the task report a ``react retrieve`` subset carries."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(SUBSET_TASK_KEY.encode())
        spec = json.loads(raw)["spec"] if raw else None
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        spec = None
    if not spec:
        return {}
    return {t.format(c): (c, t) for c in spec.get("classes", []) for t in spec.get("templates", [])}


def query_survival(subsets: list[Subset], ok_keys: set[str]) -> dict | None:
    """``{"per_query": [...worst first], "per_template": {...}, "queries": n}``, or None when no
    subset has a ``queries`` column. A pair counts once for every query that found it."""
    if all(s.queries is None for s in subsets):
        return None
    asked, got = Counter(), Counter()
    names: dict[str, tuple[str, str]] = {}
    for sub in subsets:
        if sub.queries is None:
            continue
        names.update(_query_names(sub.path))
        for key, queries in zip(sub.table.column(SHARD_SUBSET_KEY).to_pylist(), sub.queries):
            ok = key in ok_keys
            for q in queries or []:
                asked[q] += 1
                got[q] += ok
    rows = []
    by_template_asked, by_template_got = Counter(), Counter()
    for q in sorted(asked, key=lambda q: (got[q] / asked[q], -asked[q], q)):
        cls, template = names.get(q, (None, None))
        rows.append({"query": q, "class": cls, "template": template, "requested": asked[q], "downloaded": got[q],
                     "survival": _rate(got[q], asked[q])})
        if template is not None:
            by_template_asked[template] += asked[q]
            by_template_got[template] += got[q]
    per_template = {t: {"requested": by_template_asked[t], "downloaded": by_template_got[t],
                        "survival": _rate(by_template_got[t], by_template_asked[t])}
                    for t in sorted(by_template_asked, key=lambda t: (by_template_got[t] / by_template_asked[t], t))}
    return {"queries": len(rows), "per_query": rows, "per_template": per_template}


def class_survival(subsets: list[Subset], ok_keys: set[str]) -> dict:
    """Per class over every requested pair (original and top-ups): requested, downloaded, survival, worst first."""
    asked, got = Counter(), Counter()
    for sub in subsets:
        if "classes" not in sub.table.column_names:
            continue
        for key, classes in zip(sub.table.column(SHARD_SUBSET_KEY).to_pylist(), sub.table.column("classes").to_pylist()):
            for c in classes or []:
                asked[c] += 1
                got[c] += key in ok_keys
    return {c: {"requested": asked[c], "downloaded": got[c], "survival": _rate(got[c], asked[c])}
            for c in sorted(asked, key=lambda c: (got[c] / asked[c], c))}


def top_up_status(original: Subset, topups: list[Subset], ok_keys: set[str]) -> dict:
    """Per class: the size first asked for (the original subset's pairs whose first class it is), how
    many such pairs are downloaded now (original + top-ups) and how many it is still short. A pair
    counts for its first class only (the class whose query scored it highest): the sizes add up to
    the subset's, and a top-up retrieved with a larger k (whose pairs carry more classes) cannot
    inflate them."""
    target, have = Counter(), Counter()
    for sub in (original, *topups):
        if "classes" not in sub.table.column_names:
            continue
        for key, classes in zip(sub.table.column(SHARD_SUBSET_KEY).to_pylist(), sub.table.column("classes").to_pylist()):
            if classes:
                target[classes[0]] += sub is original
                have[classes[0]] += key in ok_keys
    per_class = {c: {"target": target[c], "downloaded": have[c], "short": max(0, target[c] - have[c])}
                 for c in sorted(target, key=lambda c: (-(target[c] - have[c]), c))}
    return {"rounds": len(topups), "short_classes": sum(1 for v in per_class.values() if v["short"]),
            "short": sum(v["short"] for v in per_class.values()), "per_class": per_class}


def survival_keys(original: Subset, topups: list[Subset], ok_keys: set[str], root: Path) -> dict:
    """The summary keys this module owns: ``survival`` (per query, per template, per class) and,
    with top-ups, ``top_up``. Writes SHARD_QUERY_SURVIVAL_FILE into ``root`` when there are many queries."""
    subsets = [original, *topups]
    out: dict = {"survival": {"per_class": class_survival(subsets, ok_keys)}}
    per_query = query_survival(subsets, ok_keys)
    file = root / SHARD_QUERY_SURVIVAL_FILE
    if per_query is not None:
        out["survival"].update(per_query)
        if per_query["queries"] > QUERY_FILE_OVER:
            write_parquet(pa.Table.from_pylist(per_query["per_query"]), file)
            out["survival"]["file"] = file.name
    if not (per_query and per_query["queries"] > QUERY_FILE_OVER):
        file.unlink(missing_ok=True)  # a stale one from an earlier, larger subset
    if topups or any(v["downloaded"] < v["requested"] for v in out["survival"]["per_class"].values()):
        out["top_up"] = top_up_status(original, topups, ok_keys)
    return out


def print_survival(summary: dict) -> None:
    """The queries that kept fewest of their pairs, and the classes still short of their size."""
    from rich.table import Table

    survival = summary.get("survival") or {}
    rows = survival.get("per_query") or []
    if rows and rows[0]["downloaded"] < rows[0]["requested"]:
        shown = rows[:MAX_QUERY_ROWS]
        title = f"per query: the {len(shown)} of {len(rows)} that kept fewest" if len(shown) < len(rows) \
            else f"per query ({len(rows)})"
        table = Table(title=title)
        for col in ("query", "requested", "downloaded", "kept %"):
            table.add_column(col, justify="left" if col == "query" else "right")
        for r in shown:
            table.add_row(r["query"], str(r["requested"]), str(r["downloaded"]), f"{100 * (r['survival'] or 0):.0f}")
        console.print(table)
        templates = survival.get("per_template") or {}
        if len(templates) > 1:
            worst, best = next(iter(templates.items())), list(templates.items())[-1]
            console.print(f"per template: kept {100 * (worst[1]['survival'] or 0):.0f} % ({worst[0]!r}) to "
                          f"{100 * (best[1]['survival'] or 0):.0f} % ({best[0]!r})", highlight=False)
    top = summary.get("top_up")
    if top:
        after = f" after {top['rounds']} top-up round(s)" if top["rounds"] else ""
        if top["short_classes"]:
            console.print(f"[yellow]{top['short_classes']} class(es) short of their requested size by "
                          f"{top['short']} pair(s){after}[/]: react retrieve --top-up SHARDS_DIR (the same task "
                          "arguments) asks for the next-best pairs", highlight=False)
        else:
            console.print(f"[green]every class is back to its requested size{after}[/]", highlight=False)
