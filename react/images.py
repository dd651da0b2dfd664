"""Decoding images the same way everywhere: RGB, transparency over white."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from react.errors import ReactError

BACKGROUND = (255, 255, 255)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any mode to RGB; transparent pixels become white, not black.

    Cut-out images (stamps, emoji) are mostly transparent; PIL's plain
    ``convert("RGB")`` would expose whatever colour hides under alpha 0.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def read_span(path: str | Path, offset: int, size: int) -> bytes:
    """Bytes of one member of an uncompressed tar, by seeking: loader workers
    then share nothing but (path, offset, size)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)
    except OSError as exc:
        raise ReactError(f"cannot read {path}: {exc.__class__.__name__}") from None


def load_rgb(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Open and fully decode an image, or raise ReactError naming it
    (``name`` says where in-memory bytes came from, e.g. ``shard.tar:member``)."""
    name = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        with fh:
            image = Image.open(fh)
            image.load()
    except FileNotFoundError:
        raise ReactError(f"image not found: {name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ReactError(f"corrupt or unreadable image: {name} ({exc.__class__.__name__})") from None
    return to_rgb(image)
