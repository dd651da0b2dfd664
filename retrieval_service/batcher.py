"""Cross-request micro-batching of single queries (``/v1/search``, ``/knn-service``).

Concurrent requests that need the same work -- the same index object, index
modality, query kind and k for a search; the same model for a text encode --
hand their query to one worker thread, which runs a single batched
``Searcher.search`` (or ``encode_texts``) for everything queued and hands each
request its result back through a future.

Why (measured on the 2-core machine, docs/service.md):
without it every request calls torch and faiss on its own threadpool thread,
each call paying the Python-side setup (tokenizer, forward-pass dispatch,
search parameters, normalisation) under the GIL, and the calls' thread pools
oversubscribe the cores. Batched, the service spent 2.4 instead of 4.5 ms of
CPU per text query and 2.1-2.4 instead of 2.8-3.0 ms per embedding query.

When the worker waits: it takes the oldest queued key and waits up to
``max_wait_s`` for more items of it -- but only while requests that are
*already inside the service* are still on their way here (their bodies being
read, or their text being encoded). A lone client therefore never waits.
Requests announce themselves with :meth:`Batchers.expect` (the ASGI
middleware ``batched.Announce`` does, for the single-query endpoints); the
announcement rides a context variable into the handler and its threadpool.

Reload safety: the key holds the searcher a request started with, so a request
queued before a reload is searched on the old index, and the worker drops its
reference once that key's queue is empty.

Errors: if a batched call raises, every item is retried alone, so one bad
query fails only its own request.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np

log = logging.getLogger("react.serve")

BatchFn = Callable[[list[Any]], Sequence[Any]]     # payloads -> one result per payload, same order
SizeFn = Callable[[str, int], None]                # (batcher name, batch size): metrics

# The batchers a request has announced itself to and not reached yet (see Batchers.expect).
_OWED: ContextVar[set | None] = ContextVar("react_batch_owed", default=None)


@dataclass
class _Item:
    payload: Any
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """One worker thread batching the queued payloads of each key."""

    def __init__(self, name: str, max_batch: int = 64, max_wait_s: float = 0.001,
                 on_batch: SizeFn | None = None, init: Callable[[], None] | None = None) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.name, self.max_batch, self.max_wait_s, self.init = name, max_batch, max_wait_s, init
        self.on_batch = on_batch or (lambda name, size: None)
        self._cond = threading.Condition()
        self._queues: OrderedDict[Hashable, deque[_Item]] = OrderedDict()  # oldest waiting key first
        self._fns: dict[Hashable, BatchFn] = {}
        self._expected = 0       # announced requests that have not submitted here yet
        self._busy = False       # a batch is running
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"react-batch-{name}", daemon=True)
        self._thread.start()

    # --- request side ---------------------------------------------------------------------------
    def submit(self, key: Hashable, fn: BatchFn, payload: Any) -> Future:
        """Queue ``payload`` under ``key``; ``fn`` runs a batch of that key's payloads."""
        item = _Item(payload)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"batcher {self.name} is closed")
            owed = _OWED.get()
            if owed is not None and self in owed:
                owed.discard(self)
                self._expected -= 1
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()
                self._fns[key] = fn
            queue.append(item)
            self._cond.notify()
        return item.future

    def run(self, key: Hashable, fn: BatchFn, payload: Any) -> Any:
        """Submit and wait: the blocking form the threadpool handlers use."""
        return self.submit(key, fn, payload).result()

    def idle(self) -> bool:
        """Nothing queued, nothing running, and at most one request (the caller) announced."""
        return not self._queues and not self._busy and self._expected <= 1

    def _announce(self, delta: int) -> None:
        with self._cond:
            self._expected += delta
            self._cond.notify()

    # --- worker side ----------------------------------------------------------------------------
    def _take(self) -> tuple[BatchFn, list[_Item]] | None:
        with self._cond:
            while not self._queues:
                if self._closed:
                    return None
                self._cond.wait()
            key, queue = next(iter(self._queues.items()))
            deadline = queue[0].queued + self.max_wait_s
            # Wait only for requests already in the service (announced, not yet queued): a lone
            # client is never delayed, a burst of concurrent ones is gathered into one call.
            while len(queue) < self.max_batch and self._expected > 0 and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
            fn = self._fns[key]
            if queue:
                self._queues.move_to_end(key)  # other keys go first next time: no starvation
            else:
                del self._queues[key], self._fns[key]  # drop the reference (an old index can be freed)
            return fn, batch

    def _loop(self) -> None:
        if self.init is not None:
            try:
                self.init()
            except Exception:  # noqa: BLE001 -- a tuning step; batching works without it
                log.exception("batcher %s: worker setup failed", self.name)
        while (taken := self._take()) is not None:
            fn, batch = taken
            self.on_batch(self.name, len(batch))
            self._busy = True
            try:
                self._run(fn, batch)
            finally:
                self._busy = False
                # Unbind before waiting for the next batch: ``fn`` holds its key's searcher or model, and an
                # idle worker would otherwise keep the index replaced by a reload alive (issue 16, churn test).
                del taken, fn, batch

    @staticmethod
    def _run(fn: BatchFn, batch: list[_Item]) -> None:
        try:
            results = fn([it.payload for it in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)}")
        except BaseException as exc:  # noqa: BLE001 -- retried alone below; the worker must survive
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for it in batch:  # one bad query must not fail the others
                try:
                    it.future.set_result(fn([it.payload])[0])
                except BaseException as one:  # noqa: BLE001
                    it.future.set_exception(one)
            return
        for it, res in zip(batch, results):
            it.future.set_result(res)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)


