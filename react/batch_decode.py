"""Batched decode + augmentation on a device: raw image bytes in, a normalized batch out.

Loader workers only read bytes (``read_span``: the shard index knows every
offset) and draw each sample's crop/flip from its own seed, exactly as the
per-sample loader (``customize.data.PairImages``) does: timm's
``RandomResizedCropAndInterpolation.get_params`` under ``random.seed(seed)``
and torchvision's flip as ``torch.rand(1) < p`` under ``torch.manual_seed(seed)``.
Decoding then runs per batch -- nvjpeg (``torchvision.io.decode_jpeg(...,
device="cuda")``) on the GPU, libjpeg-turbo in the workers on the CPU -- and
crop, resize, flip and normalization run batched on the device.

The resize is PIL's own antialiased resampling written as two batched matrix
products: for every output pixel the weights are PIL's (bicubic a = -0.5 or
triangle, support scaled by the downscale factor, clipped to the crop,
normalized), applied horizontally then vertically with PIL's rounding to 8
bits in between. A flip reverses the rows of the horizontal matrix. So the
batch equals the per-sample loader's tensors up to PIL's fixed-point
arithmetic and the JPEG decoder's IDCT (measured in tests/test_gpu_batch.py).

Decoders: ``gpu`` (nvjpeg, CUDA only), ``cpu`` (libjpeg-turbo via torchvision
in the workers), ``pil`` (today's per-sample PIL loader), ``auto`` (``gpu``
on a CUDA device, else ``pil``: it is the faster one on CPU, see docs/customize.md, "The data path on a GPU").
Members that are not JPEG, or that the JPEG decoder refuses, go through PIL
(``react.images.load_rgb``: RGB, transparency over white); what PIL refuses
too is reported as unreadable (the caller counts and names it).
"""
from __future__ import annotations

import functools
import io
import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from react.config import DECODERS
from react.errors import ReactError
JPEG_MAGIC = b"\xff\xd8\xff"
KERNELS = {"bicubic": 2.0, "bilinear": 1.0}
CANVAS_BYTES = 1 << 29  # float32 canvas per chunk of a batch (512 MiB)


@dataclass(frozen=True)
class ResizeSpec:
    """What the per-sample transform does, in numbers. ``mode``: ``random-crop``
    (timm's random resized crop + flip) or ``center`` (resize the shortest side,
    center crop: open_clip's eval transform)."""

    size: tuple[int, int]                 # output (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    mode: str = "random-crop"
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5


def _pair(size: Any) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def train_spec(preprocess_cfg: dict, recipe: str, eval_transform: Any) -> ResizeSpec | None:
    """The spec of ``customize.data.train_transform(cfg, recipe, ...)``; None
    where batched augmentation does not reproduce it (``reference``: RandAugment)."""
    if recipe == "none":
        return eval_spec(eval_transform)
    interp = preprocess_cfg.get("interpolation") or "bicubic"
    if recipe != "light" or interp not in KERNELS:
        return None
    return ResizeSpec(size=_pair(preprocess_cfg.get("size", 224)), mean=tuple(preprocess_cfg["mean"]),
                      std=tuple(preprocess_cfg["std"]), interpolation=interp, mode="random-crop")


