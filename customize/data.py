"""Training pairs from the shards folder ``react download`` writes.

Layout (CLI.md): ``{00000..N}.tar`` holding ``KEY.jpg`` / ``KEY.txt`` /
``KEY.json`` per sample, and ``sizes.json`` (``{"00000.tar": count}``) naming
the complete shards with their sample counts.

The shards are indexed once (tar headers and the small text members only;
images are located by offset and read by seeking, see ``react.shards``), and
samples are drawn from a global permutation per epoch. A streaming reader
with a shuffle buffer would only shuffle locally and could not resume
mid-epoch exactly; here the data position is just the step number: batch
``b`` of epoch ``e`` is a slice of ``permutation(seed, e)``, each process takes
its slice of the global batch, DataLoader workers split the batches, and every
image's augmentation is seeded by (seed, epoch, sample) -- so a resumed run
sees the same pixels as an uninterrupted one, whatever the worker count.
"""
from __future__ import annotations

import hashlib
import json
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from customize.constants import AUGMENTATIONS
from react.errors import ReactError
from react.images import load_rgb, read_span
from react.loading import LoadFailure, guarded
from react.schemas import SHARD_SIZES_FILE
from react.shards import TarMember, scan_tar

INDEX_FORMAT = 1


@dataclass
class ShardIndex:
    """Every training pair of a shards folder, in (shard, tar) order."""

    root: Path
    shards: list[str]          # shard file names, sorted
    counts: list[int]          # samples per shard (== sizes.json)
    shard_of: np.ndarray       # [N] int32 position in ``shards``
    offsets: np.ndarray        # [N] int64 image data offset in its tar
    sizes: np.ndarray          # [N] int64 image byte size
    keys: list[str]            # "00003.tar/KEY", unique across the folder
    captions: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def fingerprint(self) -> dict[str, list[int]]:
        """What a resumed run must find unchanged: shard names, byte sizes and counts."""
        return {name: [(self.root / name).stat().st_size, count] for name, count in zip(self.shards, self.counts)}

    def digest(self) -> str:
        """Identity of the ordered pairs (keys + captions): keys the text cache."""
        h = hashlib.sha256()
        for key, caption in zip(self.keys, self.captions):
            h.update(key.encode() + b"\0" + caption.encode() + b"\n")
        return h.hexdigest()[:16]

    def image(self, i: int) -> TarMember:
        return TarMember(str(self.root / self.shards[self.shard_of[i]]), self.keys[i], int(self.offsets[i]),
                         int(self.sizes[i]))


def read_sizes(root: Path) -> dict[str, int]:
    """sizes.json of a shards folder, checked; the one-line errors name the culprit."""
    if not root.exists():
        raise ReactError(f"training data not found: {root}")
    if not root.is_dir():
        raise ReactError(f"--train-data must be a shards folder (react download --out), not a file: {root}")
    path = root / SHARD_SIZES_FILE
    if not path.is_file():
        raise ReactError(f"no {SHARD_SIZES_FILE} in {root} (not a finished `react download` output)")
    try:
        sizes = json.loads(path.read_text())
        if not isinstance(sizes, dict):
            raise ValueError("not an object")
        sizes = {str(k): int(v) for k, v in sizes.items()}
    except (ValueError, TypeError) as exc:
        raise ReactError(f"unreadable {path}: {exc}") from None
    sizes = {k: v for k, v in sizes.items() if v > 0}
    if not sizes:
        raise ReactError(f"{path} lists no samples")
    for name in sizes:
        if not (root / name).is_file():
            raise ReactError(f"shard listed in {path} is missing: {root / name}")
    return dict(sorted(sizes.items()))


def _scan_shard(root: Path, name: str, expected: int) -> list[tuple[str, int, int, str]]:
    path = root / name
    out = []
    for sample in scan_tar(path, want=("txt",)):
        if sample.image is None:
            continue  # a caption without its image is not a pair (img2dataset never writes one)
        if not isinstance(sample.image, TarMember):
            raise ReactError(f"compressed shard {path}: training reads images by seeking (plain .tar only)")
        text = sample.files.get("txt")
        caption = text.decode("utf-8", errors="replace").strip() if text is not None else ""
        if not caption:
            raise ReactError(f"sample {sample.key} in {path} has no caption (.txt)")
        out.append((f"{name}/{sample.key}", sample.image.offset, sample.image.size, caption))
    if len(out) != expected:
        raise ReactError(f"shard {path} holds {len(out)} image-text pairs, {SHARD_SIZES_FILE} says {expected}")
    return out


def _read_cached(cache: Path, stamp: dict) -> tuple[list[tuple[str, int, int, str]], list[int]] | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(cache)
        meta = json.loads((table.schema.metadata or {}).get(b"react.index", b"{}"))
    except (pa.ArrowException, OSError, ValueError):
        return None
    if meta.get("format") != INDEX_FORMAT or meta.get("stamp") != stamp:
        return None
    cols = table.to_pydict()
    return list(zip(cols["key"], cols["offset"], cols["size"], cols["caption"])), cols["shard"]


