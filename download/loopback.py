"""A corpus served on loopback as the web its urls point into.

The embedded corpus' urls name a host that never resolves
(``corpus.react.invalid``). ``serve_corpus`` answers for them from
127.0.0.1: an HTTP server that takes proxy-form requests (``GET
http://corpus.react.invalid/images/x.jpg``) as well as plain ones, serves the
image file that the corpus parquet maps the url to, and 404s everything else.
Inside the block ``http_proxy`` points at it, so img2dataset's workers fetch
the subset's own urls over real HTTP -- the path a user takes with LAION --
and nothing leaves the machine.
"""
from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow.parquet as pq

from react.errors import ReactError

PROXY_VARS = ("http_proxy", "HTTP_PROXY")
SHARD_SIZE = 100  # at the embedded task's ~600 rows: several shards per DataLoader worker for the trainer
NO_PROXY_VARS = ("no_proxy", "NO_PROXY")


def rotten(url: str, fraction: float) -> bool:
    """Whether ``url`` is among the deterministic ``fraction`` of urls a rotting web 404s
    (by a hash of the url: the same urls on every run, independent of order)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big") < fraction * 2**64


class CorpusWeb:
    """``fail_fraction`` / ``fail_urls``: link rot on request -- those urls answer 404
    (``rotten``); by default every url the corpus maps is served."""

    def __init__(self, corpus: Path, parts: tuple[str, ...] = ("retrieval",), fail_fraction: float = 0.0,
                 fail_urls: Iterable[str] = ()) -> None:
        if not 0.0 <= fail_fraction <= 1.0:
            raise ReactError(f"fail_fraction must lie in [0, 1], got {fail_fraction}")
        self.files: dict[str, Path] = {}
        for part in parts:
            path = Path(corpus) / f"{part}.parquet"
            if not path.is_file():
                raise ReactError(f"no {path.name} in {corpus}")
            t = pq.read_table(path, columns=["url", "image_path"])
            for url, rel in zip(t.column("url").to_pylist(), t.column("image_path").to_pylist()):
                if url and rel:
                    self.files[url] = Path(corpus) / rel
        fail = set(fail_urls)
        self.rotten = {u for u in self.files if u in fail or (fail_fraction and rotten(u, fail_fraction))}
        for url in self.rotten:
            del self.files[url]
        self.served = 0
        self.not_found = 0
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = self.path if "://" in self.path else f"http://{self.headers.get('Host', '')}{self.path}"
                path = web.files.get(url)
                try:
                    body = path.read_bytes() if path else None
                except OSError:
                    body = None
                if body is None:
                    web.not_found += 1
                    self.send_error(404)
                    return
                web.served += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a client that hung up

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="corpus-web")

    def __enter__(self) -> "CorpusWeb":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def serve_corpus(corpus: Path, parts: tuple[str, ...] = ("retrieval",), fail_fraction: float = 0.0,
                 fail_urls: Iterable[str] = ()) -> Iterator[CorpusWeb]:
    """Serve ``corpus``' images on loopback and route http:// requests of this
    process and its children there for the duration of the block (``fail_*``: see CorpusWeb)."""
    with CorpusWeb(corpus, parts, fail_fraction, fail_urls) as web:
        saved = {k: os.environ.get(k) for k in (*PROXY_VARS, *NO_PROXY_VARS)}
        os.environ.update({k: web.url for k in PROXY_VARS})
        os.environ.update({k: "" for k in NO_PROXY_VARS})
        try:
            yield web
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def download_served(corpus: Path, subset: Path, shards: Path, run: Callable[[list[str]], None], *options: str,
                    fail_fraction: float = 0.0) -> tuple[dict, int]:
    """``react download`` of ``subset`` into ``shards`` (``run`` executes the argv: the demo's timed
    step, a benchmark's checked call) with ``corpus``' images as the web; returns the download
    manifest's summary and how many images the loopback web served."""
    from react.schemas import DOWNLOAD_MANIFEST

    with serve_corpus(corpus, fail_fraction=fail_fraction) as web:
        run(["download", str(subset), "--out", str(shards), "--shard-size", str(SHARD_SIZE), *options])
    return json.loads((shards / DOWNLOAD_MANIFEST).read_text())["summary"], web.served
