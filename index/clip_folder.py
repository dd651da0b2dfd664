"""Serving a clip-retrieval / autofaiss index folder as it is published.

LAION's prebuilt knn indices, and what clip-retrieval's ``clip index`` writes,
are a folder with no ``index.json``::

    image.index            a faiss file, or a folder holding populated.index + *.ivfdata
    text.index             (either may be absent, not both)
    image.json, text.json  autofaiss' index infos (optional)
    metadata/              *.parquet parts or *.arrow files (or metadata.parquet / metadata.arrow)

``open_clip_folder`` opens it read-only -- index files memory-mapped
(``IO_FLAG_MMAP | IO_FLAG_READ_ONLY``; on-disk ``.ivfdata`` lists through
``IO_FLAG_ONDISK_SAME_DIR``), metadata read where it lies
(``index.clip_metadata``) -- and synthesizes the manifest the
:class:`index.searcher.Searcher` reads from ``index.json`` for its own folders:
dim and count from faiss, the factory described from the index's structure,
the search parameters faiss stored (autofaiss saves its tuned nprobe/efSearch
in the file), no model (``react serve --model NAME=MODEL`` names one). Nothing
is written into the folder or anywhere else.
"""
from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import faiss

from index.clip_metadata import ClipMetadata, count_rows, metadata_files
from index.defaults import MODALITIES
from react.errors import ReactError
from react.schemas import INDEX_FORMAT, INDEX_JSON

log = logging.getLogger("react.index")


def is_clip_folder(root: str | Path) -> bool:
    """A folder without index.json holding clip-retrieval's image.index and/or text.index."""
    root = Path(root)
    return not (root / INDEX_JSON).is_file() and any((root / f"{m}.index").exists() for m in MODALITIES)


def index_location(root: Path, modality: str) -> Path | None:
    """The file faiss reads for ``modality``: ``X.index``, or ``X.index/populated.index`` (LAION-5B's
    merged on-disk form, as clip-retrieval's back-end loads it)."""
    path = root / f"{modality}.index"
    if path.is_dir():
        inner = path / "populated.index"
        if not inner.is_file():
            raise ReactError(f"{path} is a folder without populated.index (clip-retrieval's on-disk form)")
        return inner
    return path if path.is_file() else None


def _has_ondisk_lists(path: Path) -> bool:
    return any(p.suffix == ".ivfdata" for p in path.parent.iterdir())


def peek_index(path: Path) -> tuple[int, int] | None:
    """``(dim, ntotal)`` from a faiss file's header without reading the index.

    Every float index type faiss writes (flat, IVF, HNSW, pre-transform, id map)
    starts with fourcc, int32 d, int64 ntotal; an implausible header gives None
    and the full read decides."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ReactError(f"{path}: unreadable ({exc.strerror})") from None
    if len(head) < 16:
        raise ReactError(f"{path}: {len(head)} bytes, not a faiss index")
    dim, ntotal = struct.unpack("<iq", head[4:16])
    return (dim, ntotal) if 0 < dim <= 1 << 16 and ntotal >= 0 else None


def open_index(path: Path) -> faiss.Index:
    """Read one index read-only and memory-mapped where faiss can map it."""
    from index.searcher import read_first

    if _has_ondisk_lists(path):
        # Lists in a separate .ivfdata (merge_ondisk): faiss stores its path relative to where the index
        # was built; SAME_DIR points it next to the index, and the lists are mapped by faiss itself.
        # (Combining SAME_DIR with IO_FLAG_MMAP crashed faiss 1.15.1 in testing: never tried.)
        attempts = (faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY, faiss.IO_FLAG_ONDISK_SAME_DIR)
    else:
        # MMAP maps IVF lists, MMAP_IFC flat codes (Flat, HNSW storage): a LAION-size index is not read in.
        attempts = (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY,
                    faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY, 0)
    return read_first(path, attempts)


def describe_factory(index: faiss.Index) -> str:
    """An index_factory-style string for the index (this faiss has no reverse_index_factory).

    It feeds ``Candidate``: the ``IVF``/``HNSW`` knob and whether codes are exact (re-ranking,
    near-duplicate collapse); parts it cannot name appear as their class name."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        chain = [type(faiss.downcast_VectorTransform(index.chain.at(i))).__name__
                 for i in range(index.chain.size())]
        names = {"OPQMatrix": "OPQ", "PCAMatrix": "PCA", "RandomRotationMatrix": "RR",
                 "NormalizationTransform": "L2norm"}
        prefix = ",".join(names.get(c, c) for c in chain)
        return f"{prefix},{describe_factory(index.index)}"
    if isinstance(index, faiss.IndexIVF):
        quantizer = faiss.downcast_index(index.quantizer)
        coarse = f"IVF{index.nlist}" + (f"_HNSW{quantizer.hnsw.nb_neighbors(1)}"
                                        if isinstance(quantizer, faiss.IndexHNSW) else "")
        return f"{coarse},{_codes(index)}"
    if isinstance(index, faiss.IndexHNSW):
        storage = faiss.downcast_index(index.storage)
        return f"HNSW{index.hnsw.nb_neighbors(1)}" + ("" if isinstance(storage, faiss.IndexFlat)
                                                      else f"_{_codes(storage)}")
    return _codes(index)