def _write_cached(cache: Path, stamp: dict, rows: list[tuple[str, int, int, str]], shard_of: list[int]) -> None:
    import pyarrow as pa

    from react.schemas import write_parquet

    table = pa.table({"key": [r[0] for r in rows], "offset": pa.array([r[1] for r in rows], pa.int64()),
                      "size": pa.array([r[2] for r in rows], pa.int64()), "caption": [r[3] for r in rows],
                      "shard": pa.array(shard_of, pa.int32())})
    meta = {b"react.index": json.dumps({"format": INDEX_FORMAT, "stamp": stamp}).encode()}
    write_parquet(table.replace_schema_metadata(meta), cache)


def index_shards(root: str | Path, cache: Path | None = None) -> ShardIndex:
    """Index a shards folder, reusing ``cache`` (a parquet file) when every
    shard still has the byte size and count it had when the cache was written."""
    root = Path(root).expanduser().resolve()
    sizes = read_sizes(root)
    stamp = {name: [(root / name).stat().st_size, count] for name, count in sizes.items()}
    cached = _read_cached(cache, stamp) if cache is not None and cache.is_file() else None
    if cached is not None:
        rows, shard_of = cached
    else:
        from react.progress import progress

        rows, shard_of = [], []
        with progress(transient=True) as bar:
            task = bar.add_task("indexing shards", total=len(sizes), unit="shard")
            for s, (name, count) in enumerate(sizes.items()):
                found = _scan_shard(root, name, count)
                rows.extend(found)
                shard_of.extend([s] * len(found))
                bar.advance(task)
        if cache is not None:
            _write_cached(cache, stamp, rows, shard_of)
    # img2dataset writes a shard's samples in the order their downloads finished, so two downloads of
    # the same subset hold the same samples in different orders; ordered by key, a run sees the same
    # data in the same order whichever download it trains on (the demo's seeds reproduce exactly).
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])
    rows, shard_of = [rows[i] for i in order], [shard_of[i] for i in order]
    keys = [r[0] for r in rows]
    if len(set(keys)) != len(keys):
        raise ReactError(f"duplicate sample keys in {root}")
    return ShardIndex(root=root, shards=list(sizes), counts=list(sizes.values()),
                      shard_of=np.asarray(shard_of, dtype=np.int32),
                      offsets=np.asarray([r[1] for r in rows], dtype=np.int64),
                      sizes=np.asarray([r[2] for r in rows], dtype=np.int64), keys=keys,
                      captions=[r[3] for r in rows])


# --- augmentation ---------------------------------------------------------------

def train_transform(preprocess_cfg: dict, recipe: str, eval_transform: Callable[[Any], torch.Tensor]
                    ) -> Callable[[Any], torch.Tensor]:
    """``light`` (default): random resized crop of 50-100 % of the area + flip --
    a small retrieved set overfits without it, and heavier recipes wash out
    a tiny model's signal. ``reference``: the recipe of the reference runs,
    random resized crop (8-100 %), flip, RandAugment (m9, mstd 0.5) and random
    erasing (p 0.25). ``none``: the model's eval transform.

    Built with timm's transform factory (a pinned dependency; its ops are
    torchvision's transforms, which import here via react.compat)."""
    if recipe not in AUGMENTATIONS:
        raise ReactError(f"unknown --augment {recipe!r} (choose from {', '.join(AUGMENTATIONS)})")
    if recipe == "none":
        return eval_transform
    from timm.data.transforms_factory import transforms_imagenet_train

    size = preprocess_cfg.get("size", 224)
    size = tuple(size) if isinstance(size, (list, tuple)) else int(size)
    common = {"img_size": size, "hflip": 0.5, "color_jitter": None, "mean": tuple(preprocess_cfg["mean"]),
              "std": tuple(preprocess_cfg["std"]), "interpolation": preprocess_cfg.get("interpolation") or "bicubic"}
    if recipe == "light":
        return transforms_imagenet_train(scale=(0.5, 1.0), **common)
    return transforms_imagenet_train(scale=(0.08, 1.0), auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                                     re_mode="pixel", **common)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, random and numpy (what torchvision/timm transforms draw
    from) for one sample, then restore them: augmentation becomes a pure
    function of the sample, and the caller's RNG streams stay untouched."""
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


@dataclass
class Skipped:
    """A pair whose image no decoder could read: counted, named, left out."""

    index: int
    key: str
    reason: str


@dataclass
class RawItem:
    """What a worker hands the batched decoder (react.batch_decode): the image's
    bytes (``gpu``) or its decoded uint8 [3, H, W] (``cpu``), and its crop/flip."""

    index: int
    data: bytes | None
    image: torch.Tensor | None
    params: list[float]


