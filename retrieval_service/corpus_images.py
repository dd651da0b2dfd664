"""The corpus images of an index's rows, read from this machine.

    roots = ImageRoots()
    root = roots.get(idx)                          # where idx's image_path values live, or why not
    path = local_file(root.base, row_image_path(idx, row), row)

A row's ``image_path`` is what ``react embed`` stored, relative to the corpus
the embedding folder was made from (index.json ``embeddings`` -> embed.json
``input``/``input_form``): a parquet corpus, an image folder, or webdataset
shards (``shard.tar:member``). Callers name only an index (looked up) and a
row number (bounds-checked); a stored path that resolves outside the corpus
folder, or is not an image, is refused (403).
"""
from __future__ import annotations

import json
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from retrieval_service.errors import ServiceError, not_found

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".bmp": "image/bmp", ".gif": "image/gif"}
CORPUS_FORMS = ("parquet", "imagefolder", "webdataset")  # embed.json input forms whose image_path is a local file
MAX_TAR_MEMBER = 64 << 20  # a webdataset image is read into memory; anything bigger is not a thumbnail


@dataclass(frozen=True)
class ImageRoot:
    """Where the image_path values of one index's rows live, or why they cannot be served."""

    form: Optional[str]
    base: Optional[Path]      # resolved folder the paths are relative to (webdataset: the shard folder)
    reason: Optional[str] = None

    @property
    def local(self) -> bool:
        return self.base is not None


def _find(path: Path, anchors: list[Path]) -> Optional[Path]:
    """An absolute path as it is; a relative one (recorded from the cwd of `react embed`) tried
    against the current folder and the embedding folder's ancestors, as index models are."""
    if path.is_absolute():
        return path if path.exists() else None
    for base in anchors:
        if (base / path).exists():
            return base / path
    return None


def locate_images(searcher) -> ImageRoot:
    """Follow index.json -> embed.json -> the corpus input; never raises (a missing link is a reason)."""
    if "image_path" not in searcher.rowmeta.column_names:
        return ImageRoot(None, None, "the index's metadata has no image_path column")
    emb = searcher.manifest.get("embeddings")
    if not emb:
        return ImageRoot(None, None, "index.json records no embedding folder")
    try:
        embed = json.loads((Path(emb) / "embed.json").read_text())
    except (OSError, ValueError) as exc:
        return ImageRoot(None, None, f"cannot read {emb}/embed.json ({exc.__class__.__name__})")
    form, given = embed.get("input_form"), embed.get("input")
    if form not in CORPUS_FORMS or not given:
        return ImageRoot(form, None, f"the embeddings were made from {form or 'unknown'} input, not local images")
    found = _find(Path(given).expanduser(), [Path.cwd(), *Path(emb).resolve().parents])
    if found is None:
        return ImageRoot(form, None, f"the corpus {given} is not on this machine")
    base = found if found.is_dir() else found.parent  # parquet: paths are relative to the parquet's folder
    return ImageRoot(form, base.resolve())


class ImageRoots:
    """ImageRoot per loaded index object; a reload (new generation) is looked up afresh."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], ImageRoot] = {}
        self._lock = threading.Lock()

    def get(self, idx) -> ImageRoot:
        key = (idx.name, idx.generation)
        with self._lock:
            root = self._cache.get(key)
        if root is None:
            root = locate_images(idx.searcher)
            with self._lock:
                # Drop older generations of this index: they are no longer served.
                self._cache = {k: v for k, v in self._cache.items() if k[0] != idx.name} | {key: root}
        return root


def row_image_path(idx, row: int) -> str:
    if not 0 <= row < idx.searcher.rows:
        raise not_found(f"index {idx.name!r} has no row {row} (rows 0..{idx.searcher.rows - 1})")
    value = idx.searcher.metadata(np.asarray([row]), columns=["image_path"]).column(0)[0].as_py()
    if not value:
        raise not_found(f"row {row} of index {idx.name!r} has no image_path")
    return str(value)


def media_type(name: str) -> str:
    media = IMAGE_TYPES.get(Path(name).suffix.lower())
    if media is None:
        raise ServiceError(f"{Path(name).suffix or 'no extension'}: not an image type this service serves", 403)
    return media


def inside(base: Path, rel: str) -> Path:
    """``base / rel`` resolved (symlinks included), refused when it leaves ``base``."""
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise ServiceError("the row's image_path leaves the corpus folder; refused", 403)
    return path


def local_file(base: Path, ref: str, row: int) -> Path:
    media_type(ref)  # refuse non-images before touching the disk
    path = inside(base, ref)
    if not path.is_file():
        raise not_found(f"the image of row {row} is missing on disk")
    return path


def tar_member(base: Path, ref: str) -> bytes:
    """``shard.tar:member`` (what the webdataset reader records) -> the member's bytes."""
    shard, sep, member = ref.partition(":")
    if not sep or not member:
        raise not_found(f"image_path {ref!r} is not shard:member")
    path = inside(base, shard)
    if not path.is_file():
        raise not_found("the row's shard is missing")
    with tarfile.open(path) as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise not_found("the row's member is missing from its shard") from None
        if not info.isfile() or info.size > MAX_TAR_MEMBER:
            raise ServiceError("the row's member is not a servable image file", 403)
        return tar.extractfile(info).read()
