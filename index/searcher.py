"""``Searcher``: an index folder opened once, answering batched queries.

    searcher = Searcher("out/demo/index")
    searcher.check_model(loaded)                 # refuses another model's queries
    scores, rows = searcher.search(text_emb, k=50)            # image index (T2I)
    scores, rows = searcher.search(text_emb, k=50, modality="text")  # T2T
    table = searcher.metadata(rows[0])           # key, url, caption, ... of those rows

``k`` larger than the index is clamped to its size (documented behaviour,
not an error): answers are ``[nq, min(k, count)]``. Row ids are global rows
of the embedding folder the index was built from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from index.defaults import K
from index.factory import Candidate
from index.metadata import RowMetadata
from index.query import RangeHits, normalize, reconstructor, search_range
from index.vectors import EmbeddingFolder
from react.errors import ReactError
from react.schemas import INDEX_FORMAT, INDEX_JSON, index_ids_file, ivfdata_file


def read_manifest(index_dir: str | os.PathLike) -> dict:
    root = Path(index_dir)
    path = root / INDEX_JSON
    if not path.is_file():
        raise ReactError(f"not an index folder (no {INDEX_JSON}, and no image.index/text.index of a "
                         f"clip-retrieval folder): {root}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReactError(f"unreadable {path} ({exc.__class__.__name__})") from None
    if manifest.get("format") != INDEX_FORMAT or "indices" not in manifest:
        raise ReactError(f"{path}: unknown index format {manifest.get('format')!r}")
    return manifest


def read_faiss(path: Path, expected_bytes: int | None) -> faiss.Index:
    """Read an index, memory-mapping what faiss can map; truncation is named, not asserted."""
    if not path.is_file():
        raise ReactError(f"index file missing: {path}")
    if expected_bytes is not None and path.stat().st_size != expected_bytes:
        raise ReactError(f"{path}: {path.stat().st_size} bytes, index.json says {expected_bytes} (truncated or replaced)")
    # Inverted lists merged on disk (``<name>.ivfdata`` beside the index) map
    # themselves; faiss crashes if IO_FLAG_MMAP is added to those, and
    # ONDISK_SAME_DIR finds the data file wherever the folder was moved to.
    tries = ((faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_ONDISK_SAME_DIR,) if ivfdata_file(path).is_file()
             else (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY, 0))
    return read_first(path, tries)


def read_first(path: Path, attempts: tuple[int, ...]) -> faiss.Index:
    """The index read with the first of ``attempts`` (faiss IO flags) that works, list prefetch off;
    a file no attempt can read is one ReactError naming faiss' reason."""
    error: Exception | None = None
    from index.ondisk import stdout_to_stderr

    for flags in attempts:
        try:
            with stdout_to_stderr():  # faiss printf()s where it found the .ivfdata: not the command's answer
                index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            error = exc
            continue
        no_list_prefetch(index)
        return index
    raise ReactError(f"{path}: unreadable index ({str(error).strip().splitlines()[-1]})")


