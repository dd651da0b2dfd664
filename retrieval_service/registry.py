"""The indices a service holds, each with its model, swappable atomically.

A request takes a reference to one :class:`LoadedIndex` at its start and uses
only that object; a reload builds the new one completely (index files,
metadata, model) *before* replacing the dictionary entry, so requests in
flight finish on the old index and none fails. The old object is freed when
its last request drops it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from react.errors import ReactError
from retrieval_service.batcher import Batchers, encode_batch, search_batch
from retrieval_service.errors import ServiceError, not_found
from retrieval_service.metrics import Metrics
from retrieval_service.exclude import Exclusion
from retrieval_service.task import TaskRetriever, load_index_model

log = logging.getLogger("react.serve")


@dataclass
class LoadedIndex:
    name: str
    path: Path
    searcher: object
    model: object | None          # None: embedding queries only (the index's model could not be loaded)
    retriever: TaskRetriever
    generation: int
    loaded_at: float = field(default_factory=time.time)
    model_error: str | None = None
    batchers: Batchers | None = None  # cross-request batching of single queries (None: each runs alone)
    exclusions: dict[str, Exclusion] = field(default_factory=dict)  # exclusion set name -> its image embeddings
    exclusion_errors: dict[str, str] = field(default_factory=dict)  # set name -> why it could not be embedded

    @property
    def dim(self) -> int:
        return self.searcher.dim

    def require_model(self):
        if self.model is None:
            raise ServiceError(f"index {self.name!r} has no loadable model ({self.model_error}); "
                               "only embedding queries are possible", 409)
        return self.model

    def exclusion(self, names: list[str]) -> Exclusion | None:
        """The named exclusion sets, combined; None for none. Unknown or unusable names: ServiceError."""
        if not names:
            return None
        known = sorted(self.exclusions) + sorted(self.exclusion_errors)
        for n in names:
            if n in self.exclusion_errors:
                raise ServiceError(f"exclude: set {n!r} is unavailable on index {self.name!r}: "
                                   f"{self.exclusion_errors[n]}", 409)
            if n not in self.exclusions:
                raise ServiceError(f"exclude: unknown exclusion set {n!r} (this service has: "
                                   f"{', '.join(known) or 'none; start it with --exclude-set NAME=DATASET'})", 404)
        return Exclusion.combine([self.exclusions[n] for n in dict.fromkeys(names)])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        model = self.require_model()
        if self.batchers is not None and len(texts) == 1:
            fn = encode_batch(lambda batch: model.encode_texts(batch).numpy())
            return self.batchers.encode.run(("encode", id(model)), fn, texts[0])
        return model.encode_texts(texts).numpy()

    def search(self, vec: np.ndarray, k: int, modality: str, query_modality: str) -> tuple[np.ndarray, np.ndarray]:
        """``Searcher.search`` of one [1, d] query, batched with concurrent requests' when enabled.
        Only equal k share a batch: a larger k widens HNSW's ef and re-ranking's over-fetch, so a
        shared larger search could answer differently from the request's own."""
        if self.batchers is None or vec.shape[0] != 1:
            return self.searcher.search(vec, k, modality=modality, query_modality=query_modality)
        key = ("search", id(self.searcher), modality, query_modality, k)  # the batch fn holds the searcher
        return self.batchers.search.run(key, search_batch(self.searcher, k, modality, query_modality), vec)

    def info(self) -> dict:
        m = self.searcher.manifest
        mods = {name: {"count": e.get("count"), "factory": e.get("factory"), "search_params": e.get("search_params"),
                       "recall": e.get("recall"), "qps": e.get("qps")} for name, e in m["indices"].items()}
        return {"name": self.name, "rows": self.searcher.rows, "dim": self.dim, "model": m.get("model"),
                "model_id": m.get("model_id"), "model_loaded": self.model is not None, "model_error": self.model_error,
                "exclude_sets": {n: len(e.vectors) for n, e in self.exclusions.items()},
                "modalities": mods, "generation": self.generation,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}


