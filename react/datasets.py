"""Image-classification datasets for evaluation, from three on-disk forms.

``build_classification_dataset(path, split)`` recognises:

a. the embedded corpus directory (``downstream.parquet`` +
   ``downstream_classes.txt``; also the parquet file itself);
b. an ImageFolder tree ``DIR/<class>/*.jpg`` (or ``DIR/{test,val,train}/<class>/``);
c. the CLIP_benchmark webdataset layout (``DIR/classnames.txt``,
   ``DIR/zeroshot_classification_templates.txt``, ``DIR/{split}/*.tar``).

Each yields ``(PIL RGB image, int label)`` and carries ``classnames``,
``templates`` (the dataset's own prompts, or None) and ``name``. Bad input
raises ReactError naming the culprit.

``open_splits(path, train_split, split)`` opens the (train, test) pair the
linear probe needs, or says the dataset has one split to halve.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from PIL import Image
from torch.utils.data import Dataset

from react.config import DEFAULT_SPLIT, DEFAULT_TRAIN_SPLIT
from react.errors import ReactError
from react.images import IMAGE_EXTENSIONS, load_rgb
from react.shards import ShardImage, load_shard_image, scan_tar
from react.schemas import CLASSES_FILE, TEMPLATES_FILE, read_parquet

EMBEDDED_PARQUET = "downstream.parquet"
WDS_CLASSNAMES = "classnames.txt"
WDS_TEMPLATES = "zeroshot_classification_templates.txt"
SPLIT_NAMES = ("train", "val", "test")
EMBEDDED_SPLITS = ("val", "test")  # the embedded held-out task, halved per class (_build_embedded)
SEALED_ENV = "REACT_SEALED_SPLITS"  # comma-separated splits this process (and its children) may not open


class ClassificationDataset(Dataset):
    """Map-style dataset of (image, label); subclasses say where bytes come from."""

    def __init__(self, name: str, classnames: Sequence[str], labels: Sequence[int],
                 templates: Sequence[str] | None = None) -> None:
        self.name = name
        self.classnames = list(classnames)
        self.labels = [int(x) for x in labels]
        self.templates = list(templates) if templates else None

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load_image(index), self.labels[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {len(self.classnames)} classes)"


class FileListDataset(ClassificationDataset):
    """Images stored as files: the embedded corpus and ImageFolder trees."""

    def __init__(self, name: str, classnames: Sequence[str], paths: Sequence[Path],
                 labels: Sequence[int], templates: Sequence[str] | None = None) -> None:
        super().__init__(name, classnames, labels, templates)
        self.paths = [Path(p) for p in paths]

    def load_image(self, index: int) -> Image.Image:
        return load_rgb(self.paths[index])


class TarDataset(ClassificationDataset):
    """CLIP_benchmark shards, read by seeking into the tar, so workers can share it.

    Compressed tars cannot be seeked; their images are held in memory instead."""

    def __init__(self, name: str, classnames: Sequence[str], members: Sequence[ShardImage],
                 labels: Sequence[int], templates: Sequence[str] | None = None) -> None:
        super().__init__(name, classnames, labels, templates)
        self.members = list(members)

    def load_image(self, index: int) -> Image.Image:
        return load_shard_image(self.members[index])


# --- helpers --------------------------------------------------------------------

def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReactError(f"cannot read {path}: {exc.__class__.__name__}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_classnames(path: Path) -> list[str]:
    names = _read_lines(path)
    if not names:
        raise ReactError(f"no class names in {path}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ReactError(f"duplicate class name {name!r} in {path}")
        seen.add(name)
    return names


def _own_templates(path: Path) -> list[str] | None:
    """A dataset's own prompt templates, if it ships a file of them."""
    if not path.is_file():
        return None
    from react.templates import read_template_file

    return read_template_file(path)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


# --- a. embedded corpus ---------------------------------------------------------