def no_list_prefetch(index: faiss.Index) -> None:
    """Stop faiss from starting threads on every search of a memory-mapped inverted file.

    Memory-mapped IVF lists are ``OnDiskInvertedLists``, whose search first
    "prefetches" the probed lists with ``prefetch_nthread`` (32) freshly created
    threads, on every call. With the lists in the page cache that is pure
    overhead: one query at 100k x 512 (IVF1024, nprobe 32) cost 2.7 ms of CPU
    with it and 0.54 ms without (2-core machine). Pages still come in on first
    touch, as for any memory map."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if isinstance(lists, faiss.OnDiskInvertedLists):
        lists.prefetch_nthread = 0


def check_index_folder(index_dir: str | os.PathLike) -> None:
    """Cheap validation of either folder form (``react serve`` runs it before binding its port)."""
    from index.clip_folder import check_clip_folder, is_clip_folder

    if is_clip_folder(index_dir):
        check_clip_folder(index_dir)
    else:
        read_manifest(index_dir)


class _Modality:
    def __init__(self, root: Path, name: str, entry: dict, rows: int, index: faiss.Index | None = None) -> None:
        self.name, self.entry = name, entry
        # ``index``: already opened (a clip-retrieval folder, whose files need other read flags).
        self.index = index if index is not None else read_faiss(root / entry["file"], entry.get("bytes"))
        if self.index.ntotal != entry["count"]:
            raise ReactError(f"{root / entry['file']}: {self.index.ntotal} vectors, index.json says {entry['count']}")
        ids_path = index_ids_file(root, name)
        self.ids = np.load(ids_path, mmap_mode="r") if ids_path.is_file() else None
        if self.ids is None and entry["count"] != rows - entry.get("skipped", 0):
            raise ReactError(f"{root}: {name} index skips rows but {ids_path.name} is missing")
        if self.ids is not None and (len(self.ids) != entry["count"] or (len(self.ids) and self.ids.max() >= rows)):
            raise ReactError(f"{ids_path}: does not match the index ({len(self.ids)} ids for {entry['count']} vectors)")
        shift = entry.get("query_shift")
        self.shift = np.asarray(shift, dtype=np.float32) if shift else None
        self.params = dict(entry.get("search_params", {}))
        self.candidate = Candidate(entry["factory"], entry.get("build_params", {}), entry.get("fixed_params", {}))
        self._stored = None
        self._embeddings: str | None = None

    def stored(self, embeddings: str | None):
        """Exact vectors for re-ranking: from the index itself, else from the embedding folder."""
        if self._stored is None:
            if self.candidate.exact_codes:
                self._stored = reconstructor(self.index)
            else:
                if not embeddings or not Path(embeddings).is_dir():
                    raise ReactError(f"the {self.name} index re-ranks from its embedding folder, "
                                     f"which is not at {embeddings}")
                folder = EmbeddingFolder.open(embeddings)
                ids = self.ids
                self._stored = lambda fids: folder.take(self.name, ids[fids] if ids is not None else fids)
        return self._stored


class Searcher:
    """Batched k-NN over an index folder plus row -> metadata lookup."""

    def __init__(self, index_dir: str | os.PathLike, embeddings: str | os.PathLike | None = None) -> None:
        from index.clip_folder import is_clip_folder, open_clip_folder

        self.root = Path(index_dir)
        # A clip-retrieval / LAION folder is served as it lies: its manifest is synthesized from the
        # files (index.clip_folder), everything below then works on it unchanged.
        clip = open_clip_folder(self.root) if is_clip_folder(self.root) else None
        self.manifest = clip.manifest if clip else read_manifest(self.root)
        self.rows = int(self.manifest["rows"])
        self.dim = int(self.manifest["dim"])
        self.embeddings = str(embeddings) if embeddings else self.manifest.get("embeddings")
        self.modalities = {name: _Modality(self.root, name, entry, self.rows, clip.indices[name] if clip else None)
                           for name, entry in self.manifest["indices"].items()}
        self.rowmeta = clip.rowmeta if clip else RowMetadata(self.root, self.rows)

    @property
    def model(self) -> str | None:
        return self.manifest.get("model")

    def check_model(self, model: Any) -> None:
        """Refuse queries embedded by another model (a ``LoadedModel`` or its identity string)."""
        ident = getattr(model, "identity", None) or getattr(model, "name", None) or str(model)
        mine = self.manifest.get("model_id") or self.manifest.get("model")
        if mine and ident != mine and ident != self.manifest.get("model"):
            raise ReactError(f"index {self.root} was built from model {self.manifest.get('model')} ({mine}); "
                             f"the query model is {getattr(model, 'name', ident)} ({ident})")
        dim = getattr(model, "embed_dim", None)
        if dim is not None and dim != self.dim:
            raise ReactError(f"index {self.root} has dimension {self.dim}; the query model embeds to {dim}")

    def search(self, queries: np.ndarray, k: int = K, modality: str | None = None,
               params: dict | None = None, query_modality: str = "text") -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)`` for a batch of query embeddings.

        ``modality`` picks the index (default: image if present); ``params``
        override the tuned search parameters; the modality-gap shift applies
        only to text queries against the image index."""
        scores, rows, _ = self.search_range(queries, k, modality, params, query_modality)
        return scores, rows

    def search_range(self, queries: np.ndarray, k: int = K, modality: str | None = None,
                     params: dict | None = None, query_modality: str = "text", above: float | None = None,
                     max_hits: int | None = None) -> tuple[np.ndarray, np.ndarray, RangeHits | None]:
        """``search``, plus per query the rows of every scanned pair scoring above ``above``
        (at most ``max_hits`` kept over the batch, every one counted) when the scan that
        answered could count them on the way (a batch against an inner-product IVF index:
        index.batched_ivf); None otherwise."""
        if k < 1:
            raise ReactError(f"k must be >= 1, got {k}")
        name = modality or ("image" if "image" in self.modalities else next(iter(self.modalities)))
        if name not in self.modalities:
            raise ReactError(f"index {self.root} has no {name} index (it has {', '.join(self.modalities)})")
        mod = self.modalities[name]
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ReactError(f"queries must be [n, {self.dim}], got shape {tuple(queries.shape)}")
        run = dict(mod.params) | (params or {})
        if query_modality != "text":
            run.pop("shift", None)
        needs_stored = int(run.get("rerank", 1)) > 1 or bool(run.get("shift"))
        stored = mod.stored(self.embeddings) if needs_stored else None
        l2 = mod.entry.get("metric") == "l2"
        scores, rows, ranges = search_range(mod.index, normalize(queries), k, run, ids=mod.ids, shift=mod.shift,
                                            stored=stored, radius=None if l2 else above, max_hits=max_hits)
        if l2:
            # autofaiss can build L2 indices (clip folders); on unit vectors cosine = 1 - d^2 / 2, so
            # scores mean the same as on an inner-product index and the order is unchanged.
            scores = 1.0 - scores / 2.0
        return scores, rows, ranges

    def calibration(self, modality: str) -> dict | None:
        """What similarities mean on this modality index (index.calibration): stored, or computed once."""
        from index.calibration import load_calibration

        if modality not in self.modalities:
            raise ReactError(f"index {self.root} has no {modality} index (it has {', '.join(self.modalities)})")
        return load_calibration(self, modality)

    def metadata(self, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return self.rowmeta.take(rows[rows >= 0], columns)
