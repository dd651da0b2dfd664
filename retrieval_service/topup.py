"""``react retrieve --top-up SHARDS_DIR``: the next-best pairs for what a download lost.

Links rot (REACT's own ImageNet subset lost ~15 % within a year). A class's
size is the number of pairs of the original subset whose first class (the
class whose query scored the pair highest) it is; what it has now is how many
such pairs -- of the original and of the top-ups appended since -- were
downloaded (react.shard_status). When a class is short, the same task is
retrieved again with a larger k (the whole task, so that a new pair's first
class is the one it would have had); the pairs any earlier subset of
SHARDS_DIR requested are left out (nothing is fetched twice), and per short
class the best ``short`` new pairs of that first class are kept. k grows (k +
the largest shortfall, then doubling, up to the task limit) until every short
class is filled or a doubling brings it nothing new: then the corpus has no
more for it at this task's settings, and the report says so per class.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from react.errors import ReactError
from react.progress import console, progress
from react.schemas import SUBSET_TASK_KEY, SUBSET_TOPUP_KEY, write_parquet, write_text
from react.shard_status import DownloadState, read_download_state
from retrieval_service.spec import Limits, validate_spec

if TYPE_CHECKING:
    from retrieval_service.retrieve_cmd import ClassesFile


def top_up(args: argparse.Namespace, classes: ClassesFile, templates: list[str], dedup: float | None) -> int:
    state = read_download_state(args.top_up)
    wanted = validate_spec(classes.names, templates, args.k, args.mode, args.threshold, dedup, aliases=classes.aliases)
    spec = _check_task(state, wanted)
    requested, target, have = _accounting(state)
    short = {c: target[c] - have[c] for c in wanted.classes if target[c] > have[c]}
    rows: list[dict] = [{"class": c, "target": target[c], "downloaded": have[c], "short": max(0, target[c] - have[c])}
                        for c in wanted.classes]
    if not short:
        _print_plan(rows, None)
        console.print(f"every class of {state.root} has its requested size: nothing to top up (no {args.out} written)",
                      highlight=False)
        _write_json(args, state, rows, None)
        return 0
    retrieve = _retriever(args, templates, dedup, classes.aliases)
    chosen, report, k, exhausted = _search(retrieve, wanted.classes, short, requested, max(args.k, int(spec["k"])))
    found = Counter(row["classes"][0] for row in chosen)
    for r in rows:
        if r["short"]:
            r["new"] = found[r["class"]]
            r["still_short"] = r["short"] - r["new"]
            r["corpus_exhausted"] = r["class"] in exhausted
    _print_plan(rows, k)
    if not chosen:
        console.print(f"the corpus has no pair for the {len(short)} short class(es) that {state.root} has not "
                      f"requested already (k up to {k}): no {args.out} written", highlight=False)
        _write_json(args, state, rows, k)
        return 0
    record = {"of": state.digest, "shards_dir": str(Path(state.root).resolve()), "round": len(state.topups) + 1,
              "k": k, "short": short, "new": {c: found[c] for c in short}}
    table = pa.Table.from_pylist(chosen, schema=retrieve.schema.remove_metadata())
    table = table.replace_schema_metadata({SUBSET_TASK_KEY: json.dumps(report), SUBSET_TOPUP_KEY: json.dumps(record)})
    write_parquet(table, args.out)
    _write_json(args, state, rows, k)
    console.print(f"top-up: {args.out} ({table.num_rows} new pairs for {len(short)} short class(es), k={k}); "
                  f"append it with: react download {args.out} --out {state.root}", highlight=False)
    return 0


def _check_task(state: DownloadState, wanted) -> dict:
    """The original subset's task, which must be the one given (classes, templates, mode)."""
    original = state.subsets[0]
    raw = (pq.read_schema(original).metadata or {}).get(SUBSET_TASK_KEY.encode())
    if raw is None:
        raise ReactError(f"--top-up: {original} (the subset {state.root} was downloaded from) was not written by "
                         "react retrieve: no task to continue")
    try:
        spec = json.loads(raw)["spec"]
    except (ValueError, KeyError, TypeError):
        raise ReactError(f"--top-up: the task report in {original} is unreadable") from None
    for name, ours in (("classes", wanted.classes), ("templates", wanted.templates), ("mode", wanted.mode)):
        if spec.get(name) != ours:
            raise ReactError(f"--top-up: {state.root} was retrieved for another task ({name} differ from "
                             f"{original}'s); pass the same --classes, --templates and --mode")
    return spec


def _accounting(state: DownloadState) -> tuple[set[str], Counter, Counter]:
    """Every key requested into the folder, each class's size (original subset) and downloaded pairs."""
    requested: set[str] = set()
    target, have = Counter(), Counter()
    for i, path in enumerate(state.subsets):
        table = pq.read_table(path, columns=["key", "classes"])
        for key, classes in zip(table.column("key").to_pylist(), table.column("classes").to_pylist()):
            if key not in state.status:
                raise ReactError(f"--top-up: {path} has rows {state.root} never attempted (changed since the "
                                 "download?); its summary does not describe it")
            requested.add(key)
            if classes:  # a pair counts for its first class only: the sizes add up to the subset's
                target[classes[0]] += i == 0
                have[classes[0]] += state.status[key]
    return requested, target, have


