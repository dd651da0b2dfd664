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
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image
from torch.utils.data import Dataset

from react.errors import ReactError
from react.images import load_rgb, read_span
from react.schemas import CLASSES_FILE, TEMPLATES_FILE, read_parquet

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
EMBEDDED_PARQUET = "downstream.parquet"
WDS_CLASSNAMES = "classnames.txt"
WDS_TEMPLATES = "zeroshot_classification_templates.txt"
SPLIT_NAMES = ("train", "val", "test")
# webdataset extensions that hold the image, in order of preference.
WDS_IMAGE_EXTS = ("webp", "jpg", "jpeg", "png", "bmp")


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


@dataclass(frozen=True)
class TarMember:
    """Where one sample's image bytes sit inside an uncompressed tar."""

    tar: Path
    name: str
    offset: int  # of the data, not the header
    size: int


class TarDataset(ClassificationDataset):
    """CLIP_benchmark shards, read by seeking into the tar, so workers can share it.

    Compressed tars cannot be seeked; their images are held in memory instead."""

    def __init__(self, name: str, classnames: Sequence[str], members: Sequence[TarMember | bytes],
                 labels: Sequence[int], templates: Sequence[str] | None = None) -> None:
        super().__init__(name, classnames, labels, templates)
        self.members = list(members)

    def load_image(self, index: int) -> Image.Image:
        member = self.members[index]
        if isinstance(member, bytes):
            return load_rgb(member)
        return load_rgb(read_span(member.tar, member.offset, member.size), name=f"{member.tar}:{member.name}")


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


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


# --- a. embedded corpus ---------------------------------------------------------

def _build_embedded(parquet: Path, split: str) -> FileListDataset:
    root = parquet.parent
    if split != "test":
        raise ReactError(f"{root}: the embedded corpus has only a 'test' split (got {split!r})")
    classes_file = root / CLASSES_FILE
    if not classes_file.is_file():
        raise ReactError(f"class list missing: {classes_file}")
    classnames = _read_classnames(classes_file)
    index = {name: i for i, name in enumerate(classnames)}
    table = read_parquet(parquet, required=("key", "image_path", "label"))
    paths, labels = [], []
    for key, image_path, label in zip(*(table.column(c).to_pylist() for c in ("key", "image_path", "label"))):
        if label is None:
            raise ReactError(f"{parquet}: no label for key {key!r}")
        if label not in index:
            raise ReactError(f"{parquet}: label {label!r} (key {key!r}) is not in {classes_file}")
        if not image_path:
            raise ReactError(f"{parquet}: no image_path for key {key!r}")
        paths.append(root / image_path)
        labels.append(index[label])
    if not labels:
        raise ReactError(f"{parquet} has no rows")
    templates = None
    if (root / TEMPLATES_FILE).is_file():  # the task's own prompts, as CLIP_benchmark ships them
        from downstream.templates import read_template_file

        templates = read_template_file(root / TEMPLATES_FILE)
    return FileListDataset(root.name, classnames, paths, labels, templates)


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

def _split_key(member_name: str) -> tuple[str, str]:
    """webdataset's convention: the key runs up to the first dot of the file name."""
    directory, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower() if dot else ""


def _scan_tar(tar_path: Path) -> list[tuple[str, TarMember | bytes, int]]:
    """(key, image location, label) for every sample of one shard, in tar order."""
    samples: dict[str, dict[str, object]] = {}
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            # Offsets into a compressed stream mean nothing: keep those bytes in memory.
            compressed = _is_compressed(tar_path)
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = _split_key(m.name)
                if ext == "cls":
                    samples.setdefault(key, {})["cls"] = tf.extractfile(m).read()
                elif ext in WDS_IMAGE_EXTS:
                    where = tf.extractfile(m).read() if compressed else \
                        TarMember(tar_path, m.name, m.offset_data, m.size)
                    samples.setdefault(key, {}).setdefault("image", where)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ReactError(f"unreadable tar shard {tar_path}: {exc.__class__.__name__}") from None
    out = []
    for key, parts in samples.items():
        if "image" not in parts:
            raise ReactError(f"{tar_path}: sample {key!r} has a .cls but no image")
        if "cls" not in parts:
            raise ReactError(f"{tar_path}: sample {key!r} has an image but no .cls label")
        out.append((key, parts["image"], _parse_cls(parts["cls"], tar_path, key)))
    return out


def _is_compressed(path: Path) -> bool:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    return magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd"))


def _parse_cls(raw: object, tar_path: Path, key: str) -> int:
    try:
        return int(bytes(raw).decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise ReactError(f"{tar_path}: sample {key!r} has a non-integer .cls label") from None


def _build_wds(root: Path, split: str) -> TarDataset:
    classnames = _read_classnames(root / WDS_CLASSNAMES)
    templates_file = root / WDS_TEMPLATES
    templates = None
    if templates_file.is_file():
        from downstream.templates import read_template_file

        templates = read_template_file(templates_file)
    split_dir = root / split
    if not split_dir.is_dir():
        present = [d.name for d in _subdirs(root)]
        raise ReactError(f"no {split!r} split in {root} (has: {', '.join(present) or 'none'})")
    shards = sorted(split_dir.glob("*.tar")) + sorted(split_dir.glob("*.tar.gz"))
    if not shards:
        raise ReactError(f"no .tar shards in {split_dir}")
    members, labels = [], []
    for shard in shards:
        for key, where, label in _scan_tar(shard):
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


def build_classification_dataset(path: str | Path, split: str = "test") -> ClassificationDataset:
    """Open ``path`` as a classification dataset; see the module docstring for forms."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ReactError(f"dataset not found: {root}")
    kind = detect_format(root)
    if kind == "wds":
        return _build_wds(root, split)
    if kind == "embedded":
        return _build_embedded(root if root.is_file() else root / EMBEDDED_PARQUET, split)
    return _build_imagefolder(root, split)