class PairImages(Dataset):
    """Item ``(index, epoch)`` -> ``(image tensor, index)``, or a Skipped naming
    the pair when its image does not decode; a shard that cannot be read comes
    back as a LoadFailure (react.loading), an error."""

    def __init__(self, index: ShardIndex, transform: Callable[[Any], torch.Tensor], seed: int) -> None:
        self.index = index
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int] | Skipped | LoadFailure:
        i, epoch = item
        member = self.index.image(i)

        def load() -> tuple[torch.Tensor, int] | Skipped:
            data = read_span(member.tar, member.offset, member.size)
            try:
                image = load_rgb(data, name=f"{member.tar}:{member.name}")
            except ReactError as exc:
                return Skipped(i, self.index.keys[i], str(exc))
            with seeded(sample_seed(self.seed, epoch, i)):
                return self.transform(image), i

        return guarded(load)


class PairBytes(PairImages):
    """Item ``(index, epoch)`` -> RawItem for ``--decoder gpu`` (bytes; the size
    from the header) or ``cpu`` (decoded here); crop and flip drawn from the
    same per-sample seed as PairImages."""

    def __init__(self, index: ShardIndex, spec: Any, seed: int, decode: bool) -> None:
        super().__init__(index, lambda image: image, seed)
        self.spec, self.decode = spec, decode

    def __getitem__(self, item: tuple[int, int]) -> RawItem | Skipped | LoadFailure:
        from react.batch_decode import cpu_decode, draw_params, image_size

        i, epoch = item
        member = self.index.image(i)

        def load() -> RawItem | Skipped:
            data = read_span(member.tar, member.offset, member.size)
            try:
                if self.decode:
                    image = cpu_decode(data, f"{member.tar}:{member.name}")
                    height, width = image.shape[1:]
                else:
                    image, (width, height) = None, image_size(data, f"{member.tar}:{member.name}")
            except ReactError as exc:
                return Skipped(i, self.index.keys[i], str(exc))
            params = draw_params(self.spec, sample_seed(self.seed, epoch, i), width, height)
            return RawItem(i, None if self.decode else data, image, params)

        return guarded(load)


@dataclass
class RawBatch:
    indices: torch.Tensor
    datas: list[bytes | None]
    images: list[torch.Tensor | None]
    params: torch.Tensor  # [B, 9] float64


def collate_pairs(batch: list[Any]) -> tuple[Any, list[Skipped]] | LoadFailure:
    """(the batch of the readable samples, the Skipped ones); a LoadFailure wins.
    The batch is ``(images, indices)`` for PairImages, a RawBatch for PairBytes
    (None when every sample was skipped)."""
    for item in batch:
        if isinstance(item, LoadFailure):
            return item
    skipped = [item for item in batch if isinstance(item, Skipped)]
    good = [item for item in batch if not isinstance(item, Skipped)]
    if not good:
        return None, skipped
    if isinstance(good[0], RawItem):
        return RawBatch(torch.tensor([g.index for g in good]), [g.data for g in good], [g.image for g in good],
                        torch.tensor([g.params for g in good], dtype=torch.float64)), skipped
    return default_collate(good), skipped


def fill_skipped(images: torch.Tensor | None, indices: torch.Tensor | None, skipped: list[Skipped],
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the batch ``size`` (equal shapes across processes and steps): each
    skipped pair's place goes to a copy of the batch's first readable pair --
    same image, same caption, so a positive of it, never a false negative."""
    if images is None or not len(images):
        keys = ", ".join(s.key for s in skipped[:5])
        raise ReactError(f"no image of a whole batch could be decoded ({len(skipped)} pairs: {keys} ...)")
    missing = size - len(images)
    if missing <= 0:
        return images, indices
    return (torch.cat([images, images[:1].expand(missing, *images.shape[1:])]),
            torch.cat([indices, indices[:1].expand(missing)]))


class StepBatches(Sampler[list[tuple[int, int]]]):
    """This process's share of the global batch of each step, from ``start``.

    Step ``t`` is batch ``t % B`` of epoch ``t // B`` (``B`` = full batches
    per epoch; the remainder of a permutation is left out that epoch)."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, start: int, stop: int,
                 rank: int = 0, world: int = 1) -> None:
        if global_batch > num_samples:
            raise ReactError(f"--batch-size {global_batch} exceeds the {num_samples} training pairs")
        if global_batch % world:
            raise ReactError(f"--batch-size {global_batch} is not divisible by the {world} processes")
        self.n, self.batch, self.seed = num_samples, global_batch, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self.per_epoch = num_samples // global_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.batch // self.world
        perm, perm_epoch = None, -1
        for step in range(self.start, self.stop):
            epoch, b = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = self.permutation(epoch), epoch
            chunk = perm[b * self.batch : (b + 1) * self.batch]
            mine = chunk[self.rank * share : (self.rank + 1) * share]
            yield [(int(i), epoch) for i in mine]
