"""``react retrieve``: one task, in-process (``--index``) or through a server (``--server``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from react.errors import ReactError
from react.progress import console, progress
from react.schemas import write_text

STAGE_LABEL = {"search": "encoding + searching queries", "merge": "merging", "dedup": "collapsing near-duplicates",
               "metadata": "reading metadata", "queued": "queued", "starting": "starting", "done": "done"}


def read_classes(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReactError(f"cannot read classes file {path}: {exc.__class__.__name__}") from None
    classes = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not classes:
        raise ReactError(f"classes file {path} holds no class name")
    return classes


def retrieve(args: argparse.Namespace) -> int:
    from react.templates import get_templates

    classes = read_classes(args.classes)
    templates = get_templates(args.templates)  # a set name or a file, read on this side in both modes
    dedup = None if args.no_dedup else args.dedup_threshold
    if args.out.suffix != ".parquet":
        raise ReactError(f"--out must name a .parquet file, got {args.out}")
    if args.example_mode is not None and args.examples is None:
        raise ReactError("--example-mode needs --examples DIR")
    if args.examples is not None:
        from retrieval_service.examples import read_examples_dir

        args.examples_read = read_examples_dir(args.examples, classes)  # every image checked before any work
    else:
        args.examples_read = {}
    if args.server:
        report = _via_server(args, classes, templates, dedup)
    else:
        report = _in_process(args, classes, templates, dedup)
    print_report(report)
    if args.json:
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    summary = report["summary"]
    examples = (f", {summary['examples']} of them example images ({summary['example_mode']})"
                if summary.get("examples") else "")
    console.print(f"subset: {args.out} ({summary['rows']} pairs from {summary['queries']} queries{examples}, "
                  f"{summary['hits']} hits, {summary['near_duplicates_collapsed']} near-duplicates collapsed, "
                  f"{summary['seconds']:.1f} s)", highlight=False)
    return 0


def _in_process(args, classes, templates, dedup) -> dict:
    from index.searcher import Searcher
    from retrieval_service.spec import validate_spec
    from retrieval_service.task import TaskRetriever, load_index_model, write_subset

    spec = validate_spec(classes, templates, args.k, args.mode, args.threshold, dedup,
                         include_queries=not args.no_queries, exclude=[str(p) for p in args.exclude],
                         exclude_threshold=args.exclude_threshold, examples=args.examples_read,
                         example_mode=args.example_mode)
    searcher = Searcher(args.index)
    model = load_index_model(searcher, args.model)
    exclusion = _embed_exclusions(model, spec.exclude) if spec.exclude else None
    with progress() as bar:
        task = bar.add_task("encoding + searching queries", total=spec.n_queries, unit="query")

        def report(stage: str, done: int, total: int) -> None:
            bar.update(task, description=STAGE_LABEL.get(stage, stage), completed=done, total=total)

        result = TaskRetriever(searcher, model).run(spec, report, exclusion=exclusion)
    write_subset(result, args.out)
    return result.report()


def _embed_exclusions(model, datasets: list[str]):
    """--exclude DATASET...: each dataset's images embedded with the index's model (cached across runs)."""
    from react.config import cache_dir
    from retrieval_service.exclude import Exclusion, embed_dataset

    if model is None:
        raise ReactError("--exclude needs the index's model to embed the evaluation images")
    parts = []
    with progress() as bar:
        for path in datasets:
            task = bar.add_task(f"embedding {path} for --exclude", total=None, unit="image")
            parts.append(embed_dataset(model, path, cache=cache_dir() / "exclude",
                                       progress=lambda done, total: bar.update(task, completed=done, total=total)))
    return Exclusion.combine(parts)


def _via_server(args, classes, templates, dedup) -> dict:
    from retrieval_service.client import ServiceClient
    from retrieval_service.config import read_api_keys

    key = next(iter(read_api_keys(args.api_key_file)), None) if args.api_key_file else None
    client = ServiceClient(args.server, key)
    request = {"classes": classes, "templates": templates, "k": args.k, "mode": args.mode, "index": args.index_name,
               "threshold": args.threshold, "dedup_threshold": dedup, "include_queries": not args.no_queries,
               "exclude": [str(x) for x in args.exclude], "exclude_threshold": args.exclude_threshold}
    if args.examples_read:
        import base64

        request["examples"] = {c: [base64.b64encode(raw).decode("ascii") for raw in raws]
                               for c, raws in args.examples_read.items()}
        request["example_mode"] = args.example_mode or "mix"
    job = client.submit(request)
    with progress() as bar:
        task = bar.add_task("queued", total=max(1, job.get("total") or 1), unit="query")

        def show(info: dict) -> None:
            bar.update(task, description=STAGE_LABEL.get(info.get("stage"), info.get("stage") or ""),
                       completed=info.get("done", 0), total=max(1, info.get("total") or 1))

        info = client.wait(job["id"], show)
    client.download(job["id"], args.out)
    return info["report"]


def print_report(report: dict) -> None:
    from rich.table import Table

    summary = report["summary"]
    table = Table(title=f"{summary['classes']} classes x {summary['templates']} templates, k={summary['k']}, "
                        f"{summary['mode']}: {summary['rows']} pairs")
    decontaminated = bool(summary.get("exclude"))
    for col in ("class", "hits", "uniq", "excl", *(("dropped",) if decontaminated else ()),
                "cover", "p10", "p50", "p90", "max", "flag"):
        table.add_column(col, justify="left" if col in ("class", "flag") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for s in report["classes"]:
        dropped = (str(s.get("excluded", 0)),) if decontaminated else ()
        table.add_row(s["name"], str(s["hits"]), str(s["unique"]), str(s["exclusive"]), *dropped,
                      fmt(s["coverage"]), fmt(s["p10"]), fmt(s["p50"]), fmt(s["p90"]), fmt(s["max"]),
                      "[red]LOW[/]" if s["low_coverage"] else "")
    console.print(table)
    if decontaminated:
        console.print(f"decontamination: {summary['excluded']} retrieved pairs dropped as copies of "
                      f"{summary['excluded_images']} images of {', '.join(summary['exclude'])} "
                      f"(cosine >= {summary['exclude_threshold']})", highlight=False)
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
