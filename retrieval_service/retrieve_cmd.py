"""``react retrieve``: one task, in-process (``--index``) or through a server (``--server``)."""
from __future__ import annotations

import argparse
import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

from react.errors import ReactError
from react.progress import console, progress
from react.schemas import write_text

STAGE_LABEL = {"search": "encoding + searching queries", "merge": "merging", "dedup": "collapsing near-duplicates",
               "metadata": "reading metadata", "queued": "queued", "starting": "starting", "done": "done"}


@dataclass
class ClassesFile:
    """A classes file: class names in order, the aliases given for them, and example image files."""

    names: list[str]
    aliases: dict[str, list[str]] = field(default_factory=dict)
    examples: dict[str, list[Path]] = field(default_factory=dict)


def read_classes(path: Path) -> ClassesFile:
    """One class a line; ``#`` starts a comment line. ``screwdriver|screw driver|turnscrew``: the first
    name is the class, the others are aliases searched for it (a class given on two lines gets the
    aliases of both). A field starting with ``@`` names example images of the class (a path or glob,
    relative to the file's folder): ``screwdriver|screw driver|@examples/screwdriver/*.jpg``. An empty
    name between bars, or an ``@`` field matching no file, is refused, naming the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReactError(f"cannot read classes file {path}: {exc.__class__.__name__}") from None
    out = ClassesFile([])
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [" ".join(part.split()) for part in line.split("|")]
        if not all(parts) or parts[0].startswith("@"):
            raise ReactError(f"classes file {path} line {number}: an empty name in {line.strip()!r} "
                             "(write CLASS|ALIAS|@EXAMPLE_GLOB)")
        names = [p for p in parts if not p.startswith("@")]
        out.names.append(names[0])
        if len(names) > 1:
            out.aliases.setdefault(names[0], []).extend(names[1:])
        for pattern in (p[1:].strip() for p in parts if p.startswith("@")):
            found = sorted(Path(f) for f in glob.glob(str(path.parent / pattern))) if pattern else []
            if not found:
                raise ReactError(f"classes file {path} line {number}: @{pattern} matches no file "
                                 f"(paths are relative to {path.parent})")
            out.examples.setdefault(names[0], []).extend(found)
    if not out.names:
        raise ReactError(f"classes file {path} holds no class name")
    return out


def retrieve(args: argparse.Namespace) -> int:
    from react.templates import get_templates

    classes = read_classes(args.classes)
    if args.per_class is not None and args.per_class < 1:
        raise ReactError(f"--per-class must be a positive integer, got {args.per_class}")
    templates = get_templates(args.templates)  # a set name or a file, read on this side in both modes
    dedup = None if args.no_dedup else args.dedup_threshold
    if args.out.suffix != ".parquet":
        raise ReactError(f"--out must name a .parquet file, got {args.out}")
    args.examples_read = _examples(args, classes)  # every image checked before any work
    if args.example_mode is not None and not args.examples_read:
        raise ReactError("--example-mode needs example images (--examples DIR or @ fields in --classes)")
    if getattr(args, "top_up", None) is not None:
        from retrieval_service.topup import top_up

        return top_up(args, classes, templates, dedup)
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


def _examples(args: argparse.Namespace, classes: ClassesFile) -> dict[str, list[bytes]]:
    """Example images per class: the classes file's ``@`` fields, then --examples DIR's folders."""
    from retrieval_service.examples import read_example_files, read_examples_dir

    out = {name: read_example_files(files, f"classes file {args.classes}") for name, files in classes.examples.items()}
    if args.examples is not None:
        for name, raws in read_examples_dir(args.examples, classes.names).items():
            out.setdefault(name, []).extend(raws)
    return out


def _in_process(args, classes, templates, dedup) -> dict:
    from index.searcher import Searcher
    from retrieval_service.spec import validate_spec
    from retrieval_service.task import TaskRetriever, load_index_model, write_subset

    spec = validate_spec(classes.names, templates, args.k, args.mode, args.threshold, dedup,
                         aliases=classes.aliases, per_class=args.per_class, include_queries=not args.no_queries,
                         exclude=[str(p) for p in args.exclude], exclude_threshold=args.exclude_threshold,
                         examples=args.examples_read, example_mode=args.example_mode)
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
    job = client.submit(server_request(args, classes, templates, dedup, args.k))
    with progress() as bar:
        task = bar.add_task("queued", total=max(1, job.get("total") or 1), unit="query")

        def show(info: dict) -> None:
            bar.update(task, description=STAGE_LABEL.get(info.get("stage"), info.get("stage") or ""),
                       completed=info.get("done", 0), total=max(1, info.get("total") or 1))

        info = client.wait(job["id"], show)
    client.download(job["id"], args.out)
    return info["report"]


def server_request(args: argparse.Namespace, classes: ClassesFile, templates: list[str], dedup: float | None,
                   k: int) -> dict:
    """The /v1/retrieve body for this command's task."""
    request = {"classes": classes.names, "aliases": classes.aliases, "per_class": args.per_class,
               "templates": templates, "k": k, "mode": args.mode, "index": args.index_name,
               "threshold": args.threshold, "dedup_threshold": dedup, "include_queries": not args.no_queries,
               "exclude": [str(x) for x in args.exclude], "exclude_threshold": args.exclude_threshold}
    examples = getattr(args, "examples_read", None)
    if examples:
        import base64

        request["examples"] = {c: [base64.b64encode(raw).decode("ascii") for raw in raws] for c, raws in examples.items()}
        request["example_mode"] = args.example_mode or "mix"
    return request


