"""The subset to download: read, validated, reduced to the columns the shards
carry, and digested (the digest tells a resumed download it is the same one)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from react.errors import ReactError
from react.schemas import SAFETY_COLUMNS, SHARD_KEPT_COLUMNS, SHARD_SUBSET_KEY, SUBSET_TOPUP_KEY, check_pairs, read_parquet

# columns img2dataset writes itself; a subset column of the same name cannot be kept
RESERVED = ("caption", "url", "width", "height", "original_width", "original_height", "status",
            "error_message", "exif", "md5", "sha256", "sha512", SHARD_SUBSET_KEY)


@dataclass
class Subset:
    path: Path
    table: pa.Table          # subset_key, the other kept columns, caption, url -- img2dataset's input
    kept: list[str]          # the table's columns that land in every sample's .json (subset_key first)
    digest: str              # of the table's rows
    image_paths: list | None  # the input's ``image_path`` column, if any (for --local-corpus)
    safety: pa.Table | None = None  # the input's SAFETY_COLUMNS (those present), row-aligned; None: neither
    queries: list | None = None  # the input's ``queries`` column, if any (per-query survival)
    topup: dict | None = None    # SUBSET_TOPUP_KEY metadata: this subset extends another download

    @property
    def rows(self) -> int:
        return self.table.num_rows


def read_table(path: Path) -> pa.Table:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        import pyarrow.csv as pa_csv

        if not path.is_file():
            raise ReactError(f"file not found: {path}")
        delimiter = "\t" if ".tsv" in name else ","
        try:
            return pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter=delimiter))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ReactError(f"not a readable CSV file: {path} ({str(exc).splitlines()[0]})") from None
    return read_parquet(path)


def read_subset(path: str | Path, keep: tuple[str, ...] | None = None) -> Subset:
    """The subset at ``path`` (parquet, or CSV/TSV) ready for img2dataset.

    ``keep``: the subset columns to carry into the shards' .json; None keeps
    those of SHARD_KEPT_COLUMNS the subset has. Raises ReactError naming the
    culprit for a missing ``url``/``caption`` column, an empty subset, a
    missing url or caption, or a duplicate key."""
    path = Path(path)
    raw = read_table(path)
    missing = [c for c in ("url", "caption") if c not in raw.column_names]
    if missing:
        raise ReactError(f"{path}: missing column(s) {', '.join(missing)} (a subset needs url and caption)")
    if raw.num_rows == 0:
        raise ReactError(f"empty subset: {path} holds no rows")

    if "key" in raw.column_names:
        keys = [None if k is None else str(k) for k in raw.column("key").to_pylist()]
    else:  # a plain url/caption list: the row number is the key
        keys = [str(i) for i in range(raw.num_rows)]
    captions = raw.column("caption").to_pylist()
    check_pairs(keys, captions, str(path))  # non-empty unique keys, non-empty captions
    urls = raw.column("url").to_pylist()
    for key, url in zip(keys, urls):
        if not isinstance(url, str) or not url.strip():
            raise ReactError(f"{path}: no url for key {key!r}")

    kept_columns = _kept(raw, keep, path)
    columns = {SHARD_SUBSET_KEY: pa.array(keys, pa.string())}
    for name in kept_columns:
        columns[name] = _classes(raw.column(name), path) if name == "classes" else raw.column(name).combine_chunks()
    columns["caption"] = pa.array([str(c) for c in captions], pa.string())
    columns["url"] = pa.array([u.strip() for u in urls], pa.string())
    table = pa.table(columns)
    image_paths = raw.column("image_path").to_pylist() if "image_path" in raw.column_names else None
    present = [c for c in SAFETY_COLUMNS if c in raw.column_names]
    safety = raw.select(present).combine_chunks() if present else None
    queries = raw.column("queries").to_pylist() if "queries" in raw.column_names else None
    return Subset(path, table, [SHARD_SUBSET_KEY, *kept_columns], table_digest(table), image_paths, safety, queries,
                  _topup(raw, path))


def _topup(raw: pa.Table, path: Path) -> dict | None:
    """The top-up record a ``react retrieve --top-up`` subset carries, if any."""
    import json

    text = (raw.schema.metadata or {}).get(SUBSET_TOPUP_KEY.encode())
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("of"), str):
        raise ReactError(f"{path}: its {SUBSET_TOPUP_KEY} metadata is not a top-up record")
    return record


def _kept(raw: pa.Table, keep: tuple[str, ...] | None, path: Path) -> list[str]:
    if keep is None:
        return [c for c in SHARD_KEPT_COLUMNS if c in raw.column_names and c != "key"]
    absent = [c for c in keep if c not in raw.column_names]
    if absent:
        raise ReactError(f"{path}: --keep names column(s) it lacks: {', '.join(absent)}")
    reserved = [c for c in keep if c in RESERVED]
    if reserved:
        raise ReactError(f"--keep: {', '.join(reserved)} cannot be kept under that name "
                         "(img2dataset writes its own; url and caption are always kept)")
    kept = []
    for c in keep:
        if c != "key" and c not in kept:
            kept.append(c)
    return kept


def _classes(column: pa.ChunkedArray, path: Path) -> pa.Array:
    """``classes`` as list<string>; a plain string column (CSV) holds one class per row."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        try:
            return column.combine_chunks().cast(pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ReactError(f"{path}: column classes must hold lists of class names") from None
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pa.array([[] if v is None else [v] for v in column.to_pylist()], pa.list_(pa.string()))
    raise ReactError(f"{path}: column classes must hold lists of class names, not {column.type}")


def table_digest(table: pa.Table) -> str:
    """sha256 of the rows (not of the file: a re-written file with the same rows
    is the same subset)."""
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return "sha256:" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
