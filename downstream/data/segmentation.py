"""Semantic-segmentation datasets: images + PNG label masks + a class-name list.

Layout (VOC / COCO-Stuff style, and what ``downstream.data.scenes`` writes)::

    ROOT/classes.txt          class i's name on line i (blank lines skipped)
    ROOT/images/STEM.png|jpg  the images
    ROOT/masks/STEM.png       mode L / P / I: each pixel a class index, or the ignore label
    ROOT/SPLIT.txt            optional: the stems of a split, one a line
                              (also looked for as ROOT/splits/SPLIT.txt)
    ROOT/templates.txt        optional: the dataset's own prompt templates
    ROOT/meta.json            optional: {"num_classes": N, "ignore_index": 255}

Without a split list every image is used. A class named ``background`` (or
``__background__``) marks the dataset as VOC-style; see downstream.tasks.segmentation
for how it is scored. An embedded corpus directory (downstream.parquet +
cutouts/) stands for the composed scenes of one half of its held-out task: ``val`` or
``test`` (downstream.data.scenes.ensure_scenes).

Masks are checked as they are read: a label outside the class list (and not
the ignore label) or a mask whose size differs from its image is a ReactError
naming the file; so is a missing mask, up front, with the count.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from downstream.defaults import DEFAULT_IGNORE_INDEX, DEFAULT_SPLIT
from react.errors import ReactError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MASK_MODES = ("L", "P", "I", "I;16")
BACKGROUND_NAMES = ("background", "__background__", "bg")


@dataclass
class SegmentationDataset:
    name: str
    root: Path
    classnames: list[str]
    images: list[Path]
    masks: list[Path]
    ignore_index: int = DEFAULT_IGNORE_INDEX
    templates: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def background_index(self) -> int | None:
        """The index of the class named background, if the dataset has one."""
        for i, name in enumerate(self.classnames):
            if name.strip().lower() in BACKGROUND_NAMES:
                return i
        return None

    def load_image(self, index: int) -> Image.Image:
        path = self.images[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as exc:
            raise ReactError(f"cannot read image {path}: {exc}") from None

    def load_mask(self, index: int) -> np.ndarray:
        """The label map [H, W] (int64), checked against the class list and its image size."""
        path = self.masks[index]
        try:
            with Image.open(path) as mask:
                if mask.mode not in MASK_MODES:
                    raise ReactError(f"mask {path}: mode {mask.mode} is not a label map "
                                     f"(need one of {', '.join(MASK_MODES)}; colour masks are not read)")
                labels = np.asarray(mask, dtype=np.int64)
        except OSError as exc:
            raise ReactError(f"cannot read mask {path}: {exc}") from None
        with Image.open(self.images[index]) as image:
            size = image.size
        if labels.shape != (size[1], size[0]):
            raise ReactError(f"mask {path} is {labels.shape[1]}x{labels.shape[0]}, "
                             f"its image {self.images[index].name} is {size[0]}x{size[1]}")
        present = np.unique(labels)
        bad = [int(v) for v in present if v != self.ignore_index and not 0 <= v < len(self.classnames)]
        if bad:
            raise ReactError(f"mask {path} has label {bad[0]} not in the {len(self.classnames)} classes "
                             f"of classes.txt (ignore label {self.ignore_index})")
        return labels

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        return self.load_image(index), self.load_mask(index)


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ReactError(f"cannot read {path}: {exc.__class__.__name__}") from None


def _classnames(root: Path) -> list[str]:
    path = root / "classes.txt"
    if not path.is_file():
        raise ReactError(f"segmentation dataset {root} has no classes.txt")
    names = _lines(path)
    if not names:
        raise ReactError(f"no class names in {path}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ReactError(f"duplicate class name {dupes[0]!r} in {path}")
    return names


def _meta(root: Path) -> dict:
    path = root / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReactError(f"cannot read {path}: {exc}") from None
    if not isinstance(meta, dict):
        raise ReactError(f"{path} must hold a JSON object")
    return meta


def _split_stems(root: Path, split: str | None) -> list[str] | None:
    if not split:
        return None
    for path in (root / f"{split}.txt", root / "splits" / f"{split}.txt"):
        if path.is_file():
            stems = _lines(path)
            if not stems:
                raise ReactError(f"split list {path} is empty")
            return stems
    return None


def resolve_root(path: str | Path, split: str | None = None) -> tuple[Path, bool]:
    """(the scenes directory of ``split``'s half for an embedded corpus, True), else (the path, False)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ReactError(f"segmentation dataset not found: {root}")
    if (root / "downstream.parquet").is_file() and not (root / "classes.txt").is_file():
        from downstream.data.scenes import ensure_scenes, is_embedded_corpus

        if is_embedded_corpus(root):
            return ensure_scenes(root, split=split or DEFAULT_SPLIT), True
        raise ReactError(f"{root} is a corpus without cutouts/: no segmentation scenes can be composed")
    return root, False


def _own_templates(root: Path, original: Path) -> list[str] | None:
    from react.templates import read_template_file

    for path in (root / "templates.txt", original / "downstream_templates.txt"):
        if path.is_file():
            return read_template_file(path)
    return None


def build_segmentation_dataset(path: str | Path, split: str | None = None,
                               ignore_index: int | None = None) -> SegmentationDataset:
    """Read a dataset directory (see the module doc); ``ignore_index`` None
    takes meta.json's, else DEFAULT_IGNORE_INDEX (255)."""
    original = Path(path).expanduser()
    root, scenes = resolve_root(original, split)
    classnames = _classnames(root)
    meta = _meta(root)
    if "num_classes" in meta and int(meta["num_classes"]) != len(classnames):
        raise ReactError(f"{root}: meta.json says {meta['num_classes']} classes, "
                         f"classes.txt names {len(classnames)}")
    if ignore_index is None:
        ignore_index = int(meta.get("ignore_index", DEFAULT_IGNORE_INDEX))
    if 0 <= ignore_index < len(classnames):
        raise ReactError(f"ignore label {ignore_index} is also class {classnames[ignore_index]!r}")
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise ReactError(f"segmentation dataset {root} has no {folder.name}/ folder")
    by_stem = {p.stem: p for p in sorted(image_dir.iterdir())
               if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")}
    notes = []
    stems = None if scenes else _split_stems(root, split)
    if stems is None:
        stems = sorted(by_stem)
        if split and not scenes:
            notes.append(f"no split list {split}.txt: all {len(stems)} images")
    else:
        unknown = [s for s in stems if s not in by_stem]
        if unknown:
            raise ReactError(f"split {split} names {len(unknown)} image(s) not in {image_dir}, e.g. {unknown[0]}")
    if not stems:
        raise ReactError(f"no images in {image_dir}")
    missing = [s for s in stems if not (mask_dir / f"{s}.png").is_file()]
    if missing:
        raise ReactError(f"{len(missing)} image(s) have no mask in {mask_dir}, e.g. {missing[0]}.png")
    name = f"{original.name}-scenes:{split or DEFAULT_SPLIT}" if scenes else original.name or str(original)
    return SegmentationDataset(
        name=name, root=root, classnames=classnames,
        images=[by_stem[s] for s in stems], masks=[mask_dir / f"{s}.png" for s in stems],
        ignore_index=ignore_index, templates=_own_templates(root, original), notes=notes,
    )
