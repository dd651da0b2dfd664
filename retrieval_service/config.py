"""What an operator sets when starting ``react serve``; one object the app reads.

``ServiceConfig``'s field defaults are the one definition of the service's
defaults: ``react serve``'s options read them (``config_default``). Light on
purpose, like ``spec``: the command line imports it."""
from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

from react.errors import ReactError
from retrieval_service.spec import Limits

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class ServiceConfig:
    indices: dict[str, Path]                  # name -> index folder (names are looked up, never joined to paths)
    state_dir: Path = Path("out/service")     # jobs and their results live here until deleted
    api_keys: frozenset[str] = frozenset()    # empty: no authentication
    models: dict[str, str] = field(default_factory=dict)  # index name -> model spec overriding index.json
    # name -> evaluation dataset whose images tasks may exclude (`exclude` in /v1/retrieve; retrieval_service.exclude)
    exclude_sets: dict[str, Path] = field(default_factory=dict)
    device: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_search_k: int = 1000
    max_body_bytes: int = 16 << 20            # any request body
    max_image_bytes: int = 8 << 20            # one decoded upload / base64 / fetched image
    max_image_pixels: int = 40_000_000
    allow_image_url: bool = False             # clip-retrieval's image_url: fetched only when enabled
    image_url_timeout_s: float = 5.0
    inline_max_queries: int = 2000            # larger tasks always become jobs
    max_active_jobs: int = 16                 # queued + running; more answer 429
    job_workers: int = 1                      # tasks run one at a time by default: each uses every core
    # Cross-request batching of single queries (retrieval_service/batcher.py): the worker waits at most
    # batch_wait_ms for announced requests to join a batch; off: each request searches on its own thread.
    batching: bool = True
    batch_max: int = 64
    batch_wait_ms: float = 1.0
    batch_threads: int = 1                    # faiss/torch threads inside one batched call (0: their defaults)
    gc_freeze: bool = False                   # react serve: exempt what startup loaded from garbage collection

    @property
    def default_index(self) -> str:
        return next(iter(self.indices))

    @property
    def task_limits(self) -> Limits:
        """``limits`` with an example image held to the query-image limit (an example is a query image)."""
        return replace(self.limits, max_example_bytes=min(self.limits.max_example_bytes, self.max_image_bytes))


def config_default(name: str):
    """The default of ServiceConfig field ``name`` (``limits``: a fresh ``Limits()``)."""
    found = {f.name: f for f in fields(ServiceConfig)}[name]
    return found.default_factory() if found.default is MISSING else found.default


def parse_exclude_sets(values: list[str]) -> dict[str, Path]:
    """``NAME=DATASET`` options -> ``{name: dataset}``; the dataset must exist."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not set(name) <= NAME_CHARS:
            raise ReactError(f"--exclude-set {value}: expected NAME=DATASET, NAME of letters, digits, '-', '_', '.'")
        if name in out:
            raise ReactError(f"--exclude-set {value}: the name {name!r} is used twice")
        if not Path(path).expanduser().exists():
            raise ReactError(f"--exclude-set {value}: dataset not found: {path}")
        out[name] = Path(path).expanduser()
    return out


def parse_index_args(values: list[str]) -> dict[str, Path]:
    """``[NAME=]DIR`` options -> ``{name: dir}``; the name defaults to the folder's name."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).resolve().name, value
        if not name or not set(name) <= NAME_CHARS:
            raise ReactError(f"--index {value}: the name may hold only letters, digits, '-', '_', '.'")
        if name in out:
            raise ReactError(f"--index {value}: the name {name!r} is used twice")
        out[name] = Path(path)
    if not out:
        raise ReactError("at least one --index is required")
    return out


def read_api_keys(path: str | os.PathLike | None) -> frozenset[str]:
    """One key a line; blank lines and ``#`` comments skipped. An empty file is an error, not 'no auth'."""
    if path is None:
        return frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReactError(f"cannot read API key file {path}: {exc.__class__.__name__}") from None
    keys = frozenset(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not keys:
        raise ReactError(f"API key file {path} holds no key")
    return keys
