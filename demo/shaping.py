"""The demo's task-shaping steps: the same task with aliases and a per-class quota, with
example images, and a download from a web that lost links followed by a top-up.

None of them changes what the demo trains on: each runs beside the plain subset and
reports what it changed (rows, cuts, weak aliases, example hits, links lost and
replaced). benchmarks/classes_bench.py and benchmarks/examples_bench.py measure the
precision of the subsets; docs/service.md and docs/download.md hold the figures.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from react.progress import console
from react.schemas import CLASSES_FILE, TEMPLATES_FILE

Step = Callable[[str, list[str]], None]

ALIASES = Path(__file__).with_name("aliases.txt")  # CLASS|ALIAS|ALIAS for the demo task's classes
ALIAS_QUOTA = 20  # --per-class of the alias retrieval
EXAMPLES_PER_CLASS = 3  # example images per class, from the validation half (never the scored test half)
ROT_FRACTION = 0.15  # REACT's 10M ImageNet subset lost ~15 % of its links within a year


def task_args(corpus: Path, mode: str, exclude: Sequence[str]) -> list[str]:
    """The demo task's ``react retrieve`` arguments after --server/--index (classes, templates, k, mode)."""
    return ["--classes", str(corpus / CLASSES_FILE), "--templates", str(corpus / TEMPLATES_FILE), "--k", "50",
            "--mode", mode, "--exclude", *exclude]


def alias_retrieval(step: Step, url: str, corpus: Path, out: Path, mode: str, exclude: Sequence[str]) -> dict:
    """The task with demo/aliases.txt and ``--per-class``: rows, quota cuts and the aliases flagged weak."""
    report = out / "subset_aliases_report.json"
    argv = task_args(corpus, mode, exclude)
    argv[1] = str(ALIASES)
    step("retrieve-aliases", ["retrieve", "--server", url, *argv, "--per-class", str(ALIAS_QUOTA),
                              "--out", str(out / "subset_aliases.parquet"), "--json", str(report)])
    data = json.loads(report.read_text())
    summary = data["summary"]
    weak = [f"{row['name']}|{a['alias']}" for row in data["classes"] for a in row.get("aliases", []) if a.get("weak")]
    return {"aliases": summary["aliases"], "per_class": summary["per_class"], "rows": summary["rows"],
            "quota_cut": summary["quota_cut"], "weak_aliases": weak}


def example_retrieval(step: Step, url: str, corpus: Path, out: Path, mode: str, exclude: Sequence[str]) -> dict:
    """The task with ``EXAMPLES_PER_CLASS`` validation images per class as extra (image -> image) queries."""
    from retrieval_service.examples import dataset_examples, write_examples_dir

    folder = write_examples_dir(dataset_examples(corpus, "val", EXAMPLES_PER_CLASS), out / "examples")
    report = out / "subset_examples_report.json"
    step("retrieve-examples", ["retrieve", "--server", url, *task_args(corpus, mode, exclude), "--examples",
                               str(folder), "--example-mode", "mix", "--out", str(out / "subset_examples.parquet"),
                               "--json", str(report)])
    summary = json.loads(report.read_text())["summary"]
    return {"examples": summary["examples"], "per_class": EXAMPLES_PER_CLASS, "split": "val",
            "rows": summary["rows"]}


def coverage_line(report_path: Path) -> dict:
    """The classes the absolute rule says the corpus does not cover, printed and returned."""
    classes = json.loads(report_path.read_text())["classes"]
    flagged = [c["name"] for c in classes if c.get("not_covered")]
    few = [c["name"] for c in classes if c.get("almost_nothing")]
    console.print(f"coverage: {len(flagged)} of {len(classes)} classes not covered by the corpus (absolute rule)"
                  + (f": {', '.join(flagged)}" if flagged else ""), highlight=False)
    return {"not_covered": flagged, "almost_nothing": few}


def link_rot(step: Step, url: str, corpus: Path, subset: Path, out: Path, mode: str, exclude: Sequence[str]) -> dict:
    """The subset downloaded again from a loopback web where a fixed ``ROT_FRACTION`` of urls 404,
    then one ``react retrieve --top-up`` round and its download appended to the same shards."""
    from download.loopback import download_served

    folder = out / "link_rot"
    shards, topup = folder / "shards", folder / "topup-1.parquet"
    topup.unlink(missing_ok=True)
    before, _ = download_served(corpus, subset, shards, lambda argv: step("download-rotten", argv), "--overwrite",
                                fail_fraction=ROT_FRACTION)
    # outside the loopback web: its proxy settings would route the service's own requests too
    step("top-up", ["retrieve", "--server", url, *task_args(corpus, mode, exclude), "--top-up", str(shards),
                    "--out", str(topup), "--json", str(folder / "topup-1.json")])
    after = before
    if topup.exists():
        after, _ = download_served(corpus, topup, shards, lambda argv: step("download-top-up", argv),
                                   fail_fraction=ROT_FRACTION)
    b, a = before.get("top_up", {}), after.get("top_up", {})
    return {"rot_fraction": ROT_FRACTION, "requested": before["requested"], "downloaded": before["downloaded"],
            "short_before": b.get("short", 0), "short_classes_before": b.get("short_classes", 0),
            "topped_up": after["requested"] - before["requested"], "downloaded_after": after["downloaded"],
            "short_after": a.get("short", 0), "short_classes_after": a.get("short_classes", 0),
            "worst_queries": [{k: q[k] for k in ("query", "requested", "downloaded", "survival")}
                              for q in before["survival"]["per_query"][:3]]}
