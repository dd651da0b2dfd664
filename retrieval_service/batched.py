"""``/v1/search``'s query with cross-request batching.

The fast path skips the threadpool: the handler validates on the event loop
(microseconds: a few checks and one 512-float array), hands the text to the
encode batcher and the vector to the search batcher, and awaits their futures.
The search worker runs one batched ``Searcher.search`` and then each
request's metadata lookup (Arrow, possibly page faults on a large memory-
mapped file), so no blocking work runs on the event loop. Measured on the
2-core machine (docs/service.md): each thread hop is a GIL hand-off,
and with the threadpool hop gone a request costs one hand-off each way.

The HTTP layer's ``Announce`` middleware (``retrieval_service.http.middleware``)
tells the batchers about a single-query request when it enters the service,
before its body is read, so a worker about to run a batch waits (at most
``batch_wait_ms``) for requests that are already on their way.
"""
from __future__ import annotations

import asyncio

import anyio.to_thread
import numpy as np

from retrieval_service.batcher import Batchers, BatchFn, encode_batch
from retrieval_service.config import ServiceConfig
from retrieval_service.metrics import Metrics
from retrieval_service.queries import check_k, check_modality, check_text, embed_vector, hits_of
from retrieval_service.registry import LoadedIndex

def hits_batch(idx: LoadedIndex, k: int, modality: str, query_modality: str, metrics: Metrics) -> BatchFn:
    """A batch function: one search for all queued queries, then each one's hits with metadata.
    A query is a [1, d] array or, for embedding input, the request's list of floats: it is checked
    and converted here, off the event loop (a bad one fails the batch, which is then retried item
    by item, so only its own request gets the 400)."""
    def run(queries: list) -> list[list[dict]]:
        vecs = np.concatenate([q if isinstance(q, np.ndarray) else embed_vector(idx, q) for q in queries])
        with metrics.timed("search"):
            scores, rows = idx.searcher.search(vecs, k, modality=modality, query_modality=query_modality)
        return [hits_of(idx, scores[i], rows[i], k, metrics)[0] for i in range(len(queries))]
    return run


def direct(idx: LoadedIndex, embedding: list[float], k: int, modality: str, metrics: Metrics) -> dict:
    """One embedding query on its own (threadpool): what a lone request gets."""
    vec = embed_vector(idx, embedding)
    with metrics.timed("search"):
        scores, rows = idx.searcher.search(vec, k, modality=modality, query_modality="image")
    hits = hits_of(idx, scores[0], rows[0], k, metrics)[0]
    return {"index": idx.name, "modality": modality, "query": "embedding", "k": k, "results": hits}


async def search(idx: LoadedIndex, text: str | None, embedding: list[float] | None, k: int, modality: str,
                 cfg: ServiceConfig, metrics: Metrics, batchers: Batchers) -> dict:
    """``/v1/search`` for a text or an embedding; the same answer as the threadpool path.

    A lone embedding query (nothing queued or running, nobody else announced) is answered directly
    in the threadpool: with nobody to batch with, the hand-off to the worker only adds latency.
    Text always goes through the encode worker, whose torch runs single-threaded: a threadpool
    thread's torch call would start an OpenMP team of its own, which spins between calls unless
    OMP_WAIT_POLICY=PASSIVE was set before torch loaded (one client: 19 q/s that way, 214 batched)."""
    check_k(k, cfg)
    check_modality(idx, modality)
    if text is None and batchers.search.idle():
        batchers.release_encode()
        return await anyio.to_thread.run_sync(direct, idx, embedding, k, modality, metrics)  # the threadpool
    if text is not None:
        model = idx.require_model()
        fn = encode_batch(lambda batch: model.encode_texts(batch).numpy())
        with metrics.timed("encode"):
            vec = await asyncio.wrap_future(batchers.encode.submit(("encode", id(model)), fn,
                                                                   check_text(text, cfg)))
        kind = "text"
    else:
        batchers.release_encode()
        vec, kind = embedding, "embedding"
    query_modality = "text" if kind == "text" else "image"
    # The key holds the searcher the request started with: after a reload, queued queries still
    # search the old index. Only equal k share a batch (see LoadedIndex.search).
    key = ("hits", id(idx.searcher), modality, query_modality, k)
    hits = await asyncio.wrap_future(batchers.search.submit(key, hits_batch(idx, k, modality, query_modality,
                                                                            metrics), vec))
    return {"index": idx.name, "modality": modality, "query": kind, "k": k, "results": hits}
