"""Single queries: text, image or embedding in; top-k with metadata out.

    answer = search_one(idx, cfg, metrics, k=10, modality="image", text="a photo of a cat")

Shared by ``/v1/search`` and clip-retrieval's ``/knn-service``. Everything
here is blocking (torch, faiss, Arrow) and runs in the threadpool, never on
the event loop."""
from __future__ import annotations

import numpy as np
import torch

from retrieval_service.config import ServiceConfig
from retrieval_service.errors import ServiceError
from retrieval_service.images import open_image
from retrieval_service.metrics import Metrics
from retrieval_service.registry import LoadedIndex

META_COLUMNS = ("key", "url", "caption", "image_path")


def check_text(text: str, cfg: ServiceConfig, field: str = "text") -> str:
    if not text.strip():
        raise ServiceError(f"{field}: empty")
    if len(text) > cfg.limits.max_text_chars:
        raise ServiceError(f"{field}: {len(text)} characters, at most {cfg.limits.max_text_chars} allowed")
    return text


def check_k(k: int, cfg: ServiceConfig, field: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.max_search_k:
        raise ServiceError(f"{field} must be an integer in [1, {cfg.max_search_k}], got {k!r}")
    return k


def check_modality(idx: LoadedIndex, modality: str) -> str:
    if modality not in ("image", "text"):
        raise ServiceError(f"modality must be image or text, got {modality!r}")
    if modality not in idx.searcher.modalities:
        raise ServiceError(f"index {idx.name!r} has no {modality} index (it has {', '.join(idx.searcher.modalities)})")
    return modality


def embed_text(idx: LoadedIndex, text: str, metrics: Metrics) -> np.ndarray:
    with metrics.timed("encode"):
        return idx.encode_texts([text])


def embed_image(idx: LoadedIndex, raw: bytes, cfg: ServiceConfig, metrics: Metrics) -> np.ndarray:
    model = idx.require_model()
    with metrics.timed("decode"):
        img = open_image(raw, cfg.max_image_bytes, cfg.max_image_pixels)
        batch = model.preprocess(img).unsqueeze(0)
    with metrics.timed("encode"), torch.inference_mode():
        return model.encode_images(batch).numpy()


def embed_vector(idx: LoadedIndex, values: list[float]) -> np.ndarray:
    vec = np.asarray(values, dtype=np.float32)
    if vec.ndim != 1 or vec.size != idx.dim:
        raise ServiceError(f"embedding: {vec.size} values, index {idx.name!r} has dimension {idx.dim}")
    # The request models already ask for one component of magnitude >= 1e-6; float32 may round it just below.
    if not np.all(np.isfinite(vec)) or float(np.linalg.norm(vec)) < 5e-7:
        raise ServiceError("embedding: NaN, infinite or all-zero values")
    return vec[None, :]


def knn(idx: LoadedIndex, vec: np.ndarray, k: int, modality: str, query_modality: str, metrics: Metrics,
        deduplicate: bool = False, fetch: int | None = None) -> tuple[list[dict], str | None]:
    """Top-``k`` hits with metadata; with ``deduplicate`` near-duplicate images among the first
    ``fetch`` results are dropped first (clip-retrieval's option). Returns (hits, warning)."""
    with metrics.timed("search"):
        scores, rows = idx.search(vec, max(k, fetch or 0), modality, query_modality)
    return hits_of(idx, scores[0], rows[0], k, metrics, deduplicate)


def search_one(idx: LoadedIndex, cfg: ServiceConfig, metrics: Metrics, k: int, modality: str,
               text: str | None = None, raw: bytes | None = None, embedding: list[float] | None = None) -> dict:
    """One query -- a ``text``, an image's ``raw`` bytes or an ``embedding`` (the first given) -- searched
    on its own: ``/v1/search``'s answer (index, modality, query kind, k, results)."""
    check_k(k, cfg)
    check_modality(idx, modality)
    if text is not None:
        vec, kind = embed_text(idx, check_text(text, cfg), metrics), "text"
    elif raw is not None:
        vec, kind = embed_image(idx, raw, cfg, metrics), "image"
    else:
        vec, kind = embed_vector(idx, embedding), "embedding"
    hits, _ = knn(idx, vec, k, modality, "text" if kind == "text" else "image", metrics)
    return {"index": idx.name, "modality": modality, "query": kind, "k": k, "results": hits}


def hits_of(idx: LoadedIndex, scores: np.ndarray, rows: np.ndarray, k: int, metrics: Metrics,
            deduplicate: bool = False) -> tuple[list[dict], str | None]:
    """One query's search answer (``scores``, ``rows``: [n]) -> its top-``k`` hits with metadata."""
    warning = None
    valid = rows >= 0
    scores, rows = scores[valid], rows[valid]
    if deduplicate and len(rows) > 1:
        with metrics.timed("dedup"):
            keep = _unique_images(idx, rows)
        if keep is None:
            warning = idx.retriever.dups.unavailable
        else:
            scores, rows = scores[keep], rows[keep]
    scores, rows = scores[:k], rows[:k]
    with metrics.timed("metadata"):
        available = [c for c in META_COLUMNS if c in idx.searcher.rowmeta.column_names]
        table = idx.searcher.metadata(rows, columns=available).to_pydict()
    hits = []
    for i, (row, score) in enumerate(zip(rows.tolist(), scores.tolist())):
        hit = {"row": row, "similarity": round(float(score), 6)}
        for c in META_COLUMNS:
            hit[c] = table[c][i] if c in table else None
        hits.append(hit)
    return hits, warning


def _unique_images(idx: LoadedIndex, rows: np.ndarray) -> np.ndarray | None:
    """Positions to keep: the first (best) of every group of near-duplicate images."""
    from retrieval_service.merge import connected_components
    from retrieval_service.spec import DEFAULT_DEDUP_THRESHOLD

    fetched = idx.retriever.dups._vectors(rows)
    if fetched is None:
        return None
    vecs = fetched[0]  # a row without an image vector is zero here: similar to nothing, kept alone
    sims = vecs @ vecs.T
    a, b = np.nonzero(np.triu(sims >= DEFAULT_DEDUP_THRESHOLD, k=1))
    comp = connected_components(len(rows), a.astype(np.int64), b.astype(np.int64))
    return np.flatnonzero(comp == np.arange(len(rows)))  # a component's label is its smallest (best) member
