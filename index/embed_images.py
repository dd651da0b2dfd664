"""The images of ``react embed``: read in DataLoader workers, in input order,
and preprocessed either per image with the model's own transform (``pil``) or
in batches on the device (``react.batch_decode``: ``gpu``, ``cpu``). An
unreadable image is an error naming it -- the three files of a part must stay
row-aligned, so no image may be dropped."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from index.defaults import EMBED_GPU_WORKERS
from index.readers import ImageSource
from react.errors import ReactError
from react.images import load_rgb, read_span
from react.loading import LoadFailure, check_batch, collate, guarded
from react.shards import InlineImage, load_shard_image


def load_source(source: ImageSource):
    if isinstance(source, str):
        return load_rgb(source)
    return load_shard_image(source)


class _Images(Dataset):
    def __init__(self, sources: Sequence[ImageSource], preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.sources = list(sources)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> torch.Tensor | LoadFailure:
        return guarded(lambda: self.preprocess(load_source(self.sources[index])))


def source_bytes(source: ImageSource) -> tuple[bytes, str]:
    """(the image's bytes, its name for errors), read without decoding."""
    if isinstance(source, str):
        try:
            return Path(source).read_bytes(), source
        except FileNotFoundError:
            raise ReactError(f"image not found: {source}") from None
        except OSError as exc:
            raise ReactError(f"cannot read {source}: {exc.__class__.__name__}") from None
    if isinstance(source, InlineImage):
        return source.data, source.name
    return read_span(source.tar, source.offset, source.size), f"{source.tar}:{source.name}"


class _RawImages(_Images):
    """For the batched decoders (react.batch_decode): bytes (``gpu``) or the
    decoded uint8 image (``cpu``), with the eval crop's parameters."""

    def __init__(self, sources: Sequence[ImageSource], spec: Any, decode: bool) -> None:
        super().__init__(sources, lambda image: image)
        self.spec, self.decode = spec, decode

    def __getitem__(self, index: int) -> tuple | LoadFailure:
        from react.batch_decode import cpu_decode, draw_params, image_size

        def load() -> tuple:
            data, name = source_bytes(self.sources[index])
            if self.decode:
                image = cpu_decode(data, name)
                height, width = image.shape[1:]
            else:
                image, (width, height) = None, image_size(data, name)
            return None if self.decode else data, image, name, draw_params(self.spec, None, width, height)

        return guarded(load)


def _collate_raw(batch: list) -> tuple | LoadFailure:
    for item in batch:
        if isinstance(item, LoadFailure):
            return item
    datas, images, names, params = zip(*batch)
    return list(datas), list(images), list(names), torch.tensor(params, dtype=torch.float64)


def image_batches(sources: Sequence[ImageSource], loaded: Any, batch_size: int, workers: int,
                   decoder: str, spec: Any):
    """Preprocessed image batches on the model's device, in input order; an
    unreadable image is an error naming it (rows must stay aligned)."""
    cuda = loaded.device.type == "cuda"
    if decoder == "pil":
        loader = DataLoader(_Images(sources, loaded.preprocess), batch_size=batch_size, shuffle=False,
                            num_workers=workers, collate_fn=collate, pin_memory=cuda, persistent_workers=False,
                            prefetch_factor=4 if workers else None)
        for batch in map(check_batch, loader):
            yield batch.to(loaded.device, non_blocking=True)
        return
    from react.batch_decode import to_device_batch

    loader = DataLoader(_RawImages(sources, spec, decode=decoder == "cpu"), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate_raw, persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    for datas, images, names, params in map(check_batch, loader):
        batch, _, failed = to_device_batch(datas, images, params, names, spec, loaded.device)
        if failed:
            raise ReactError(failed[0][1])
        yield batch


def resolve_workers(requested: int | None, device: torch.device) -> int:
    if requested is not None:
        if requested < 0:
            raise ReactError(f"--workers must be >= 0, got {requested}")
        return requested
    return min(EMBED_GPU_WORKERS, os.cpu_count() or 1) if device.type == "cuda" else 0
