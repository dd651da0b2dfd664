"""``react download``: a retrieved subset to webdataset training shards, through img2dataset."""
from __future__ import annotations

import argparse
from pathlib import Path

from download.options import DISTRIBUTORS, RESIZE_MODES, SAFETY_MODES
from download.options import DownloadOptions as O


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download a subset's images into webdataset shards (img2dataset)",
        description="Fetch the images of a subset parquet (from `react retrieve`, or any parquet/CSV with url and "
        "caption) with img2dataset into SHARDS_DIR: {00000..N}.tar with .jpg, .txt (caption) and .json (the kept "
        "columns: subset_key, similarity, classes, ...), img2dataset's per-shard _stats.json and parquet, "
        "sizes.json (samples per shard) and download.json (manifest and summary). Resumable; shards are checked, "
        "never trusted. Prints SHARDS_DIR.",
    )
    p.add_argument("subset", type=Path, metavar="SUBSET", help="subset parquet (or .csv/.tsv) with url and caption")
    p.add_argument("--out", type=Path, required=True, metavar="SHARDS_DIR", help="output folder of shards")
    p.add_argument("--local-corpus", type=Path, metavar="DIR",
                   help="read the images from this corpus folder (corpus parquet with image_path, or shards of an "
                        "earlier download) instead of fetching the urls; same shards, no HTTP")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue a download of the same subset: keep complete shards, redo the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace the shards SHARDS_DIR holds")
    p.add_argument("--retry-failed", action="store_true",
                   help="re-attempt only the rows that failed, into new shards after the existing ones")
    _add_img2dataset_args(p.add_argument_group("img2dataset"))
    p.add_argument("--warn-below", type=float, default=O.warn_below,
                   help=f"warn for a class that keeps less than this fraction of its images (default: {O.warn_below})")
    _add_safety_args(p.add_argument_group("safety filter (off by default; docs/download.md)"))
    p.set_defaults(func=run_download)


def _add_safety_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--safety", choices=SAFETY_MODES, default=O.safety,
                   help="drop unsafe images before training: 'metadata' reads the subset's punsafe/NSFW columns "
                        "(LAION's) and never fetches a dropped row; 'classifier' scores the downloaded images "
                        "(NudeNet's ONNX detector, `pip install 'react-clip[safety]'`) and takes the dropped ones "
                        "out of the shards. Dropped rows are listed in SHARDS_DIR/safety_dropped.parquet "
                        f"(default: {O.safety})")
    g.add_argument("--max-punsafe", type=float, default=O.max_punsafe, metavar="P",
                   help="drop a row whose probability of being unsafe (punsafe, or the classifier's score) is "
                        f"above P; the NSFW label NSFW is always dropped (default: {O.max_punsafe:g})")
    g.add_argument("--safety-strict", action="store_true", default=O.safety_strict,
                   help="with --safety metadata: also drop rows labelled UNSURE and rows neither column scores")
    g.add_argument("--safety-scorer", default=O.safety_scorer, metavar="NAME",
                   help="with --safety classifier: the image scorer, a registered name or MODULE:FACTORY "
                        f"(default: {O.safety_scorer})")


def _add_img2dataset_args(g: argparse._ArgumentGroup) -> None:
    """img2dataset's settings; every default is DownloadOptions' (download.options), the one definition."""
    g.add_argument("--distributor", choices=DISTRIBUTORS, default=O.distributor,
                   help=f"img2dataset's distributor (pyspark/ray: see docs/download.md; default: {O.distributor})")
    g.add_argument("--spark-master", metavar="URL", default=O.spark_master,
                   help="with --distributor pyspark: the Spark master (spark://HOST:PORT, yarn, k8s://URL; "
                        "default: local[--processes] in this process; an active session is used as it is)")
    g.add_argument("--processes", type=int, default=O.processes, help="worker processes (default: one per core)")
    g.add_argument("--threads", type=int, default=O.threads,
                   help=f"download threads per process (default: {O.threads})")
    g.add_argument("--image-size", type=int, default=O.image_size,
                   help=f"resize target in pixels (default: {O.image_size})")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default=O.resize_mode,
                   help=f"img2dataset resize mode (default: {O.resize_mode}, the smaller side becomes --image-size)")
    g.add_argument("--upscale", action="store_true", default=not O.resize_only_if_bigger,
                   help="also enlarge smaller images (default: only shrink)")
    g.add_argument("--quality", type=int, default=O.encode_quality,
                   help=f"jpeg quality (default: {O.encode_quality})")
    g.add_argument("--shard-size", type=int, default=O.shard_size,
                   help=f"samples per shard (default: {O.shard_size})")
    g.add_argument("--timeout", type=float, default=O.timeout, help=f"seconds per request (default: {O.timeout:g})")
    g.add_argument("--retries", type=int, default=O.retries, help=f"further attempts per url (default: {O.retries})")
    g.add_argument("--keep", type=_names, default=O.keep, metavar="COL,...",
                   help="subset columns to carry into each sample's .json (default: key, similarity, classes)")
    g.add_argument("--user-agent-token", default=O.user_agent_token,
                   help=f"token in the User-Agent; X-Robots-Tag opt-outs addressed to it are honoured "
                        f"(default: {O.user_agent_token})")
    g.add_argument("--opt-out-directives", type=_names, default=O.disallowed_header_directives, metavar="D,...",
                   help="X-Robots-Tag directives that opt an image out (default: %(default)s)")


def run_download(args: argparse.Namespace) -> int:
    from download.options import DownloadOptions
    from download.pipeline import download_subset

    opts = DownloadOptions(
        image_size=args.image_size, resize_mode=args.resize_mode, resize_only_if_bigger=not args.upscale,
        encode_quality=args.quality, shard_size=args.shard_size, keep=args.keep, timeout=args.timeout,
        retries=args.retries, processes=args.processes, threads=args.threads, distributor=args.distributor,
        spark_master=args.spark_master,
        user_agent_token=args.user_agent_token, disallowed_header_directives=tuple(args.opt_out_directives),
        warn_below=args.warn_below, safety=args.safety, max_punsafe=args.max_punsafe,
        safety_strict=args.safety_strict, safety_scorer=args.safety_scorer)
    download_subset(args.subset, args.out, local_corpus=args.local_corpus, resume=args.resume,
                    retry_failed=args.retry_failed, overwrite=args.overwrite, options=opts)
    print(args.out)
    return 0
