"""The three input forms ``react embed`` reads, auto-detected by :func:`read_corpus`.

a. The project's corpus form: a directory holding ``retrieval.parquet``, or any
   parquet file, with ``key``, ``caption``, ``image_path`` (relative to the
   parquet's folder) and usually ``url``; every other column is carried into the
   embedding metadata.
b. A folder of webdataset ``.tar`` shards as img2dataset writes them: per sample
   an image (``.jpg``/``.jpeg``/``.png``/``.webp``), a ``.txt`` caption and an
   optional ``.json`` whose ``url`` is kept. The key is webdataset's
   ``__key__`` (member name up to the first dot of its file name). Read with the
   stdlib ``tarfile``; images of plain tars are read later by seeking, so
   loader workers share nothing but (path, offset, size).
c. An image folder with one caption per image in a sibling ``.txt`` of the same
   stem; the key is the path relative to the folder, without the extension.

Each reader returns a :class:`Corpus`: a metadata table (input order) and one
image source per row (a file path, or a tar member).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import pyarrow as pa

from react.errors import ReactError
from react.images import IMAGE_EXTENSIONS
from react.schemas import check_pairs, read_parquet
from react.shards import InlineImage, TarMember, is_shard, scan_tar

CORPUS_PARQUET = "retrieval.parquet"


ImageSource = Union[str, TarMember, InlineImage]


@dataclass
class Corpus:
    form: str                    # "parquet", "webdataset" or "imagefolder"
    path: Path
    metadata: pa.Table           # key, caption, url and/or image_path, extra columns
    images: list[ImageSource]    # one per metadata row, same order

    def __len__(self) -> int:
        return self.metadata.num_rows


def read_corpus(path: str | os.PathLike) -> Corpus:
    """Detect the input form of ``path`` and read its rows (no image is decoded)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ReactError(f"corpus not found: {path}")
    if path.is_file():
        if path.suffix == ".parquet":
            return read_parquet_corpus(path)
        raise ReactError(f"not a corpus: {path} (expected a parquet file or a directory)")
    if (path / CORPUS_PARQUET).is_file():
        return read_parquet_corpus(path / CORPUS_PARQUET)
    if any(is_shard(p) for p in path.iterdir()):
        return read_webdataset(path)
    if any(_is_image(p) for p in path.rglob("*")):
        return read_imagefolder(path)
    raise ReactError(f"no corpus found in {path}: no {CORPUS_PARQUET}, no .tar shards, no images")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


# --- a. parquet + image files -----------------------------------------------------

def read_parquet_corpus(parquet: Path) -> Corpus:
    table = read_parquet(parquet, required=("key", "caption"))
    if "image_path" not in table.column_names:
        raise ReactError(f"{parquet}: no image_path column; download the images first (react download)")
    keys = [None if k is None else str(k) for k in table.column("key").to_pylist()]
    check_pairs(keys, table.column("caption").to_pylist(), str(parquet))
    base = parquet.parent
    images: list[ImageSource] = []
    for key, rel in zip(keys, table.column("image_path").to_pylist()):
        if not rel:
            raise ReactError(f"{parquet}: no image_path for key {key!r}")
        images.append(str(base / rel))
    table = table.set_column(table.column_names.index("key"), "key", pa.array(keys, pa.string()))
    return Corpus("parquet", parquet, table, images)


# --- b. webdataset shards -----------------------------------------------------------

def read_webdataset(root: Path) -> Corpus:
    rows: list[dict] = []
    images: list[ImageSource] = []
    for shard in sorted(p for p in root.iterdir() if is_shard(p)):
        for sample in scan_tar(shard, want=("txt", "json")):
            if sample.extra_images:
                raise ReactError(f"{shard}: sample {sample.key!r} has more than one image")
            if sample.image is None:
                raise ReactError(f"{shard}: sample {sample.key!r} has no image")
            if "txt" not in sample.files:
                raise ReactError(f"{shard}: sample {sample.key!r} has no .txt caption")
            member_name = sample.image.name.rpartition(":")[2] if isinstance(sample.image, InlineImage) \
                else sample.image.name
            rows.append({"key": sample.key, "caption": sample.files["txt"].decode("utf-8", "replace").strip(),
                         "url": _json_url(sample.files.get("json"), shard, sample.key),
                         "image_path": f"{shard.name}:{member_name}", "shard": shard.name})
            images.append(sample.image)
    _check_sizes_json(root, rows)
    check_pairs([r["key"] for r in rows], [r["caption"] for r in rows], str(root))
    schema = pa.schema([(c, pa.string()) for c in ("key", "caption", "url", "image_path", "shard")])
    return Corpus("webdataset", root, pa.Table.from_pylist(rows, schema=schema), images)


def _check_sizes_json(root: Path, rows: list[dict]) -> None:
    """A shards folder from `react download` says how many pairs each shard holds
    (sizes.json); a shard that holds another number is refused, naming it."""
    import json
    from collections import Counter

    path = root / "sizes.json"
    if not path.is_file():
        return
    try:
        sizes = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ReactError(f"unreadable {path}: {exc.__class__.__name__}") from None
    held = Counter(r["shard"] for r in rows)
    for name in sorted(set(sizes) | set(held)):
        if sizes.get(name, 0) != held.get(name, 0):
            where = root / name
            if sizes.get(name, 0) and not where.is_file():
                raise ReactError(f"shard listed in {path} is missing: {where}")
            raise ReactError(f"shard {where} holds {held.get(name, 0)} image-text pairs, "
                             f"{path.name} says {sizes.get(name, 0)}")


def _json_url(raw: bytes | None, shard: Path, key: str) -> str | None:
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReactError(f"{shard}: invalid json for sample {key!r}") from None
    return meta.get("url") if isinstance(meta, dict) else None


# --- c. image folder with captions --------------------------------------------------

def read_imagefolder(root: Path) -> Corpus:
    files = sorted((p for p in root.rglob("*") if _is_image(p)), key=lambda p: p.relative_to(root).as_posix())
    rows: list[dict] = []
    for image in files:
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            raise ReactError(f"no caption for image {image} (expected {caption_file.name} beside it)")
        try:
            caption = caption_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ReactError(f"cannot read caption {caption_file}: {exc.__class__.__name__}") from None
        rel = image.relative_to(root).as_posix()
        rows.append({"key": rel.rsplit(".", 1)[0], "caption": caption, "image_path": rel})
    check_pairs([r["key"] for r in rows], [r["caption"] for r in rows], str(root))
    schema = pa.schema([(c, pa.string()) for c in ("key", "caption", "image_path")])
    return Corpus("imagefolder", root, pa.Table.from_pylist(rows, schema=schema), [str(p) for p in files])
