"""``react serve``: validate the options, bind, run uvicorn."""
from __future__ import annotations

import argparse
import logging
import socket

from react.errors import ReactError
from react.progress import console
from retrieval_service.config import ServiceConfig, parse_exclude_sets, parse_index_args, read_api_keys
from retrieval_service.spec import Limits


def build_config(args: argparse.Namespace) -> ServiceConfig:
    from index.searcher import check_index_folder

    indices = parse_index_args(args.index)
    for name, path in indices.items():
        check_index_folder(path)  # a bad folder (either form) fails here, with its name, before the port opens
    models = {}
    for value in args.model:
        name, sep, spec = value.partition("=")
        if not sep or name not in indices:
            raise ReactError(f"--model {value}: expected NAME=MODEL with NAME one of {', '.join(indices)}")
        models[name] = spec
    for opt in ("max_k", "max_classes", "max_templates", "job_workers", "batch_max"):
        if getattr(args, opt) < 1:
            raise ReactError(f"--{opt.replace('_', '-')} must be >= 1")
    if args.batch_wait_ms < 0 or args.batch_threads < 0:
        raise ReactError("--batch-wait-ms and --batch-threads must be >= 0")
    limits = Limits(max_classes=args.max_classes, max_templates=args.max_templates, max_k=args.max_k)
    return ServiceConfig(indices=indices, state_dir=args.state_dir, api_keys=read_api_keys(args.api_key_file),
                         models=models, exclude_sets=parse_exclude_sets(args.exclude_set), device=args.device, limits=limits, max_search_k=args.max_k,
                         max_image_bytes=int(args.max_image_mb * (1 << 20)), allow_image_url=args.allow_image_url,
                         image_url_timeout_s=args.image_url_timeout, job_workers=args.job_workers,
                         batching=args.batching, batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms,
                         batch_threads=args.batch_threads, gc_freeze=True)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP. With
    # proto 0 Nagle holds the response body (written after its headers) until the client's delayed ACK:
    # +40 ms on every request (measured: 50 ms -> 6 ms for one search at a time).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ReactError(f"cannot bind {host}:{port} ({exc.strerror})") from None
    sock.listen(2048)
    return sock


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from retrieval_service.http.app import create_app

    cfg = build_config(args)
    if not 0 <= args.port < 65536:
        raise ReactError(f"--port must lie in [0, 65535], got {args.port}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        console.print(f"[yellow]warning: listening on {args.host}, reachable from other machines"
                      + ("" if cfg.api_keys else " without an API key") + "[/]")
    console.print(f"serving {', '.join(f'{n}={p}' for n, p in cfg.indices.items())} on http://{host}:{port}",
                  highlight=False)
    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False, timeout_keep_alive=30))
    server.run(sockets=[sock])
    return 0
