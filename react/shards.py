"""Reading webdataset tar shards (img2dataset's output, CLIP_benchmark's
datasets) without decoding them up front.

Samples group a shard's members by webdataset's key rule. Images of plain
tars are located by (path, offset, size) so DataLoader workers share nothing
but that; images of compressed tars cannot be seeked and are held in memory.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from PIL import Image

from react.errors import ReactError
from react.images import IMAGE_EXTENSIONS, load_rgb, read_span


@dataclass(frozen=True)
class TarMember:
    """An image inside an uncompressed tar, read by seeking."""

    tar: str
    name: str
    offset: int  # of the data, not the header
    size: int


@dataclass(frozen=True)
class InlineImage:
    """An image held in memory (a member of a compressed tar)."""

    name: str
    data: bytes


ShardImage = Union[TarMember, InlineImage]


@dataclass
class Sample:
    key: str
    image: ShardImage | None = None
    extra_images: int = 0  # further image members under the same key
    files: dict[str, bytes] = field(default_factory=dict)  # the wanted non-image members


def split_key(member_name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name."""
    directory, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def is_shard(path: Path) -> bool:
    return path.is_file() and (path.suffix == ".tar" or path.name.endswith((".tar.gz", ".tgz")))


def _is_compressed(path: Path) -> bool:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    return magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd"))


END_OF_ARCHIVE = 1024  # two zero blocks close every tar


def _check_complete(path: Path) -> None:
    """An uncompressed tar cut short -- even at a member boundary, which tarfile
    reads without complaint, losing the samples after the cut -- lacks the two
    zero blocks every tar writer ends with."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - END_OF_ARCHIVE))
        tail = fh.read()
    if size % 512 or size < END_OF_ARCHIVE or tail.strip(b"\0"):
        raise ReactError(f"cannot read shard {path}: truncated (no end-of-archive marker; "
                         f"{size:,} bytes, a copy or download cut short?)")


def scan_tar(path: Path, want: tuple[str, ...]) -> list[Sample]:
    """The samples of one shard in tar order; ``want`` names the non-image
    extensions whose bytes to keep (e.g. ``("txt", "json")`` or ``("cls",)``)."""
    samples: dict[str, Sample] = {}
    try:
        compressed = _is_compressed(path)
        if not compressed:
            _check_complete(path)
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = split_key(member.name)
                if "." + ext in IMAGE_EXTENSIONS:
                    sample = samples.setdefault(key, Sample(key))
                    if sample.image is not None:
                        sample.extra_images += 1
                    elif compressed:
                        sample.image = InlineImage(f"{path}:{member.name}", tf.extractfile(member).read())
                    else:
                        sample.image = TarMember(str(path), member.name, member.offset_data, member.size)
                elif ext in want:
                    samples.setdefault(key, Sample(key)).files[ext] = tf.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ReactError(f"cannot read shard {path}: {exc.__class__.__name__}") from None
    return list(samples.values())


def load_shard_image(image: ShardImage) -> Image.Image:
    """Decode a shard image; errors name the shard and the member."""
    if isinstance(image, InlineImage):
        return load_rgb(image.data, name=image.name)
    return load_rgb(read_span(image.tar, image.offset, image.size), name=f"{image.tar}:{image.name}")