def _count(s: dict) -> str:
    """A class's estimated pairs above the count's similarity ('>=' marks a lower bound)."""
    if s.get("pairs_above") is None:
        return "-"
    return (">=" if s.get("pairs_above_lower_bound") else "") + f"{s['pairs_above']:,}"


def _flags(s: dict) -> str:
    flags = ["[red]LOW[/]"] if s["low_coverage"] else []
    flags += ["[red]NOT COVERED[/]"] if s.get("not_covered") else []
    flags += ["[yellow]FEW[/]"] if s.get("almost_nothing") else []
    flags += ["[yellow]k![/]"] if s.get("k_too_small") else []
    return " ".join(flags)


def print_report(report: dict) -> None:
    """The coverage table: a row per class, an indented ``= alias`` row per alias (its excl: pairs no
    other name of its class found; WEAK: it scores well below its class name), a ``cut`` column under a
    quota."""
    from rich.table import Table

    summary = report["summary"]
    quota = summary.get("per_class")
    table = Table(title=f"{summary['classes']} classes x {summary['templates']} templates, k={summary['k']}, "
                        f"{summary['mode']}: {summary['rows']} pairs"
                        + (f", at most {quota} per class" if quota else ""))
    decontaminated = bool(summary.get("exclude"))
    extra = (("dropped",) if decontaminated else ()) + (("cut",) if quota else ())
    for col in ("class", "hits", "uniq", "excl", *extra, "cover", "p10", "p50", "p90", "max", "pairs>=cut", "flag"):
        table.add_column(col, justify="left" if col in ("class", "flag") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for s in report["classes"]:
        more = ((str(s.get("excluded", 0)),) if decontaminated else ()) + ((str(s.get("cut", 0)),) if quota else ())
        table.add_row(s["name"], str(s["hits"]), str(s["unique"]), str(s["exclusive"]), *more,
                      fmt(s["coverage"]), fmt(s["p10"]), fmt(s["p50"]), fmt(s["p90"]), fmt(s["max"]),
                      _count(s), _flags(s))
        for a in s.get("aliases", ()):
            # excl column: pairs only this alias found among its class's names
            table.add_row(f"  = {a['alias']}", str(a["hits"]), str(a["unique"]), str(a["only"]),
                          *("" for _ in extra), fmt(a["coverage"]), "", "", "", "", "",
                          "[yellow]WEAK[/]" if a["weak"] else "", style="dim")
    console.print(table)
    if summary.get("coverage_cut") is not None:
        similarity = ", ".join(f"{m} {v:.3f}" for m, v in (summary.get("count_similarity") or {}).items())
        console.print(f"absolute coverage cut {summary['coverage_cut']:.3f} (calibrated on the index); pairs>=cut "
                      f"counted at similarity {similarity} by {summary.get('count_method')}; LOW: relative to the "
                      f"task's median, NOT COVERED: below the cut, FEW: under 10 pairs, k!: k is too small",
                      highlight=False)
    if decontaminated:
        console.print(f"decontamination: {summary['excluded']} retrieved pairs dropped as copies of "
                      f"{summary['excluded_images']} images of {', '.join(summary['exclude'])} "
                      f"(cosine >= {summary['exclude_threshold']})", highlight=False)
    if quota:
        console.print(f"quota: {summary['quota_cut']} class labels beyond {quota} per class cut "
                      f"({summary['quota_rows_dropped']} pairs left the subset: every class that found them cut them)", highlight=False)
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
