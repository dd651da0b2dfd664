"""Query images from untrusted bytes: size-limited, bomb-checked, decoded once.

Every failure is a 4xx: not an image (400), too many bytes or pixels (413),
URL fetching disabled (403) or failing (400/504)."""
from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.request

from PIL import Image, UnidentifiedImageError

from retrieval_service.errors import ServiceError


def decode_base64(data: str, max_bytes: int) -> bytes:
    if len(data) > (max_bytes * 4) // 3 + 8:
        raise ServiceError(f"image: more than {max_bytes} bytes", 413)
    if data.startswith("data:") and "," in data:  # data URLs from browsers
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError("image: not valid base64") from None


def open_image(raw: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """An RGB PIL image; the pixel count is checked from the header, before decoding."""
    if len(raw) > max_bytes:
        raise ServiceError(f"image: {len(raw)} bytes, at most {max_bytes} allowed", 413)
    if not raw:
        raise ServiceError("image: empty")
    try:
        img = Image.open(io.BytesIO(raw))
        w, h = img.size
        if w * h > max_pixels:
            raise ServiceError(f"image: {w}x{h} pixels, at most {max_pixels} allowed", 413)
        img.load()
        return img.convert("RGB")
    except ServiceError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ServiceError(f"image: not a readable image ({exc.__class__.__name__})") from None


def fetch_url(url: str, enabled: bool, max_bytes: int, timeout_s: float) -> bytes:
    """Download ``url`` (http/https only) up to ``max_bytes`` within ``timeout_s``."""
    if not enabled:
        raise ServiceError("image_url: fetching images by URL is disabled on this service (--allow-image-url)", 403)
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise ServiceError("image_url: only http:// and https:// URLs are fetched")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "react-clip"}),
                                    timeout=timeout_s) as resp:
            data = resp.read(max_bytes + 1)
    except TimeoutError:
        raise ServiceError(f"image_url: no answer within {timeout_s:g} s", 504) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServiceError(f"image_url: fetch failed ({exc.__class__.__name__}: {exc})") from None
    if len(data) > max_bytes:
        raise ServiceError(f"image_url: more than {max_bytes} bytes", 413)
    return data