class Batchers:
    """The service's two batchers: text encodes and index searches.

    ``threads``: how many threads faiss (search worker) and torch (encode worker) use inside one
    batched call; 0 keeps the libraries' defaults (here 2). 1 by default, measured on the 2-core
    machine (8 text clients, 100k index, medians of 3 alternating runs): 425 q/s and 2.4 ms of
    service CPU a request with 1, 379 q/s and 2.9 ms with the defaults, 270 q/s and 4.5 ms without
    batching. A batch holds a few queries; waking a second OpenMP thread for each small call costs
    more than it saves, and the event loop and the other worker keep the second core busy. Only
    single-threading faiss (torch left at 2) was far worse -- 44 q/s, cause not pinned down -- so
    both are set together. Retrieve jobs are not affected: they run in their own threads."""

    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.001, on_batch: SizeFn | None = None,
                 threads: int = 1) -> None:
        self.encode = MicroBatcher("encode", max_batch, max_wait_s, on_batch,
                                   (lambda: torch_threads(threads)) if threads else None)
        self.search = MicroBatcher("search", max_batch, max_wait_s, on_batch,
                                   (lambda: faiss_threads(threads)) if threads else None)

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Announce a single-query request as it enters the service (before its body is parsed), so
        the workers know to wait for it; it owes a search and, until :meth:`release_encode`, an encode."""
        owed = {self.search, self.encode}
        for b in owed:
            b._announce(+1)
        token = _OWED.set(owed)
        try:
            yield
        finally:
            _OWED.reset(token)
            self._release(owed, list(owed))  # failed, or answered without reaching these

    def release_encode(self) -> None:
        """The current request turned out not to be a text query: the encode worker need not wait for it."""
        owed = _OWED.get()
        if owed is not None:
            self._release(owed, [self.encode])

    @staticmethod
    def _release(owed: set, batchers: list[MicroBatcher]) -> None:
        for b in batchers:
            with b._cond:
                if b not in owed:
                    continue
                owed.discard(b)
            b._announce(-1)

    def close(self) -> None:
        self.encode.close()
        self.search.close()


def search_batch(searcher, k: int, modality: str, query_modality: str) -> BatchFn:
    """A batch function: stack [1, d] queries, one ``Searcher.search``, split the rows again."""
    def run(vecs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        scores, rows = searcher.search(np.concatenate(vecs), k, modality=modality, query_modality=query_modality)
        return [(scores[i : i + 1], rows[i : i + 1]) for i in range(len(vecs))]
    return run


def encode_batch(encode: Callable[[list[str]], np.ndarray]) -> BatchFn:
    def run(texts: list[str]) -> list[np.ndarray]:
        vecs = encode(texts)
        return [vecs[i : i + 1] for i in range(len(texts))]
    return run


def faiss_threads(n: int) -> None:
    """OpenMP threads for faiss calls made by *this* thread (OpenMP keeps the setting per thread)."""
    import faiss

    faiss.omp_set_num_threads(n)


_TORCH_THREADS = threading.Lock()


def torch_threads(n: int) -> None:
    """Intra-op threads for torch calls made by *this* thread only.

    ``torch.set_num_threads`` sets the calling thread's OpenMP count and also the default that
    threads starting later pick up; that default is put back at once (from a throwaway thread, so
    this thread's own count stays ``n``), leaving retrieve jobs and image encodes at full width."""
    import torch

    with _TORCH_THREADS:
        default = torch.get_num_threads()  # also fixes this thread's count before it is changed
        torch.set_num_threads(n)
        restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="react-torch-threads")
        restore.start()
        restore.join()
