"""Row metadata of a clip-retrieval / LAION index folder, read where it lies.

Row ``i`` of the metadata is faiss id ``i``. Two published forms:

- ``metadata/*.arrow`` (what clip-retrieval's ``parquet_to_arrow`` writes and
  its back-end serves with ``use_arrow``; LAION's prebuilt indices): Arrow IPC
  files, memory-mapped; a lookup touches only the pages of the rows asked for.
- ``metadata/*.parquet`` (what ``clip index`` copies from ``clip inference``)
  or one ``metadata.parquet``: only the footers are read at open, into a row
  offset table over every row group; a lookup decodes just the row groups and
  columns holding the rows asked for, kept in a bounded LRU cache. Nothing is
  converted or written, so a read-only folder serves as it is.

Files are taken in sorted name order, as clip-retrieval's back-end does, since
that is the order ``clip index`` / autofaiss numbered the vectors in.
A ``key`` column is synthesized from the row number when the folder has none.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from react.errors import ReactError

# Decoded parquet column chunks kept between lookups. A 1M-row row group's url
# column is ~60 MB decoded and took ~200 ms to decode (2-core machine), so the
# cache is what makes repeated lookups into the same groups cheap.
PARQUET_CACHE_BYTES = 512 << 20


def metadata_files(root: Path) -> tuple[str, list[Path]]:
    """``(form, files)`` of a clip folder's metadata; ReactError when there is none."""
    folder = root / "metadata"
    if folder.is_dir():
        arrow = sorted(p for p in folder.iterdir() if p.suffix == ".arrow" and p.is_file())
        if arrow:  # clip-retrieval's use_arrow form; preferred when both are present (no decoding)
            return "arrow", arrow
        parquet = sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and p.is_file())
        if parquet:
            return "parquet", parquet
    for form in ("arrow", "parquet"):
        single = root / f"metadata.{form}"
        if single.is_file():
            return form, [single]
    raise ReactError(f"{root}: no metadata (metadata/*.parquet, metadata/*.arrow, metadata.parquet or "
                     "metadata.arrow) next to the index")


def count_rows(form: str, files: list[Path]) -> int:
    """Rows of the metadata from footers / IPC headers only (cheap: the CLI checks before binding)."""
    total = 0
    for f in files:
        try:
            if form == "parquet":
                total += pq.read_metadata(f).num_rows
            else:
                reader = pa.ipc.open_file(pa.memory_map(str(f), "r"))
                total += sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ReactError(f"{f}: unreadable metadata ({str(exc).splitlines()[0]})") from None
    return total


class ArrowRows:
    """Memory-mapped Arrow IPC files, addressed by global row."""

    def __init__(self, files: list[Path]) -> None:
        batches: list[pa.RecordBatch] = []
        schema = None
        for f in files:
            try:
                reader = pa.ipc.open_file(pa.memory_map(str(f), "r"))
            except (pa.ArrowInvalid, OSError) as exc:
                raise ReactError(f"{f}: unreadable metadata ({str(exc).splitlines()[0]})") from None
            if schema is not None and not reader.schema.equals(schema):
                # A cast would copy whole columns into memory; parquet_to_arrow writes one schema.
                raise ReactError(f"{f}: columns differ from {files[0].name} ({reader.schema.names} vs {schema.names})")
            schema = reader.schema
            batches.extend(reader.get_batch(i) for i in range(reader.num_record_batches))
        self.schema = schema
        self._batches = batches
        self._offsets = np.cumsum([0] + [b.num_rows for b in batches])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def take(self, rows: np.ndarray, columns: list[str]) -> pa.Table:
        # Per batch, as index.metadata.RowMetadata does: a take over the chunked
        # whole would first concatenate every chunk.
        return _take_grouped(rows, self._offsets, lambda g, local: self._batches[g].select(columns).take(local),
                             self.schema, columns)