class IndexRegistry:
    def __init__(self, paths: dict[str, Path], models: dict[str, str] | None = None, device: str | None = None,
                 metrics: Metrics | None = None, batchers: Batchers | None = None,
                 exclude_sets: dict[str, Path] | None = None) -> None:
        self.paths = dict(paths)
        self.exclude_sets = dict(exclude_sets or {})
        self.models = dict(models or {})
        self.device = device
        self.metrics = metrics or Metrics()
        self.batchers = batchers
        self._loaded: dict[str, LoadedIndex] = {}
        self._reload_locks = {name: threading.Lock() for name in paths}
        self._generation = 0
        self.ready = threading.Event()
        self.load_error: str | None = None

    def names(self) -> list[str]:
        return list(self.paths)

    def _load(self, name: str) -> LoadedIndex:
        from index.searcher import Searcher

        path = self.paths[name]
        searcher = Searcher(path)
        model, model_error = None, None
        try:
            model = load_index_model(searcher, self.models.get(name), device=self.device)
        except ReactError as exc:
            # The index still answers embedding queries; text and image queries say why they cannot.
            model_error = str(exc)
            log.warning("index %s: %s", name, exc)
        exclusions, exclusion_errors = self._exclusions(name, model, model_error)
        self._generation += 1
        retriever = TaskRetriever(searcher, model, timer=self.metrics.observe_stage)
        return LoadedIndex(name, path, searcher, model, retriever, self._generation, model_error=model_error,
                           batchers=self.batchers, exclusions=exclusions, exclusion_errors=exclusion_errors)

    def _exclusions(self, name: str, model, model_error: str | None) -> tuple[dict, dict]:
        """Every --exclude-set embedded with this index's model (cached on disk across restarts)."""
        from react.config import cache_dir
        from retrieval_service.exclude import embed_dataset

        done, failed = {}, {}
        for set_name, dataset in self.exclude_sets.items():
            if model is None:
                failed[set_name] = f"no model to embed it with ({model_error})"
                continue
            try:
                done[set_name] = embed_dataset(model, dataset, cache=cache_dir() / "exclude")
                log.info("index %s: exclusion set %s: %d images", name, set_name, len(done[set_name].vectors))
            except ReactError as exc:
                failed[set_name] = str(exc)
                log.warning("index %s: exclusion set %s: %s", name, set_name, exc)
        return done, failed

    def load_all(self) -> None:
        """Open every index (startup, in a background thread: /healthz answers meanwhile).

        Any exception is recorded in ``load_error`` before it propagates: a reader that
        does not translate its error (numpy on a truncated file) or a MemoryError would
        otherwise end the loader thread and leave /readyz saying "loading" forever."""
        for name in self.paths:
            try:
                self._loaded[name] = self._load(name)
            except Exception as exc:
                self.load_error = _one_line(name, exc)
                if isinstance(exc, ReactError):
                    log.error("loading indices failed: %s", exc)
                else:  # not a reported input error: keep the traceback for the operator
                    log.exception("loading index %s failed", name)
                raise
        self.ready.set()

    def get(self, name: str | None) -> LoadedIndex:
        """The current index named ``name`` (default: the first). Names are dictionary keys only."""
        if name is None:
            name = next(iter(self.paths))
        if not isinstance(name, str) or name not in self.paths:
            raise not_found(f"unknown index {name!r} (known: {', '.join(self.paths)})")
        loaded = self._loaded.get(name)
        if loaded is None:
            raise ServiceError(f"index {name!r} is still loading" if not self.load_error else self.load_error, 503)
        return loaded

    def reload(self, name: str) -> LoadedIndex:
        """Re-open index ``name`` from disk and swap it in; on failure the old one stays."""
        self.get(name)  # 404 / 503 first
        with self._reload_locks[name]:
            try:
                new = self._load(name)
            except Exception as exc:  # any failure keeps the old index; SIGHUP's thread must not die on it
                self.metrics.index_reloads.labels(name, "failed").inc()
                if not isinstance(exc, ReactError):
                    log.exception("reloading index %s failed", name)
                raise ServiceError(f"reload of {name!r} failed, still serving the previous index: "
                                   f"{_one_line(name, exc)}", 409) from None
            self._loaded[name] = new  # one reference assignment: atomic for every reader
            self.metrics.index_reloads.labels(name, "ok").inc()
            log.info("index %s reloaded (generation %d)", name, new.generation)
            _trim_later()
            return new

    def reload_all(self) -> dict[str, str]:
        out = {}
        for name in self.paths:
            try:
                self.reload(name)
                out[name] = "ok"
            except ReactError as exc:
                out[name] = str(exc)
        return out


def _trim_later(delay_s: float = 2.0) -> None:
    """Hand the freed heap of a replaced index back to the OS once its last requests are done.

    An index and its model are hundreds of native allocations freed by many threads; glibc keeps
    most of those pages in its arenas, so without a trim RSS climbed with every reload although
    nothing stayed referenced (benchmarks/service_churn.py: 16 clients, a reload every 3 s,
    50k x 256 index: +120 MB in 3 minutes). ``malloc_trim`` runs without the GIL; elsewhere than
    glibc it does nothing."""
    def trim() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    timer = threading.Timer(delay_s, trim)
    timer.daemon = True
    timer.start()


def _one_line(name: str, exc: BaseException) -> str:
    """A load failure as one line: a ReactError's own message (it names its file), else
    the index, the exception type and the first line of its message."""
    if isinstance(exc, ReactError):
        return str(exc)
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"index {name!r}: {exc.__class__.__name__}" + (f": {text}" if text else "")
