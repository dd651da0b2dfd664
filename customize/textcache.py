"""Caption embeddings computed once when the text tower is frozen.

In ``gated-image`` and ``locked-text`` modes the text tower never changes
and captions are not augmented, so encoding them every step is wasted work
(on the embedded base the MiniLM text tower costs more than the image tower).
They are encoded once, stored next to the run as float16 (the LAION layout's
precision) and memory-mapped; a file is keyed by the model's identity and the
digest of the ordered (key, caption) pairs, so a different base or different
shards never reuse it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from customize.data import ShardIndex
from react.models import LoadedModel
from react.schemas import atomic_path, write_text


class CaptionEmbeddings:
    """Row ``i`` is the L2-normalized text embedding of pair ``i`` of the index."""

    def __init__(self, array: np.ndarray, path: Path) -> None:
        self.array = array
        self.path = path

    def __len__(self) -> int:
        return len(self.array)

    def lookup(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        rows = torch.from_numpy(np.asarray(self.array[indices.cpu().numpy()], dtype=np.float32))
        return F.normalize(rows, dim=-1).to(device, non_blocking=True)


def cache_key(identity: str, index: ShardIndex) -> str:
    return hashlib.sha256(f"{identity}\n{index.digest()}".encode()).hexdigest()[:16]


def load_or_encode(model: LoadedModel, index: ShardIndex, cache_dir: Path, batch_size: int = 256,
                   compute: bool = True) -> CaptionEmbeddings | None:
    """The cached embeddings, encoding them first if absent (``compute``);
    None when absent and not to be computed (another process is writing them)."""
    key = cache_key(model.identity, index)
    path, meta_path = cache_dir / f"text-{key}.npy", cache_dir / f"text-{key}.json"
    if path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            array = np.load(path, mmap_mode="r")
            if (meta.get("identity") == model.identity and meta.get("pairs") == index.digest()
                    and array.shape[0] == len(index)):
                return CaptionEmbeddings(array, path)
        except (ValueError, OSError):
            pass
    if not compute:
        return None
    from react.progress import progress

    model.model.eval()
    out = np.empty((len(index), model.embed_dim), dtype=np.float16)
    with progress() as bar:
        task = bar.add_task("encoding captions once (frozen text)", total=len(index), unit="txt")
        for start in range(0, len(index), batch_size):
            chunk = index.captions[start : start + batch_size]
            out[start : start + len(chunk)] = model.encode_texts(chunk, batch_size=batch_size).numpy()
            bar.advance(task, len(chunk))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, out)
    write_text(meta_path, json.dumps({"identity": model.identity, "pairs": index.digest(), "count": len(index),
                                      "dim": int(out.shape[1]), "dtype": "float16"}))
    return CaptionEmbeddings(np.load(path, mmap_mode="r"), path)