class ParquetRows:
    """Parquet parts read lazily by row group, addressed by global row."""

    def __init__(self, files: list[Path], cache_bytes: int = PARQUET_CACHE_BYTES) -> None:
        self.files = files
        try:
            self._meta = [pq.read_metadata(f) for f in files]
            schemas = [m.schema.to_arrow_schema() for m in self._meta]
            self.schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise ReactError(f"{files[0].parent}: unreadable or disagreeing metadata parts "
                             f"({str(exc).splitlines()[0]})") from None
        self._names = [set(s.names) for s in schemas]
        self._where = [(fi, rg) for fi, m in enumerate(self._meta) for rg in range(m.num_row_groups)]
        sizes = [self._meta[fi].row_group(rg).num_rows for fi, rg in self._where]
        self._offsets = np.cumsum([0] + sizes)
        self.largest_group = max(sizes, default=0)
        self._cache: OrderedDict[tuple[int, str], pa.Array] = OrderedDict()
        self._cached_bytes, self._cache_limit = 0, cache_bytes
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _column(self, group: int, name: str) -> pa.Array:
        key = (group, name)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        fi, rg = self._where[group]
        kind = self.schema.field(name).type
        if name in self._names[fi]:
            # The footer parsed at open is reused: no second read of it per lookup.
            part = pq.ParquetFile(self.files[fi], metadata=self._meta[fi], memory_map=True)
            array = part.read_row_group(rg, columns=[name], use_threads=False).column(0).combine_chunks()
            array = array.cast(kind) if array.type != kind else array
        else:  # a part without this column (parts may differ, as clip-retrieval allows)
            array = pa.nulls(int(self._offsets[group + 1] - self._offsets[group]), kind)
        with self._lock:  # two threads may decode the same group at once; the second insert is a no-op
            if key not in self._cache:
                self._cache[key] = array
                self._cached_bytes += array.nbytes
            while self._cached_bytes > self._cache_limit and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        return array

    def take(self, rows: np.ndarray, columns: list[str]) -> pa.Table:
        def piece(group: int, local: pa.Array) -> pa.RecordBatch:
            return pa.RecordBatch.from_arrays([self._column(group, c).take(local) for c in columns],
                                              schema=pa.schema([self.schema.field(c) for c in columns]))

        return _take_grouped(rows, self._offsets, piece, self.schema, columns)


def _take_grouped(rows: np.ndarray, offsets: np.ndarray, piece, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """Rows in request order, fetched group by group (``piece(group, local_rows)`` -> batch)."""
    out_schema = pa.schema([schema.field(c) for c in columns])
    if not rows.size:
        return out_schema.empty_table()
    group = np.searchsorted(offsets, rows, side="right") - 1
    order = np.argsort(group, kind="stable")
    pieces = [piece(int(g), pa.array(rows[order][group[order] == g] - offsets[g])) for g in np.unique(group)]
    grouped = pa.Table.from_batches(pieces, schema=out_schema).combine_chunks()  # only the rows asked for
    return grouped.take(pa.array(np.argsort(order, kind="stable")))


class ClipMetadata:
    """The ``take`` / ``column_names`` interface of index.metadata.RowMetadata over either form."""

    def __init__(self, root: Path) -> None:
        self.form, files = metadata_files(root)
        self.files = files
        self._rows = ArrowRows(files) if self.form == "arrow" else ParquetRows(files)
        # pandas' to_parquet may store a non-range index as a column; it is not metadata.
        self._own = [c for c in self._rows.schema.names if not c.startswith("__index_level_")]
        self.synthesized_key = "key" not in self._own
        self.column_names = self._own + (["key"] if self.synthesized_key else [])

    def __len__(self) -> int:
        return len(self._rows)

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """Metadata of ``rows`` (any shape of int; -1 is not allowed), in that order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ReactError(f"row ids must lie in [0, {n}), got {rows.min()}..{rows.max()}")
        columns = list(columns) if columns is not None else self.column_names
        unknown = [c for c in columns if c not in self.column_names]
        if unknown:
            raise ReactError(f"no metadata column {unknown[0]!r} (have {', '.join(self.column_names)})")
        own = [c for c in columns if c in self._own]
        table = self._rows.take(rows, own) if own else pa.table({})
        if self.synthesized_key and "key" in columns:
            # LAION's metadata may carry no key; the row number is the id clip-retrieval answers with.
            keys = pa.array([str(r) for r in rows.tolist()], pa.string())
            table = (table.append_column("key", keys) if own else pa.table({"key": keys}))
        return table.select(columns)