def _search(retrieve: "_Retriever", classes: list[str], short: dict[str, int], requested: set[str],
            k: int) -> tuple[list[dict], dict, int, set[str]]:
    """Per short class the best never-requested pairs whose first class (the class whose query
    scored them highest) it is; k grows until each is filled or a doubling brings it nothing new.
    Returns the pairs (best first), the last task report, the last k and the classes left short."""
    limit = Limits().max_k
    k = min(limit, k + max(short.values()))
    before: dict[str, int] | None = None
    while True:
        table, report = retrieve(classes, k)  # the whole task, so that a pair's first class is the true one
        fresh: dict[str, list[dict]] = {c: [] for c in short}
        for row in table.to_pylist():  # best similarity first
            if row["key"] not in requested and row["classes"] and row["classes"][0] in fresh:
                fresh[row["classes"][0]].append(row)
        counts = {c: len(rows) for c, rows in fresh.items()}
        unfilled = {c for c in short if counts[c] < short[c]}
        stuck = {c for c in unfilled if k >= limit or (before is not None and counts[c] == before[c])}
        if stuck == unfilled:
            chosen = [row for c in short for row in fresh[c][: short[c]]]
            return sorted(chosen, key=lambda r: -r["similarity"]), report, k, unfilled
        before, k = counts, min(limit, 2 * k)


class _Retriever:
    """One task run for a given class list and k, in-process (``--index``) or through ``--server``."""

    def __init__(self, args: argparse.Namespace, templates: list[str], dedup: float | None,
                 aliases: dict[str, list[str]]) -> None:
        self.args, self.templates, self.dedup, self.aliases = args, templates, dedup, aliases
        self.schema: pa.Schema | None = None
        self.bar = None
        if args.server:
            from retrieval_service.client import ServiceClient
            from retrieval_service.config import read_api_keys

            key = next(iter(read_api_keys(args.api_key_file)), None) if args.api_key_file else None
            self.client = ServiceClient(args.server, key)
        else:
            from index.searcher import Searcher
            from retrieval_service.retrieve_cmd import _embed_exclusions
            from retrieval_service.task import TaskRetriever, load_index_model

            searcher = Searcher(args.index)
            model = load_index_model(searcher, args.model)
            self.exclusion = _embed_exclusions(model, [str(p) for p in args.exclude]) if args.exclude else None
            self.task = TaskRetriever(searcher, model)

    def __call__(self, classes: list[str], k: int) -> tuple[pa.Table, dict]:
        with progress() as bar:
            job = bar.add_task(f"top-up: {len(classes)} short class(es), k={k}", total=None, unit="query")
            show = lambda done, total: bar.update(job, completed=done, total=max(1, total))  # noqa: E731
            table, report = self._server(classes, k, show) if self.args.server else self._local(classes, k, show)
        self.schema = table.schema
        return table, report

    def _local(self, classes: list[str], k: int, show) -> tuple[pa.Table, dict]:
        args = self.args
        # no --per-class here: a top-up wants every candidate; the shortfall per class is its own quota
        spec = validate_spec(classes, self.templates, k, args.mode, args.threshold, self.dedup, aliases=self.aliases,
                             include_queries=not args.no_queries, exclude=[str(p) for p in args.exclude],
                             exclude_threshold=args.exclude_threshold,
                             examples=getattr(args, "examples_read", None) or {}, example_mode=args.example_mode)
        result = self.task.run(spec, lambda stage, done, total: show(done, total), exclusion=self.exclusion)
        return result.table, json.loads(result.table.schema.metadata[SUBSET_TASK_KEY.encode()])

    def _server(self, classes: list[str], k: int, show) -> tuple[pa.Table, dict]:
        from retrieval_service.retrieve_cmd import ClassesFile, server_request

        request = server_request(self.args, ClassesFile(classes, self.aliases), self.templates, self.dedup, k)
        job = self.client.submit({**request, "per_class": None})
        self.client.wait(job["id"], lambda info: show(info.get("done", 0), info.get("total") or 1))
        with tempfile.TemporaryDirectory(prefix="react-topup-") as tmp:
            path = self.client.download(job["id"], Path(tmp) / "subset.parquet")
            table = pq.read_table(path)
        return table, json.loads(table.schema.metadata[SUBSET_TASK_KEY.encode()])


def _retriever(args: argparse.Namespace, templates: list[str], dedup: float | None,
               aliases: dict[str, list[str]]) -> _Retriever:
    return _Retriever(args, templates, dedup, aliases)


def _print_plan(rows: list[dict], k: int | None) -> None:
    from rich.table import Table

    table = Table(title="top-up per class" + (f" (k up to {k})" if k else ""))
    cols = ("class", "size", "downloaded", "short") + (("new", "still short", "") if k else ())
    for col in cols:
        table.add_column(col, justify="left" if col in ("class", "") else "right")
    for r in sorted(rows, key=lambda r: (-r["short"], r["class"])):
        extra = ()
        if k:
            extra = (str(r.get("new", 0)), str(r.get("still_short", 0)),
                     "[yellow]corpus has no more[/]" if r.get("corpus_exhausted") else "")
        table.add_row(r["class"], str(r["target"]), str(r["downloaded"]), str(r["short"]), *extra)
    console.print(table)


def _write_json(args: argparse.Namespace, state: DownloadState, rows: list[dict], k: int | None) -> None:
    if args.json:
        write_text(args.json, json.dumps({"shards_dir": str(state.root), "k": k, "per_class": rows,
                                          "out": str(args.out) if any(r.get("new") for r in rows) else None},
                                         indent=2) + "\n")
