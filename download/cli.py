"""``react download``: a retrieved subset to webdataset training shards, through img2dataset."""
from __future__ import annotations

import argparse
from pathlib import Path

from download.options import DISTRIBUTORS, OPT_OUT_DIRECTIVES, RESIZE_MODES


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
    g = p.add_argument_group("img2dataset")
    g.add_argument("--distributor", choices=DISTRIBUTORS, default="multiprocessing",
                   help="img2dataset's distributor (pyspark/ray: see the README)")
    g.add_argument("--spark-master", metavar="URL",
                   help="with --distributor pyspark: the Spark master (spark://HOST:PORT, yarn, k8s://URL; "
                        "default: local[--processes] in this process; an active session is used as it is)")
    g.add_argument("--processes", type=int, help="worker processes (default: one per core)")
    g.add_argument("--threads", type=int, default=32, help="download threads per process (default: 32)")
    g.add_argument("--image-size", type=int, default=256, help="resize target in pixels (default: 256)")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default="keep_ratio",
                   help="img2dataset resize mode (default: keep_ratio, the smaller side becomes --image-size)")
    g.add_argument("--upscale", action="store_true", help="also enlarge smaller images (default: only shrink)")
    g.add_argument("--quality", type=int, default=95, help="jpeg quality (default: 95)")
    g.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default: 10000)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default: 10)")
    g.add_argument("--retries", type=int, default=2, help="further attempts per url (default: 2)")
    g.add_argument("--keep", type=_names, metavar="COL,...",
                   help="subset columns to carry into each sample's .json (default: key, similarity, classes)")
    g.add_argument("--user-agent-token", default="img2dataset",
                   help="token in the User-Agent; X-Robots-Tag opt-outs addressed to it are honoured "
                        "(default: img2dataset)")
    g.add_argument("--opt-out-directives", type=_names, default=OPT_OUT_DIRECTIVES, metavar="D,...",
                   help="X-Robots-Tag directives that opt an image out (default: %(default)s)")
    p.add_argument("--warn-below", type=float, default=0.5,
                   help="warn for a class that keeps less than this fraction of its images (default: 0.5)")
    p.set_defaults(func=run_download)


def run_download(args: argparse.Namespace) -> int:
    from download.options import DownloadOptions
    from download.pipeline import download_subset

    opts = DownloadOptions(
        image_size=args.image_size, resize_mode=args.resize_mode, resize_only_if_bigger=not args.upscale,
        encode_quality=args.quality, shard_size=args.shard_size, keep=args.keep, timeout=args.timeout,
        retries=args.retries, processes=args.processes, threads=args.threads, distributor=args.distributor,
        spark_master=args.spark_master,
        user_agent_token=args.user_agent_token, disallowed_header_directives=tuple(args.opt_out_directives),
        warn_below=args.warn_below)
    download_subset(args.subset, args.out, local_corpus=args.local_corpus, resume=args.resume,
                    retry_failed=args.retry_failed, overwrite=args.overwrite, options=opts)
    print(args.out)
    return 0