def eval_spec(transform: Any) -> ResizeSpec | None:
    """The spec of an open_clip eval Compose (Resize(int) + CenterCrop + ToTensor +
    Normalize, RGB conversions allowed); None for anything else."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    kinds = [type(t).__name__ for t in steps]
    core = [t for t in steps if isinstance(t, (T.Resize, T.CenterCrop, T.Normalize))]
    rest = [k for k, t in zip(kinds, steps) if t not in core]
    if [type(t) for t in core] != [T.Resize, T.CenterCrop, T.Normalize] or any(
            k not in ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "_convert_to_rgb", "function") for k in rest):
        return None
    resize, crop, norm = core
    interp = getattr(resize.interpolation, "value", str(resize.interpolation))
    size = resize.size[0] if isinstance(resize.size, (list, tuple)) and len(resize.size) == 1 else resize.size
    if not isinstance(size, int) or interp not in KERNELS or resize.max_size is not None:
        return None
    return ResizeSpec(size=_pair(crop.size), mean=tuple(float(m) for m in norm.mean),
                      std=tuple(float(s) for s in norm.std), interpolation=interp, mode="center",
                      scale=(float(size), float(size)))  # scale[0] = shortest side after resizing


# --- per-sample parameters (in the workers) ----------------------------------------

def draw_params(spec: ResizeSpec, seed: int | None, width: int, height: int) -> list[float]:
    """[y_start, y_scale, y_lo, y_hi, x_start, x_scale, x_lo, x_hi, flip]: output
    pixel ``o`` of an axis samples the source around ``start + (o + 0.5) * scale``
    from pixels ``lo..hi-1`` (PIL's resize of the crop box)."""
    out_h, out_w = spec.size
    if spec.mode == "center":
        short = int(spec.scale[0])
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_h, new_w = short, int(short * width / height)
        top, left = int(round((new_h - out_h) / 2.0)), int(round((new_w - out_w) / 2.0))
        sy, sx = height / new_h, width / new_w
        return [top * sy, sy, 0, height, left * sx, sx, 0, width, 0.0]
    from timm.data.transforms import RandomResizedCropAndInterpolation

    state = random.getstate()
    random.seed(seed)
    try:  # timm's own draw, on a stand-in with the image's size
        i, j, h, w = RandomResizedCropAndInterpolation.get_params(
            torch.empty(1, 1, 1).expand(1, height, width), spec.scale, spec.ratio)
    finally:
        random.setstate(state)
    flip = bool(torch.rand(1, generator=torch.Generator().manual_seed(seed)) < spec.hflip) if spec.hflip else False
    return [i, h / out_h, i, i + h, j, w / out_w, j, j + w, float(flip)]


# --- decoding -------------------------------------------------------------------------

def is_jpeg(data: bytes | memoryview) -> bool:
    return bytes(data[:3]) == JPEG_MAGIC


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the header only; a ReactError names ``name`` when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ReactError(f"corrupt or unreadable image: {name} ({exc.__class__.__name__})") from None


def pil_decode(data: bytes, name: str) -> torch.Tensor:
    """uint8 [3, H, W] through today's decoder (load_rgb); ReactError names ``name``."""
    from react.images import load_rgb

    return torch.from_numpy(np.array(load_rgb(data, name=name))).permute(2, 0, 1).contiguous()


@functools.lru_cache(maxsize=None)
def torchvision_jpeg() -> bool:
    """Whether torchvision's image extension loads (a CUDA build of torchvision
    beside a CPU-only torch does not): otherwise JPEGs decode through PIL."""
    from torchvision.io import decode_jpeg

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    tiny = buf.getvalue()
    try:
        decode_jpeg(torch.frombuffer(bytearray(tiny), dtype=torch.uint8))
        return True
    except RuntimeError:
        return False


def cpu_decode(data: bytes, name: str) -> torch.Tensor:
    """libjpeg-turbo (torchvision) for JPEG, PIL for everything else or on refusal."""
    if is_jpeg(data) and torchvision_jpeg():
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass
    return pil_decode(data, name)


def gpu_decode(datas: Sequence[bytes], names: Sequence[str], device: torch.device
               ) -> tuple[list[torch.Tensor | None], list[tuple[int, str]]]:
    """nvjpeg for the JPEG members in one batched call (one by one when the batch
    call fails), PIL on the CPU for the rest; (images on ``device``, [(i, reason)]
    of what no decoder could read)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(datas)
    jpeg = [i for i, d in enumerate(datas) if is_jpeg(d)]
    if jpeg:
        raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpeg]
        try:
            for i, img in zip(jpeg, decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)):
                out[i] = img
        except RuntimeError:
            for i, r in zip(jpeg, raw):
                try:
                    out[i] = decode_jpeg(r, mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    pass
    failed = []
    for i, img in enumerate(out):
        if img is None or img.shape[0] != 3:
            try:
                out[i] = pil_decode(datas[i], names[i]).to(device, non_blocking=True)
            except ReactError as exc:
                out[i] = None
                failed.append((i, str(exc)))
    return out, failed


# --- batched resize ---------------------------------------------------------------------

def _kernel(x: torch.Tensor, name: str) -> torch.Tensor:
    x = x.abs()
    if name == "bilinear":
        return (1 - x).clamp(min=0)
    a = -0.5  # PIL's bicubic
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_weights(start: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                     out_len: int, in_len: int, interpolation: str) -> torch.Tensor:
    """[B, out_len, in_len] float64: PIL's ``precompute_coeffs`` for every sample."""
    dev = start.device
    factor = scale.clamp(min=1.0)
    support = KERNELS[interpolation] * factor
    center = start[:, None] + (torch.arange(out_len, device=dev, dtype=torch.float64) + 0.5) * scale[:, None]
    first = torch.maximum(torch.floor(center - support[:, None] + 0.5), lo[:, None])
    last = torch.minimum(torch.floor(center + support[:, None] + 0.5), hi[:, None])
    pos = torch.arange(in_len, device=dev, dtype=torch.float64)
    w = _kernel((pos - center[..., None] + 0.5) / factor[:, None, None], interpolation)
    w = w * ((pos >= first[..., None]) & (pos < last[..., None]))
    total = w.sum(-1, keepdim=True)
    return w / torch.where(total == 0, torch.ones_like(total), total)


def _round8(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5).clamp_(0, 255)


def augment(images: Sequence[torch.Tensor], params: torch.Tensor, spec: ResizeSpec,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [3, h_i, w_i] images (one device) + [B, 9] params -> normalized [B, 3, H, W]."""
    device = images[0].device
    out_h, out_w = spec.size
    params = params.to(device=device, dtype=torch.float64)
    mean = torch.tensor(spec.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    result = torch.empty(len(images), 3, out_h, out_w, device=device, dtype=dtype)
    start = 0
    while start < len(images):  # chunks whose padded canvas stays under CANVAS_BYTES
        stop, hmax, wmax = start, 1, 1
        while stop < len(images):
            h, w = max(hmax, images[stop].shape[1]), max(wmax, images[stop].shape[2])
            if stop > start and (stop - start + 1) * 12 * h * w > CANVAS_BYTES:
                break
            hmax, wmax, stop = h, w, stop + 1
        canvas = torch.zeros(stop - start, 3, hmax, wmax, device=device, dtype=torch.float32)
        for k, img in enumerate(images[start:stop]):
            canvas[k, :, : img.shape[1], : img.shape[2]] = img
        p = params[start:stop]
        wy = resample_weights(p[:, 0], p[:, 1], p[:, 2], p[:, 3], out_h, hmax, spec.interpolation).float()
        wx = resample_weights(p[:, 4], p[:, 5], p[:, 6], p[:, 7], out_w, wmax, spec.interpolation).float()
        wx = torch.where(p[:, 8, None, None] > 0.5, wx.flip(1), wx)
        rows = _round8(canvas @ wx.transpose(1, 2)[:, None])      # horizontal pass (PIL's order)
        pix = _round8(wy[:, None] @ rows)                          # vertical pass
        result[start:stop] = ((pix - mean) / std).to(dtype)
        start = stop
    return result


def resolve_decoder(requested: str, device: torch.device, spec: ResizeSpec | None) -> tuple[str, str]:
    """(decoder, why) for ``--decoder``; ``gpu`` without CUDA is refused."""
    if requested not in DECODERS:
        raise ReactError(f"unknown --decoder {requested!r} (choose from {', '.join(DECODERS)})")
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if requested == "gpu" and not cuda:
        raise ReactError("--decoder gpu needs a CUDA device (use --decoder cpu or pil)")
    if requested in ("gpu", "cpu") and spec is None:
        raise ReactError(f"--decoder {requested}: this transform has no batched form (--augment reference "
                         f"or a non-standard preprocess); use --decoder pil")
    if requested != "auto":
        return requested, "forced"
    if cuda and spec is not None:
        return "gpu", "auto: CUDA device"
    return "pil", "auto: " + ("no CUDA device" if not cuda else "transform has no batched form")


def describe(decoder: str, why: str) -> str:
    what = {"gpu": "nvjpeg + batched augmentation on the GPU", "cpu": "libjpeg-turbo in the workers + batched "
            "augmentation", "pil": "PIL per sample in the workers (per-sample transform)"}[decoder]
    return f"decoder {decoder} ({what}; {why})"


__all__ = ["DECODERS", "ResizeSpec", "augment", "cpu_decode", "describe", "draw_params", "eval_spec",
           "gpu_decode", "image_size", "is_jpeg", "pil_decode", "resample_weights", "resolve_decoder",
           "train_spec"]


def to_device_batch(datas: Sequence[bytes | None], images: Sequence[torch.Tensor | None], params: torch.Tensor,
                    names: Sequence[str], spec: ResizeSpec, device: torch.device
                    ) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """Decode what the workers left as bytes (nvjpeg), then augment the whole batch
    on ``device``: (batch, positions kept, [(position, reason)] of undecodable ones)."""
    todo = [i for i, img in enumerate(images) if img is None]
    decoded, failed = (gpu_decode([datas[i] for i in todo], [names[i] for i in todo], device)
                       if todo else ([], []))
    ready: list[torch.Tensor | None] = [None if img is None else img.to(device, non_blocking=True) for img in images]
    for i, img in zip(todo, decoded):
        ready[i] = img
    failed = [(todo[i], reason) for i, reason in failed]
    keep = [i for i, img in enumerate(ready) if img is not None]
    if not keep:
        return None, keep, failed
    return augment([ready[i] for i in keep], params[keep], spec), keep, failed