def embedded_halves(keys: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Each row's half of the embedded held-out task: within a class, rows ordered by
    sha256(key) alternate ``val``, ``test``. A property of the data, not of a seed anyone
    could re-draw; the composed scenes use it too, so a scene lies in its stamps' half."""
    order = sorted(range(len(keys)), key=lambda i: (labels[i], hashlib.sha256(str(keys[i]).encode()).hexdigest()))
    halves = [""] * len(keys)
    rank: dict[str, int] = {}
    for i in order:
        r = rank[labels[i]] = rank.get(labels[i], -1) + 1
        halves[i] = EMBEDDED_SPLITS[r % 2]
    return halves


def check_embedded_split(root: Path, split: str) -> None:
    """One line naming the problem for a split the embedded task does not have or that is sealed."""
    check_not_sealed(split)
    if split not in EMBEDDED_SPLITS:
        raise ReactError(f"{root}: the embedded corpus has splits {' and '.join(map(repr, EMBEDDED_SPLITS))} "
                         f"(got {split!r})")


def _build_embedded(parquet: Path, split: str) -> FileListDataset:
    """The held-out task, halved per class into ``val`` (every recipe choice, sweep and threshold)
    and ``test`` (the final report only) by ``embedded_halves``."""
    root = parquet.parent
    check_embedded_split(root, split)
    classes_file = root / CLASSES_FILE
    if not classes_file.is_file():
        raise ReactError(f"class list missing: {classes_file}")
    classnames = _read_classnames(classes_file)
    index = {name: i for i, name in enumerate(classnames)}
    table = read_parquet(parquet, required=("key", "image_path", "label"))
    keys, image_paths, labels = (table.column(c).to_pylist() for c in ("key", "image_path", "label"))
    for key, image_path, label in zip(keys, image_paths, labels):
        if label is None:
            raise ReactError(f"{parquet}: no label for key {key!r}")
        if label not in index:
            raise ReactError(f"{parquet}: label {label!r} (key {key!r}) is not in {classes_file}")
        if not image_path:
            raise ReactError(f"{parquet}: no image_path for key {key!r}")
    if not keys:
        raise ReactError(f"{parquet} has no rows")
    halves = embedded_halves(keys, labels)
    rows = sorted((index[label], hashlib.sha256(str(key).encode()).hexdigest(), root / path)
                  for key, path, label, half in zip(keys, image_paths, labels, halves) if half == split)
    # the task's own prompts, as CLIP_benchmark ships them
    return FileListDataset(f"{root.name}:{split}", classnames, [r[2] for r in rows], [r[0] for r in rows],
                           _own_templates(root / TEMPLATES_FILE))


# --- b. ImageFolder ---------------------------------------------------------------

def _imagefolder_root(root: Path, split: str) -> Path:
    """DIR/<split>/ when the tree is split, else DIR itself.

    ``test`` falls back to ``val`` (ImageNet ships its test labels as val)."""
    candidates = [split] + (["val"] if split == "test" else [])
    for name in candidates:
        sub = root / name
        if sub.is_dir() and _subdirs(sub):
            return sub
    present = [d.name for d in _subdirs(root)]
    if present and set(present) <= set(SPLIT_NAMES):
        raise ReactError(f"no {split!r} split in {root} (has: {', '.join(present)})")
    return root


def _build_imagefolder(root: Path, split: str) -> FileListDataset:
    base = _imagefolder_root(root, split)
    class_dirs = _subdirs(base)
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        # Recursive, like torchvision's ImageFolder; sorted for a stable order.
        for image in sorted(p for p in class_dir.rglob("*") if _is_image(p)):
            paths.append(image)
            labels.append(label)
    if not paths:
        raise ReactError(f"no classes found in {root} (expected {root}/<class>/*.jpg)")
    classnames = [d.name.replace("_", " ") for d in class_dirs]
    if len(set(classnames)) != len(classnames):
        dup = next(c for i, c in enumerate(classnames) if c in classnames[:i])
        raise ReactError(f"{base}: two class folders both read as {dup!r} (underscores count as spaces)")
    # No slash: names end up in result file names.
    name = root.name if base == root else f"{root.name}-{base.name}"
    return FileListDataset(name, classnames, paths, labels)


# --- c. CLIP_benchmark webdataset -------------------------------------------------

def _scan_shard(tar_path: Path) -> list[tuple[str, ShardImage, int]]:
    """(key, image location, label) for every sample of one shard, in tar order."""
    out = []
    for sample in scan_tar(tar_path, want=("cls",)):
        if sample.image is None:
            raise ReactError(f"{tar_path}: sample {sample.key!r} has a .cls but no image")
        if "cls" not in sample.files:
            raise ReactError(f"{tar_path}: sample {sample.key!r} has an image but no .cls label")
        out.append((sample.key, sample.image, _parse_cls(sample.files["cls"], tar_path, sample.key)))
    return out


def _parse_cls(raw: object, tar_path: Path, key: str) -> int:
    try:
        return int(bytes(raw).decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise ReactError(f"{tar_path}: sample {key!r} has a non-integer .cls label") from None


def _build_wds(root: Path, split: str) -> TarDataset:
    classnames = _read_classnames(root / WDS_CLASSNAMES)
    templates = _own_templates(root / WDS_TEMPLATES)
    split_dir = root / split
    if not split_dir.is_dir():
        present = [d.name for d in _subdirs(root)]
        raise ReactError(f"no {split!r} split in {root} (has: {', '.join(present) or 'none'})")
    shards = sorted(split_dir.glob("*.tar")) + sorted(split_dir.glob("*.tar.gz"))
    if not shards:
        raise ReactError(f"no .tar shards in {split_dir}")
    members, labels = [], []
    for shard in shards:
        for key, where, label in _scan_shard(shard):
            if not 0 <= label < len(classnames):
                raise ReactError(f"{shard}: sample {key!r} has label {label}, "
                                 f"outside the {len(classnames)} classes of {root / WDS_CLASSNAMES}")
            members.append(where)
            labels.append(label)
    if not labels:
        raise ReactError(f"no samples in the shards of {split_dir}")
    name = root.name.removeprefix("wds_")
    return TarDataset(name, classnames, members, labels, templates)


# --- entry point ------------------------------------------------------------------

def detect_format(path: Path) -> str:
    """'embedded', 'wds' or 'imagefolder'; ReactError for anything else."""
    if path.is_file() and path.suffix == ".parquet":
        return "embedded"
    if not path.is_dir():
        raise ReactError(f"unrecognised dataset {path}: expected a corpus directory, "
                         "an ImageFolder directory or a CLIP_benchmark webdataset directory")
    if (path / WDS_CLASSNAMES).is_file():
        return "wds"
    if (path / EMBEDDED_PARQUET).is_file():
        return "embedded"
    return "imagefolder"


def seal_splits(*splits: str) -> None:
    """Forbid opening ``splits`` from here on, in this process and the processes it starts.

    Tuning code (every recipe choice, sweep and threshold) calls ``seal_splits("test")`` first,
    so a setting cannot be chosen on the split the final report is read from."""
    sealed = set(filter(None, os.environ.get(SEALED_ENV, "").split(","))) | set(splits)
    os.environ[SEALED_ENV] = ",".join(sorted(sealed))


def check_not_sealed(split: str) -> None:
    if split in os.environ.get(SEALED_ENV, "").split(","):
        raise ReactError(f"split {split!r} is sealed in this process ({SEALED_ENV}): tuning code reads the "
                         "validation split; the test split is for the final report only")


def build_classification_dataset(path: str | Path, split: str = DEFAULT_SPLIT) -> ClassificationDataset:
    """Open ``path`` as a classification dataset; see the module docstring for forms."""
    check_not_sealed(split)
    root = Path(path).expanduser()
    if not root.exists():
        raise ReactError(f"dataset not found: {root}")
    kind = detect_format(root)
    if kind == "wds":
        return _build_wds(root, split)
    if kind == "embedded":
        return _build_embedded(root if root.is_file() else root / EMBEDDED_PARQUET, split)
    return _build_imagefolder(root, split)


def open_splits(path: str | Path, train_split: str = DEFAULT_TRAIN_SPLIT, split: str = DEFAULT_SPLIT
                ) -> tuple[ClassificationDataset, ClassificationDataset | None, str]:
    """(train dataset, test dataset or None, the split rule in words). None:
    a dataset with one split (the embedded corpus, an ImageFolder without
    split folders), which ``evaluate_linear_probe`` halves per class."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ReactError(f"dataset not found: {root}")
    if detect_format(root) == "embedded":  # the probe trains on the validation half, is scored on the test half
        return (build_classification_dataset(root, "val"), build_classification_dataset(root, "test"),
                "embedded: val half -> test half")
    if train_split == split:
        raise ReactError(f"--train-split and --split are both {split!r}: the probe would be tested "
                         "on its training images")
    train = build_classification_dataset(root, train_split)
    test = build_classification_dataset(root, split)
    if getattr(train, "paths", None) is not None and train.paths == getattr(test, "paths", None):
        # An ImageFolder without split folders answers every split with the
        # whole tree; halve it rather than test on the training images.
        return (test, None, f"one split ({root.name} has no {train_split!r}/{split!r} folders): "
                            "per class floor(n/2) train, rest test (seed 0)")
    if train.classnames != test.classnames:
        raise ReactError(f"{root}: splits {train_split!r} and {split!r} have different classes "
                         f"({len(train.classnames)} vs {len(test.classnames)})")
    return train, test, f"{train_split} -> {split}"
