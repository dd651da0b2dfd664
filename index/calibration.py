"""What a similarity means on *this* index: the reference an absolute coverage rule needs.

A cosine of 0.3 is a strong match for one model and corpus and noise for
another (a small CLIP trained on clip art scores its own caption-image pairs
around 0.25; ViT-L/14 on LAION around 0.3; text-text scores of captions that
share a style sit near 0.5 even at random). So the reference is measured on
the index itself, per modality index (``image``: the t2i direction, ``text``:
t2t), from a sample of at most ``SAMPLE`` rows:

- ``covered``: each sampled row's *caption* embedding used as a query
  against the index, its own row left out; the mean of its ``TOP_N`` best
  similarities -- exactly the statistic of a class's coverage score
  (retrieval_service.coverage), measured on queries the corpus covers by
  construction (every caption describes a pair that is there).
  ``covered_top1`` is the best similarity alone.
- ``null``: the similarity of a caption to a random other row (random pairs).
- ``matched`` (image index only): a caption against its own image.

Each is stored as a few quantiles. The **cut** is the ``CUT_QUANTILE``
(2.5 %) quantile of ``covered``: a class whose 10 best pairs score below
what 97.5 % of the corpus's own captions reach is *not covered* (the data
behind the choice: docs/service.md, "How much is there?").

``index build`` stores it per modality in index.json (``indices.<m>.calibration``);
an index folder without it (an older build, a clip-retrieval folder) gets it
computed on first load and kept in the cache (``REACT_CACHE/calibration/``,
keyed by the folder's path and its files' sizes and times), never written into
the folder: a served folder stays exactly as it was.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from react.errors import ReactError
from react.schemas import INDEX_CALIBRATION, write_text

SAMPLE = 2000
TOP_N = 10
CUT_QUANTILE = 0.025
QUANTILES = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999)
VERSION = 1
SEED = 0

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]   # (queries, k) -> (scores, rows)
Vectors = Callable[[str, np.ndarray], np.ndarray | None]              # (modality, rows) -> unit vectors or None


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"{q:g}": round(float(v), 4) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES))}


def calibrate(modality: str, rows: np.ndarray, vectors: Vectors, search: Search, top_n: int = TOP_N) -> dict | None:
    """The calibration of one modality index, from ``rows`` (a sample of its global rows);
    None when the captions' text vectors cannot be had (no embedding folder, no Flat text index)."""
    captions = vectors("text", rows)
    if captions is None or len(rows) < 2:
        return None
    scores, found = search(captions, top_n + 1)
    own = found == rows[:, None]
    # Leave the query's own row out; when it was not among the hits, the (k+1)-th hit is dropped instead.
    keep = np.where(own.any(axis=1, keepdims=True), ~own, np.arange(found.shape[1])[None, :] < top_n)
    valid = keep & (found >= 0)
    best = np.where(valid, scores, np.nan)
    covered = np.nanmean(best[:, : top_n + 1], axis=1)
    top1 = np.nanmax(best, axis=1)
    ok = np.isfinite(covered)
    if not ok.any():
        return None
    covered, top1 = covered[ok], top1[ok]
    rng = np.random.default_rng(SEED + 1)
    targets = vectors(modality, rows)
    out = {"version": VERSION, "direction": "t2i" if modality == "image" else "t2t", "sample": int(len(rows)),
           "top_n": top_n, "cut_quantile": CUT_QUANTILE,
           "cut": round(float(np.quantile(covered, CUT_QUANTILE)), 4),
           "covered": _quantiles(covered), "covered_top1": _quantiles(top1)}
    if targets is not None:
        other = (np.arange(len(rows)) + rng.integers(1, len(rows), len(rows))) % len(rows)  # never itself
        out["null"] = _quantiles(np.einsum("ij,ij->i", captions, targets[other]))
        if modality == "image":
            out["matched"] = _quantiles(np.einsum("ij,ij->i", captions, targets))
    return out


def sample_rows(available: np.ndarray, n: int = SAMPLE, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=min(n, len(available)), replace=False)).astype(np.int64)


def calibrate_searcher(searcher, modality: str) -> dict | None:
    """Calibration of an opened :class:`index.Searcher`'s modality index (vectors from its embedding
    folder, else reconstructed from Flat-coded indices)."""
    mod = searcher.modalities[modality]
    available = np.asarray(mod.ids) if mod.ids is not None else np.arange(int(mod.index.ntotal))
    rows = sample_rows(available)
    return calibrate(modality, rows, lambda m, r: row_vectors(searcher, m, r),
                     lambda q, k: searcher.search(q, k, modality=modality))


def row_vectors(searcher, modality: str, rows: np.ndarray) -> np.ndarray | None:
    """Unit vectors of global ``rows`` of a modality: the embedding folder, else the index's own codes."""
    from index.query import reconstructor
    from index.vectors import EmbeddingFolder

    emb = searcher.embeddings
    if emb and Path(emb).is_dir():
        try:
            return EmbeddingFolder.open(emb).take(modality, rows)
        except ReactError:
            pass
    mod = searcher.modalities.get(modality)
    if mod is None or not mod.candidate.exact_codes:
        return None
    fids = rows if mod.ids is None else np.searchsorted(np.asarray(mod.ids), rows)  # ids ascend: rows in order
    vecs = reconstructor(mod.index)(fids).astype(np.float32)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-6)


_LOCK = threading.Lock()


def load_calibration(searcher, modality: str) -> dict | None:
    """The stored calibration (index.json, a ``calibration.json`` beside the index, the cache), computed
    and cached when missing. Cached on the searcher; None when it cannot be computed (see :func:`calibrate`)."""
    cache = searcher.__dict__.setdefault("_calibration", {})
    if modality in cache:
        return cache[modality]
    with _LOCK:
        if modality in cache:
            return cache[modality]
        found = searcher.modalities[modality].entry.get("calibration")
        cached = cache_path(searcher.root)
        for side in (Path(searcher.root) / INDEX_CALIBRATION, cached):
            if found is None and side.is_file():
                try:
                    found = json.loads(side.read_text()).get(modality)
                except (OSError, json.JSONDecodeError):
                    found = None
        if found is None or found.get("version") != VERSION:
            try:
                found = calibrate_searcher(searcher, modality)
            except ReactError:  # e.g. a re-ranking index whose embedding folder moved: no absolute rule
                found = None
            if found is not None:
                _save(cached, modality, found)
        cache[modality] = found
        return found


def cache_path(root: str | Path) -> Path:
    """Where a lazily computed calibration of the index folder ``root`` is kept: the project cache,
    keyed by the folder's path and the size and time of every file in it (a rebuilt index is new)."""
    import hashlib

    from react.config import cache_dir

    folder = Path(root).resolve()
    digest = hashlib.sha256(str(folder).encode())
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_dir() / "calibration" / f"{digest.hexdigest()[:24]}.json"


def _save(path: Path, modality: str, calibration: dict) -> None:
    """Add ``calibration`` to the cache file; an unwritable cache keeps it in memory only."""
    try:
        current = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        current = {}
    current[modality] = calibration
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(current, indent=2) + "\n")
    except OSError:
        pass