def _codes(index: faiss.Index) -> str:
    if isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat)):
        return "Flat"
    pq = getattr(index, "pq", None)
    if pq is not None:
        return f"PQ{pq.M}" + (f"x{pq.nbits}" if pq.nbits != 8 else "") + ("fs" if "FastScan" in type(index).__name__
                                                                             else "")
    sq = getattr(index, "sq", None)
    if sq is not None:
        return {faiss.ScalarQuantizer.QT_8bit: "SQ8", faiss.ScalarQuantizer.QT_4bit: "SQ4",
                faiss.ScalarQuantizer.QT_fp16: "SQfp16"}.get(sq.qtype, "SQ")
    return type(index).__name__


def stored_params(index: faiss.Index) -> dict:
    """The search parameters saved in the file (what clip-retrieval's back-end searches with)."""
    params: dict = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        params["nprobe"] = int(ivf.nprobe)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            params["quantizer_efSearch"] = int(quantizer.hnsw.efSearch)
        return params
    inner = faiss.downcast_index(index)
    inner = faiss.downcast_index(inner.index) if isinstance(inner, faiss.IndexPreTransform) else inner
    if isinstance(inner, faiss.IndexHNSW):
        params["efSearch"] = int(inner.hnsw.efSearch)
    return params


def _infos(root: Path, modality: str) -> dict:
    """autofaiss' ``X.json`` (index_key, sizes, speeds), kept for /v1/indices; optional."""
    try:
        infos = json.loads((root / f"{modality}.json").read_text())
        return infos if isinstance(infos, dict) else {}
    except (OSError, ValueError):
        return {}


def _mismatch(root: Path, modality: str, ntotal: int, rows: int, form: str) -> ReactError:
    return ReactError(f"{root}: {modality}.index holds {ntotal} vectors but the metadata ({form}) has {rows} rows; "
                      "row i of the metadata must be vector i")


def check_clip_folder(root: str | Path) -> dict:
    """Cheap validation before ``react serve`` binds: headers and footers only, no index read."""
    root = Path(root)
    form, files = metadata_files(root)
    rows = count_rows(form, files)
    found = {}
    for modality in MODALITIES:
        path = index_location(root, modality)
        if path is None:
            continue
        head = peek_index(path)
        if head is not None and head[1] != rows:
            raise _mismatch(root, modality, head[1], rows, form)
        found[modality] = head
    dims = {h[0] for h in found.values() if h is not None}
    if len(dims) > 1:
        raise ReactError(f"{root}: image.index and text.index differ in dimension ({sorted(dims)})")
    return {"rows": rows, "metadata": form, "indices": sorted(found)}


@dataclass
class ClipFolder:
    manifest: dict
    indices: dict[str, faiss.Index]
    rowmeta: ClipMetadata


def open_clip_folder(root: str | Path) -> ClipFolder:
    """Every part opened and checked against the others, or ReactError: never a partial folder."""
    root = Path(root)
    rowmeta = ClipMetadata(root)
    rows = len(rowmeta)
    indices, entries = {}, {}
    for modality in MODALITIES:
        path = index_location(root, modality)
        if path is None:
            continue
        index = open_index(path)
        if index.ntotal != rows:
            raise _mismatch(root, modality, index.ntotal, rows, rowmeta.form)
        metric = {faiss.METRIC_INNER_PRODUCT: "inner_product", faiss.METRIC_L2: "l2"}.get(index.metric_type)
        if metric is None:
            raise ReactError(f"{path}: metric {index.metric_type} is neither inner product nor L2")
        factory = describe_factory(index)
        params = stored_params(index)
        if params.get("nprobe") == 1 and faiss.extract_index_ivf(index).nlist > 1:
            # faiss' untouched default (autofaiss stores its tuned value): recall may be low; said, not changed.
            log.warning("%s: searched with nprobe=1 as stored in the file", path)
        infos = _infos(root, modality)
        entries[modality] = {"file": str(path.relative_to(root)), "count": int(index.ntotal), "factory": factory,
                             "metric": metric, "search_params": params, "autofaiss": infos or None}
        indices[modality] = index
    if not indices:
        raise ReactError(f"{root}: neither image.index nor text.index")
    dims = {index.d for index in indices.values()}
    if len(dims) > 1:
        raise ReactError(f"{root}: image.index and text.index differ in dimension ({sorted(dims)})")
    manifest = {"format": INDEX_FORMAT, "source": "clip-retrieval", "rows": rows, "dim": dims.pop(), "model": None,
                "metric": next(iter(entries.values()))["metric"], "indices": entries,
                "metadata": {"form": rowmeta.form, "files": len(rowmeta.files),
                             "key": "row number" if rowmeta.synthesized_key else "key column"}}
    return ClipFolder(manifest, indices, rowmeta)
