"""Captioned image sets for retrieval evaluation, from three on-disk forms.

``build_captioned_dataset(path, split, images=None)`` recognises:

a. the embedded corpus directory (``downstream.parquet`` with ``caption``;
   also the parquet file itself): one caption per image, the class label kept;
b. a COCO / Flickr30K Karpathy-split JSON (``dataset_coco.json`` format:
   ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}``)
   given as the file, with ``images`` the image root (default: the JSON's
   folder), or a directory holding exactly one ``dataset_*.json`` and the images;
   an image is at ``ROOT/filepath/filename`` (``ROOT/filename`` without filepath);
   Karpathy's ``restval`` counts as ``train``;
c. CLIP_benchmark's retrieval webdataset layout, ``DIR/{split}/*.tar`` whose
   samples hold an image and a ``.txt`` with one caption per line.

Each yields ``(PIL RGB image, image index)``; ``captions[i]`` lists image i's
captions. Bad input raises ReactError naming the culprit.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from PIL import Image
from torch.utils.data import Dataset

from downstream.defaults import DEFAULT_SPLIT
from react.errors import ReactError
from react.images import load_rgb
from react.schemas import CLASSES_FILE, read_parquet
from react.shards import ShardImage, load_shard_image, scan_tar

EMBEDDED_PARQUET = "downstream.parquet"
KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


class CaptionedDataset(Dataset):
    """Images (files or tar members) with one or more captions each."""

    def __init__(self, name: str, images: Sequence[Path | ShardImage], captions: Sequence[Sequence[str]],
                 labels: Sequence[int] | None = None, classnames: Sequence[str] | None = None) -> None:
        if len(images) != len(captions):
            raise AssertionError(f"{len(images)} images for {len(captions)} caption lists")
        self.name = name
        self.images = list(images)
        self.captions = [list(c) for c in captions]
        self.labels = list(labels) if labels is not None else None
        self.classnames = list(classnames) if classnames is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> Image.Image:
        where = self.images[index]
        return load_rgb(where) if isinstance(where, Path) else load_shard_image(where)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load_image(index), index

    def flat_captions(self) -> tuple[list[str], list[int]]:
        """Every caption once, and the index of the image it belongs to."""
        texts, owners = [], []
        for i, caps in enumerate(self.captions):
            texts.extend(caps)
            owners.extend([i] * len(caps))
        return texts, owners

    def __repr__(self) -> str:
        return f"CaptionedDataset({self.name!r}, {len(self)} images, {sum(map(len, self.captions))} captions)"


def _clean(captions: Sequence[object]) -> list[str]:
    return [c.strip() for c in captions if isinstance(c, str) and c.strip()]


def _check_files(paths: Sequence[Path], where: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ReactError(f"{where}: image file missing: {missing[0]}{more}")


# --- a. embedded corpus -------------------------------------------------------------

def _build_embedded(parquet: Path, split: str) -> CaptionedDataset:
    root = parquet.parent
    if split != "test":
        raise ReactError(f"{root}: the embedded corpus has only a 'test' split (got {split!r})")
    table = read_parquet(parquet, required=("key", "image_path", "caption"))
    keys, paths, captions = (table.column(c).to_pylist() for c in ("key", "image_path", "caption"))
    images, caption_lists = [], []
    for key, image_path, caption in zip(keys, paths, captions):
        if not image_path:
            raise ReactError(f"{parquet}: no image_path for key {key!r}")
        caps = _clean([caption])
        if not caps:
            raise ReactError(f"{parquet}: image {key!r} has no caption")
        images.append(root / image_path)
        caption_lists.append(caps)
    if not images:
        raise ReactError(f"{parquet} has no rows")
    _check_files(images, str(parquet))
    labels = classnames = None
    if "label" in table.column_names and (root / CLASSES_FILE).is_file():
        classnames = [x.strip() for x in (root / CLASSES_FILE).read_text().splitlines() if x.strip()]
        index = {c: i for i, c in enumerate(classnames)}
        raw = table.column("label").to_pylist()
        if all(x in index for x in raw):  # per-category figures only when every image has one
            labels = [index[x] for x in raw]
    return CaptionedDataset(root.name, images, caption_lists, labels, classnames if labels else None)


# --- b. Karpathy split JSON -----------------------------------------------------------

def _find_karpathy_json(root: Path) -> Path:
    found = sorted(root.glob("dataset_*.json"))
    if len(found) != 1:
        what = "no dataset_*.json" if not found else f"{len(found)} dataset_*.json files"
        raise ReactError(f"{root}: {what} (pass the Karpathy JSON itself as --dataset)")
    return found[0]


def _build_karpathy(json_path: Path, split: str, image_root: Path | None) -> CaptionedDataset:
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReactError(f"cannot read {json_path}: {exc.__class__.__name__}") from None
    entries = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ReactError(f"{json_path}: no 'images' list (expected the Karpathy-split format)")
    root = image_root if image_root is not None else json_path.parent
    if not root.is_dir():
        raise ReactError(f"image folder not found: {root}")
    present = sorted({str(e.get("split")) for e in entries if isinstance(e, dict)})
    wanted = KARPATHY_SPLITS.get(split, (split,))
    images, caption_lists = [], []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "filename" not in entry:
            raise ReactError(f"{json_path}: images[{n}] has no 'filename'")
        if entry.get("split") not in wanted:
            continue
        caps = _clean([s.get("raw") for s in entry.get("sentences") or [] if isinstance(s, dict)])
        if not caps:
            raise ReactError(f"{json_path}: image {entry['filename']!r} has no captions")
        images.append(root / entry.get("filepath", "") / entry["filename"])
        caption_lists.append(caps)
    if not images:
        raise ReactError(f"no {split!r} split in {json_path} (has: {', '.join(present) or 'none'})")
    _check_files(images, str(json_path))
    name = json_path.stem.removeprefix("dataset_")
    return CaptionedDataset(f"{name}-{split}", images, caption_lists)


# --- c. CLIP_benchmark retrieval webdataset -----------------------------------------------

def _build_wds(root: Path, split: str) -> CaptionedDataset:
    split_dir = root / split
    if not split_dir.is_dir():
        present = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        raise ReactError(f"no {split!r} split in {root} (has: {', '.join(present) or 'none'})")
    shards = sorted(split_dir.glob("*.tar")) + sorted(split_dir.glob("*.tar.gz"))
    if not shards:
        raise ReactError(f"no .tar shards in {split_dir}")
    images, caption_lists = [], []
    for shard in shards:
        for sample in scan_tar(shard, want=("txt",)):
            if sample.image is None:
                raise ReactError(f"{shard}: sample {sample.key!r} has a .txt but no image")
            raw = sample.files.get("txt")
            try:
                caps = _clean(bytes(raw).decode("utf-8").splitlines()) if raw is not None else []
            except UnicodeDecodeError:
                raise ReactError(f"{shard}: sample {sample.key!r} has a .txt that is not UTF-8") from None
            if not caps:
                raise ReactError(f"{shard}: image {sample.key!r} has no captions (.txt missing or empty)")
            images.append(sample.image)
            caption_lists.append(caps)
    if not images:
        raise ReactError(f"no samples in the shards of {split_dir}")
    return CaptionedDataset(f"{root.name.removeprefix('wds_')}-{split}", images, caption_lists)


# --- entry point ------------------------------------------------------------------------

def build_captioned_dataset(path: str | Path, split: str = DEFAULT_SPLIT,
                            images: str | Path | None = None) -> CaptionedDataset:
    """Open ``path`` as a captioned image set; see the module docstring for forms."""
    root = Path(path).expanduser()
    image_root = Path(images).expanduser() if images is not None else None
    if not root.exists():
        raise ReactError(f"dataset not found: {root}")
    if root.is_file() and root.suffix == ".json":
        return _build_karpathy(root, split, image_root)
    if image_root is not None and not root.is_dir():
        raise ReactError(f"--images goes with a Karpathy JSON dataset, not {root}")
    if root.is_file() and root.suffix == ".parquet":
        kind = "embedded"
    elif not root.is_dir():
        raise ReactError(f"unrecognised captioned dataset {root}: expected a corpus directory, "
                         "a Karpathy-split JSON or a CLIP_benchmark retrieval webdataset directory")
    elif (root / EMBEDDED_PARQUET).is_file():
        kind = "embedded"
    elif any(root.glob("dataset_*.json")):
        return _build_karpathy(_find_karpathy_json(root), split, image_root)
    else:
        kind = "wds"
    if image_root is not None:
        raise ReactError(f"--images goes with a Karpathy JSON dataset; {root} is a {kind} dataset")
    if kind == "embedded":
        return _build_embedded(root if root.is_file() else root / EMBEDDED_PARQUET, split)
    return _build_wds(root, split)
