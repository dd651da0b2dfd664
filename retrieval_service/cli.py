"""``react serve`` and ``react retrieve``: the stage's command-line door.

Every default an option shows is read from where it is defined --
``ServiceConfig``'s fields (``react serve``), ``TaskSpec``'s fields and
``spec.DEFAULT_DEDUP_THRESHOLD`` (``react retrieve``) -- never repeated here.
Only light modules are imported while the parser is built; the work is
imported when a command runs.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path

from retrieval_service.config import config_default
from retrieval_service.spec import DEFAULT_DEDUP_THRESHOLD, EXAMPLE_MODES, MODES, TaskSpec


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
    _add_retrieve(sub)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    limits = config_default("limits")
    image_mb = config_default("max_image_bytes") / (1 << 20)
    serve = sub.add_parser(
        "serve", help="serve index folders over HTTP (task retrieval, search, clip-retrieval compatible)",
        description="Hold one or more index folders and their CLIP models in memory and answer task retrieval "
        "(POST /v1/retrieve, as jobs), single searches (POST /v1/search), clip-retrieval's /knn-service and "
        "/indices-list, /v1/indices, /healthz, /readyz and /metrics. SIGHUP or POST /v1/indices/NAME/reload "
        "re-opens an index without dropping requests.")
    serve.add_argument("--index", action="append", required=True, metavar="[NAME=]INDEX_DIR",
                       help="an index folder, optionally named (default name: the folder's name); repeatable")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    serve.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                       help="require one of these keys (one a line) on every endpoint but /healthz and /readyz, "
                            "as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    serve.add_argument("--state-dir", type=Path, default=config_default("state_dir"),
                       help="where jobs and their results are kept until deleted (default: %(default)s)")
    serve.add_argument("--model", action="append", default=[], metavar="NAME=MODEL",
                       help="load this model for index NAME instead of the one its index.json records")
    serve.add_argument("--exclude-set", action="append", default=[], metavar="NAME=DATASET",
                       help="an evaluation dataset (any form `react eval` reads; every split) whose images tasks may "
                            "exclude by NAME (`exclude` in /v1/retrieve, `react retrieve --exclude NAME`); embedded "
                            "with each index's model at load and cached; repeatable")
    serve.add_argument("--device", default=config_default("device"),
                       help="torch device (default: cuda if available, else cpu)")
    serve.add_argument("--max-k", type=int, default=config_default("max_search_k"),
                       help="largest k per query (default: %(default)s)")
    serve.add_argument("--max-classes", type=int, default=limits.max_classes,
                       help="most classes per task (default: %(default)s)")
    serve.add_argument("--max-templates", type=int, default=limits.max_templates,
                       help="most templates per task (default: %(default)s)")
    serve.add_argument("--allow-image-url", action="store_true",
                       help="let /knn-service fetch image_url (size-limited, with --image-url-timeout)")
    serve.add_argument("--image-url-timeout", type=float, default=config_default("image_url_timeout_s"), metavar="S",
                       help=f"(default: {config_default('image_url_timeout_s'):g} s)")
    serve.add_argument("--max-image-mb", type=float, default=image_mb,
                       help=f"largest query image (default: {image_mb:g} MB)")
    serve.add_argument("--job-workers", type=int, default=config_default("job_workers"),
                       help="tasks run at once (default: %(default)s)")
    serve.add_argument("--no-batching", dest="batching", action="store_false",
                       help="search (and encode) each single query on its own thread instead of batching "
                            "concurrent requests' queries into one call")
    serve.add_argument("--batch-wait-ms", type=float, default=config_default("batch_wait_ms"), metavar="MS",
                       help="longest a batch waits for requests already in the service to join it "
                            f"(default: {config_default('batch_wait_ms'):g})")
    serve.add_argument("--batch-max", type=int, default=config_default("batch_max"), metavar="N",
                       help="most queries per batch (default: %(default)s)")
    serve.add_argument("--batch-threads", type=int, default=config_default("batch_threads"), metavar="N",
                       help="threads faiss and torch use inside one batched call (default: %(default)s; "
                            "0: their defaults)")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(func=_serve)


def _add_retrieve(sub: argparse._SubParsersAction) -> None:
    task = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(TaskSpec)
            if f.default is not MISSING or f.default_factory is not MISSING}
    ret = sub.add_parser(
        "retrieve", help="retrieve the image-text subset for a task's class names",
        description="For every class and template, search the corpus with the query template.format(class), "
        "merge the hits into one row per pair (deduplicated across templates and classes, labelled with every "
        "class that found it), collapse near-duplicate images, and write SUBSET.parquet (key, url, caption, "
        "similarity, classes + queries, hits, duplicates, row), readable by img2dataset. Prints the per-class "
        "table and low-coverage warnings. --index runs in this process; --server sends the same task to a "
        "running `react serve` as a job.")
    where = ret.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", default=None, metavar="URL", help="a running react serve, e.g. http://127.0.0.1:8000")
    where.add_argument("--index", type=Path, default=None, metavar="INDEX_DIR", help="run in-process on this index")
    ret.add_argument("--classes", type=Path, required=True, metavar="FILE",
                     help="class names, one a line ('#' starts a comment line); CLASS|ALIAS|ALIAS searches the "
                          "aliases too (each x every template) and labels their pairs with CLASS")
    ret.add_argument("--templates", default=None, metavar="NAME|FILE",
                     help="imagenet (CLIP's 80, default), simple, classname, or a file with one {} template a line")
    ret.add_argument("--k", type=int, default=task["k"], help="results per query (default: %(default)s)")
    ret.add_argument("--mode", default=task["mode"], choices=MODES,
                     help="text-to-image, text-to-text, or both (default: %(default)s)")
    ret.add_argument("--out", type=Path, required=True, metavar="SUBSET.parquet", help="where to write the subset")
    ret.add_argument("--threshold", type=float, default=None, help="drop hits below this cosine similarity")
    ret.add_argument("--dedup-threshold", type=float, default=DEFAULT_DEDUP_THRESHOLD,
                     help="collapse retrieved images whose embeddings are at least this similar (default: %(default)s)")
    ret.add_argument("--no-dedup", action="store_true", help="keep near-duplicate images")
    ret.add_argument("--exclude", nargs="+", default=task["exclude"], metavar="DATASET",
                     help="decontaminate: drop retrieved pairs whose image is within --exclude-threshold of an image "
                          "of these evaluation datasets (with --index: dataset paths, embedded with the index's model "
                          "and cached; with --server: the server's --exclude-set names); dropped counts per class")
    ret.add_argument("--exclude-threshold", type=float, default=task["exclude_threshold"], metavar="COS",
                     help="cosine similarity at which a retrieved image counts as a copy of an excluded one "
                          "(default: %(default)s, calibrated on planted copies: docs/service.md)")
    ret.add_argument("--per-class", type=int, default=task["per_class"], metavar="N",
                     help="after merging, exclusion and collapse keep at most N pairs per class (its best by "
                          "similarity), so frequent classes do not crowd out rare ones; k stays per query "
                          "(default: no quota)")
    ret.add_argument("--examples", type=Path, default=None, metavar="DIR",
                     help="example images as queries: DIR/<class name>/*.{jpg,png,webp}, each searched image -> "
                          "image (with the index's model) and its hits merged under the class; with --server the "
                          "images are sent in the request")
    ret.add_argument("--example-mode", default=None, choices=EXAMPLE_MODES,
                     help="mix: text and example queries (default with --examples); only: a class with examples is "
                          "searched by its images alone")
    ret.add_argument("--no-queries", action="store_true", help="leave out the queries column (smaller file)")
    ret.add_argument("--index-name", default=None, help="with --server: which served index (default: the first)")
    ret.add_argument("--api-key-file", type=Path, default=None, metavar="FILE", help="with --server: the key to send")
    ret.add_argument("--model", default=None, help="with --index: the model, if not the one index.json records")
    ret.add_argument("--json", type=Path, default=None, metavar="REPORT.json", help="also write the task report")
    ret.add_argument("--top-up", type=Path, default=None, metavar="SHARDS_DIR",
                     help="replace what a finished `react download` into SHARDS_DIR failed to fetch: count per class "
                          "the pairs it is short of its first requested size, retrieve the same task (the same "
                          "arguments) with a larger k, and write to --out the best never-requested pairs per short "
                          "class (a top-up subset; `react download TOPUP.parquet --out SHARDS_DIR` appends it). "
                          "Repeat until no class is short or the corpus has no more")
    ret.set_defaults(func=_retrieve)


def _serve(args: argparse.Namespace) -> int:
    from retrieval_service.serve import serve

    return serve(args)


def _retrieve(args: argparse.Namespace) -> int:
    from retrieval_service.retrieve_cmd import retrieve

    return retrieve(args)
