"""What a download got: requested, downloaded, failures by reason, per class."""
from __future__ import annotations

from collections import Counter

import pyarrow as pa

from react.progress import console
from react.schemas import SHARD_SUBSET_KEY

# failure reasons, as the summary names them, and how the terminal labels them
REASONS = {"not_found": "404", "timeout": "timeout", "decode_error": "decode error", "opted_out": "opted out",
           "other": "other"}
SIZE_FILTERS = ("image too small", "image area too large", "aspect ratio too large")
MAX_CLASS_ROWS = 10  # the classes that kept fewest images; all are in download.json


def reason(status: str | None, error: str | None) -> str:
    """One of REASONS for a failed row of img2dataset's per-shard parquet."""
    message = (error or "").lower()
    if "x-robots-tag" in message:
        return "opted_out"
    if "http error 404" in message or "no such file or directory" in message:
        return "not_found"  # a missing file is --local-corpus' 404
    if "timed out" in message or "timeout" in message:
        return "timeout"
    if status == "failed_to_resize" and message not in SIZE_FILTERS:
        return "decode_error"  # not an image, or one the decoder cannot read
    return "other"


def summarize(subset_table: pa.Table, attempts: pa.Table, warn_below: float, extra: dict) -> dict:
    """The summary of a download from its subset and the latest attempt of each row."""
    status = attempts.column("status").to_pylist() if attempts.num_rows else []
    errors = attempts.column("error_message").to_pylist() if attempts.num_rows else []
    keys = attempts.column(SHARD_SUBSET_KEY).to_pylist() if attempts.num_rows else []
    ok_keys = {k for k, s in zip(keys, status) if s == "success"}
    by_reason = Counter({r: 0 for r in REASONS})
    other = Counter()
    for s, e in zip(status, errors):
        if s != "success":
            r = reason(s, e)
            by_reason[r] += 1
            if r == "other":
                other[(e or s or "unknown")[:200]] += 1
    requested = subset_table.num_rows
    summary = {
        "requested": requested,
        "downloaded": len(ok_keys),
        "failed": requested - len(ok_keys),
        "failed_by_reason": dict(by_reason),
        "not_attempted": requested - len(keys),
        "other_errors": dict(other.most_common(10)),
        **extra,
    }
    per_class, warnings = {}, []
    if "classes" in subset_table.column_names:
        asked, got = Counter(), Counter()
        for key, classes in zip(subset_table.column(SHARD_SUBSET_KEY).to_pylist(),
                                subset_table.column("classes").to_pylist()):
            for c in classes or []:
                asked[c] += 1
                got[c] += key in ok_keys
        for c in sorted(asked, key=lambda c: (got[c] / asked[c], c)):
            per_class[c] = {"requested": asked[c], "downloaded": got[c]}
            if got[c] < warn_below * asked[c]:
                warnings.append(f"class {c!r} lost most of its images: {got[c]} of {asked[c]} downloaded")
    summary["per_class"] = per_class
    summary["warnings"] = warnings
    return summary


def print_summary(summary: dict, where: str) -> None:
    from rich.table import Table

    console.print(f"[bold]download:[/] {summary['requested']} requested, [green]{summary['downloaded']} downloaded[/], "
                  f"{summary['failed']} failed -- {summary.get('shards', 0)} shard(s) in {where} "
                  f"({summary.get('seconds', 0):.1f} s)", highlight=False)
    if summary["failed"]:
        table = Table(title="failed by reason")
        table.add_column("reason")
        table.add_column("images", justify="right")
        for r, label in REASONS.items():
            table.add_row(label, str(summary["failed_by_reason"][r]))
        if summary.get("not_attempted"):
            table.add_row("not attempted", str(summary["not_attempted"]))
        console.print(table)
    per_class = summary.get("per_class") or {}
    if per_class:
        warn_below = summary.get("warn_below", 0.5)
        shown = list(per_class.items())[:MAX_CLASS_ROWS]
        title = f"per class: the {len(shown)} of {len(per_class)} that kept fewest" if len(shown) < len(per_class) \
            else f"per class ({len(per_class)})"
        ct = Table(title=title)
        for col in ("class", "requested", "downloaded", "kept %", "flag"):
            ct.add_column(col, justify="left" if col in ("class", "flag") else "right")
        for name, c in shown:
            pct = 100.0 * c["downloaded"] / c["requested"] if c["requested"] else 0.0
            ct.add_row(name, str(c["requested"]), str(c["downloaded"]), f"{pct:.0f}",
                       "[red]LOST[/]" if c["downloaded"] < warn_below * c["requested"] else "")
        console.print(ct)
    for message, n in summary.get("other_errors", {}).items():
        console.print(f"[dim]other failure x{n}: {message}[/]", highlight=False)
    for w in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
