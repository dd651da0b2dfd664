"""Decontamination: retrieved pairs whose image is an evaluation image, or a near-copy of one, are dropped.

Web corpora hold benchmark images, and resized, re-encoded, cropped, mirrored
or recoloured copies of them; training on those and then scoring on the
benchmark measures memory, not transfer. An exclusion set is the image
embeddings of every image of one or more evaluation datasets (any form
``react.datasets`` reads, every split it has), made with the index's own
model, each image also mirrored (mirroring is the commonest copy edit and
CLIP embeddings are not mirror-invariant: mirrored copies scored 0.64-0.77
under the embedded base); a retrieved row is dropped when its image embedding
lies within ``threshold`` cosine of any of them. The threshold is calibrated on planted
copies (``benchmarks/decontam_calibrate.py``, docs/service.md).

Embeddings are cached under ``react.config.cache_dir()/exclude``, keyed by the
model identity and the dataset's files (paths, sizes, mtimes), so a service
restart or a second task does not re-encode the dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from react.errors import ReactError

BATCH = 64  # images per forward pass
VIEWS = 2  # per image: see views()
SIMILARITIES = 1 << 25  # entries of one block x exclusion-set similarity matrix (128 MiB of float32)


@dataclass
class Exclusion:
    """The images a task must not retrieve: one unit embedding per evaluation image."""

    names: list[str]
    vectors: np.ndarray  # float32 [n, d], unit rows
    sizes: dict[str, int] = field(default_factory=dict)  # images per named dataset

    @classmethod
    def combine(cls, parts: list["Exclusion"]) -> "Exclusion":
        dims = {p.vectors.shape[1] for p in parts}
        if len(dims) > 1:
            raise ReactError(f"exclusion sets have different dimensions {sorted(dims)}")
        return cls([n for p in parts for n in p.names], np.concatenate([p.vectors for p in parts]),
                   {k: v for p in parts for k, v in p.sizes.items()})

    def too_close(self, vecs: np.ndarray, has: np.ndarray, threshold: float) -> np.ndarray:
        """Mask of ``vecs`` rows (those with ``has``) within ``threshold`` cosine of an excluded image."""
        if vecs.shape[1] != self.vectors.shape[1]:
            raise ReactError(f"exclusion set {', '.join(self.names)} has dimension {self.vectors.shape[1]}, "
                             f"the index {vecs.shape[1]}: embed it with the index's model")
        out = np.zeros(len(vecs), bool)
        block = max(1, SIMILARITIES // max(len(self.vectors), 1))  # ImageNet's 50k x 2 views: 335 rows a block
        for lo in range(0, len(vecs), block):
            best = (vecs[lo : lo + block] @ self.vectors.T).max(axis=1, initial=-1.0)
            out[lo : lo + block] = best >= threshold
        return out & has


def _fingerprint(path: Path, model_identity: str) -> str:
    """Model identity + every file under the dataset (relative path, size, mtime) -> a cache key."""
    path = path.expanduser().resolve()
    digest = hashlib.sha256(f"{model_identity}|{path}|views={VIEWS}\n".encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def open_all_splits(path: str | Path) -> list:
    """Every split of the dataset at ``path`` that exists (the whole evaluation set must be excluded)."""
    from react.datasets import SEALED_ENV, SPLIT_NAMES, build_classification_dataset

    sealed = [s for s in SPLIT_NAMES if s in os.environ.get(SEALED_ENV, "").split(",")]
    if sealed:  # skipping it would let copies of exactly the images a report is read from through
        raise ReactError(f"exclusion set {path}: split {sealed[0]!r} is sealed in this process ({SEALED_ENV}); "
                         "decontaminate before sealing, or through a react serve started without the seal")
    found, seen, errors = [], set(), []
    for split in SPLIT_NAMES:
        try:
            ds = build_classification_dataset(path, split)
        except ReactError as exc:
            errors.append(str(exc))
            continue
        key = tuple(map(str, getattr(ds, "paths", None) or [])) or (split,)
        if key not in seen:  # an unsplit folder answers every split with the same images
            seen.add(key)
            found.append(ds)
    if not found:
        raise ReactError(errors[0] if errors else f"dataset {path}: no split found")
    return found


def embed_dataset(model, path: str | Path, cache: Path | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Exclusion:
    """The exclusion set of the dataset at ``path`` (every split), embedded with ``model``."""
    import torch

    parts = open_all_splits(path)
    name = str(path)
    cached = cache / f"{_fingerprint(Path(path), model.identity)}.npy" if cache else None
    if cached is not None and cached.is_file():
        vecs = np.load(cached)
        return Exclusion([name], vecs, {name: len(vecs) // VIEWS})
    total = sum(len(ds) for ds in parts)
    out, done = [], 0
    for ds in parts:
        for lo in range(0, len(ds), BATCH):
            images = [ds.load_image(i) for i in range(lo, min(lo + BATCH, len(ds)))]
            for view in views(images):
                out.append(model.encode_images(torch.stack([model.preprocess(im) for im in view])).numpy())
            done += len(images)
            if progress:
                progress(done, total)
    vecs = np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.embed_dim), np.float32)
    if cached is not None:
        from react.schemas import atomic_path, write_text

        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp, open(tmp, "wb") as f:
            np.save(f, vecs)
        write_text(cached.with_suffix(".json"), json.dumps({"dataset": name, "model": model.identity,
                                                             "images": len(vecs) // VIEWS}) + "\n")
    return Exclusion([name], vecs, {name: len(vecs) // VIEWS})


def views(images: list) -> list[list]:
    """The views of each image that are embedded: as it is, and mirrored."""
    from PIL import ImageOps

    return [images, [ImageOps.mirror(im) for im in images]]

