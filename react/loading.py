"""Decoding images in DataLoader workers without losing the one-line error.

A ReactError raised inside a worker comes back to the main process wrapped in
a multi-line traceback. Datasets therefore return a :class:`LoadFailure` as
data, :func:`collate` passes it through, and :func:`check_batch` raises it in
the main process as the plain one-line error it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch.utils.data import default_collate

from react.errors import ReactError


@dataclass
class LoadFailure:
    message: str


def guarded(load: Callable[[], Any]) -> Any:
    """``load()``, or a LoadFailure carrying its ReactError."""
    try:
        return load()
    except ReactError as exc:
        return LoadFailure(str(exc))


def _failure_in(item: Any) -> LoadFailure | None:
    if isinstance(item, LoadFailure):
        return item
    if isinstance(item, tuple) and item and isinstance(item[0], LoadFailure):
        return item[0]
    return None


def collate(batch: list[Any]) -> Any:
    """torch's default collate, unless a sample failed: then that failure."""
    for item in batch:
        if (failure := _failure_in(item)) is not None:
            return failure
    return default_collate(batch)


def check_batch(batch: Any) -> Any:
    if isinstance(batch, LoadFailure):
        raise ReactError(batch.message)
    return batch
