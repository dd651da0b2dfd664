"""COCO instances files and box proposals, read and checked for detection.

``load_instances(json, images_dir)`` reads a COCO instances file (``images``,
``annotations``, ``categories``) into a ``DetectionData``: the images that
exist on disk, the categories in id order and a cleaned ground truth that
pycocotools can evaluate. ``resolve_detection_dataset`` turns a ``--dataset``
argument into (instances file, images folder).

Bad input, and what happens to it (counts end up in the result):

- boxes reaching outside their image are clipped to it (``clipped_boxes``);
- boxes with no area (w or h <= 0, also after clipping) or no bbox at all are
  skipped (``skipped_empty_boxes``); crowd boxes are kept as pycocotools'
  ignore regions;
- an annotation naming an unknown category or image, duplicate ids, a class
  list whose length differs from the categories, missing image files: a
  ReactError naming the culprit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from react.errors import ReactError

INSTANCES_FILE = "instances.json"
IMAGES_DIR = "images"


@dataclass
class ImageRecord:
    id: int
    path: Path
    width: int
    height: int


@dataclass
class DetectionData:
    name: str
    images: list[ImageRecord]
    category_ids: list[int]            # sorted; category_ids[i] is class i
    classnames: list[str]
    gt: dict[str, Any]                 # cleaned COCO dict (pycocotools ground truth)
    counts: dict[str, int] = field(default_factory=dict)

    def gt_boxes(self) -> dict[int, np.ndarray]:
        """image id -> [K, 4] xyxy ground-truth boxes (crowd regions excluded)."""
        out: dict[int, list[list[float]]] = {im.id: [] for im in self.images}
        for ann in self.gt["annotations"]:
            if not ann.get("iscrowd", 0):
                x, y, w, h = ann["bbox"]
                out[ann["image_id"]].append([x, y, x + w, y + h])
        return {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in out.items()}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ReactError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReactError(f"{path}: not valid JSON ({exc})") from None


def _box(value: Any, where: str) -> list[float] | None:
    """A COCO [x, y, w, h] as floats; None where it is missing; error where malformed."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ReactError(f"{where}: bbox must be [x, y, w, h], got {value!r}")
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ReactError(f"{where}: bbox must be numbers, got {value!r}") from None
    if not all(np.isfinite(box)):
        raise ReactError(f"{where}: bbox has a non-finite value {value!r}")
    return box


def clip_box(box: list[float], width: int, height: int) -> tuple[list[float], bool]:
    """[x, y, w, h] clipped to the image, and whether clipping changed it."""
    x0, y0 = min(max(box[0], 0.0), width), min(max(box[1], 0.0), height)
    x1, y1 = min(max(box[0] + box[2], 0.0), width), min(max(box[1] + box[3], 0.0), height)
    clipped = [x0, y0, x1 - x0, y1 - y0]
    return clipped, clipped != box


def load_instances(path: str | Path, images_dir: str | Path,
                   classnames: list[str] | None = None) -> DetectionData:
    path, images_dir = Path(path), Path(images_dir)
    data = _read_json(path)
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise ReactError(f"{path}: not a COCO instances file (needs images, annotations, categories)")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if not cats:
        raise ReactError(f"{path}: no categories")
    category_ids = [int(c["id"]) for c in cats]
    if len(set(category_ids)) != len(category_ids):
        raise ReactError(f"{path}: duplicate category ids")
    names = [str(c.get("name", "")).strip() for c in cats]
    if classnames is not None:
        if len(classnames) != len(cats):
            raise ReactError(f"{len(classnames)} class names given for the {len(cats)} categories of {path}")
        names = list(classnames)
    if any(not n for n in names):
        raise ReactError(f"{path}: a category has no name")
    if len(set(names)) != len(names):
        raise ReactError(f"{path}: duplicate category names")

    images: list[ImageRecord] = []
    sizes: dict[int, tuple[int, int]] = {}
    missing = []
    for im in data["images"]:
        image_id = int(im["id"])
        if image_id in sizes:
            raise ReactError(f"{path}: duplicate image id {image_id}")
        if int(im.get("width", 0)) <= 0 or int(im.get("height", 0)) <= 0:
            raise ReactError(f"{path}: image {image_id} lacks a positive width/height")
        sizes[image_id] = (int(im["width"]), int(im["height"]))
        file = images_dir / im["file_name"]
        if not file.is_file():
            missing.append(str(file))
        images.append(ImageRecord(image_id, file, *sizes[image_id]))
    if missing:
        raise ReactError(f"{len(missing)} image file(s) of {path} missing, e.g. {missing[0]}")
    if not images:
        raise ReactError(f"{path}: no images")

    known = set(category_ids)
    clipped = skipped = 0
    annotations = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotation {ann.get('id', f'#{i}')}"
        if int(ann.get("category_id", -1)) not in known:
            raise ReactError(f"{where}: unknown category_id {ann.get('category_id')!r}")
        if int(ann.get("image_id", -1)) not in sizes:
            raise ReactError(f"{where}: unknown image_id {ann.get('image_id')!r}")
        box = _box(ann.get("bbox"), where)
        if box is None:
            skipped += 1
            continue
        box, changed = clip_box(box, *sizes[int(ann["image_id"])])
        if box[2] <= 0 or box[3] <= 0:
            skipped += 1
            continue
        clipped += changed
        annotations.append({"id": len(annotations) + 1, "image_id": int(ann["image_id"]),
                            "category_id": int(ann["category_id"]), "bbox": box,
                            "area": float(ann.get("area") or box[2] * box[3]),
                            "iscrowd": int(ann.get("iscrowd", 0))})
    if not annotations:
        raise ReactError(f"{path}: no usable annotations ({skipped} empty)")
    gt = {"images": [{"id": im.id, "width": im.width, "height": im.height} for im in images],
          "annotations": annotations,
          "categories": [{"id": cid, "name": n} for cid, n in zip(category_ids, names)]}
    counts = {"clipped_boxes": clipped, "skipped_empty_boxes": skipped,
              "images_without_boxes": len(sizes) - len({a["image_id"] for a in annotations})}
    return DetectionData(path.parent.name if path.name == INSTANCES_FILE else path.stem,
                         images, category_ids, names, gt, counts)


def load_proposals(path: str | Path, data: DetectionData) -> tuple[dict[int, np.ndarray], dict[str, int]]:
    """A COCO-format results/proposals file (a list of {image_id, bbox, score?},
    or a dict with such a list under "annotations") -> image id -> [K, 4] xyxy.

    Scores and categories in the file are ignored: the model scores every box.
    Boxes are clipped/skipped as ground truth is; an unknown image id is an error."""
    path = Path(path)
    rows = _read_json(path)
    if isinstance(rows, dict):
        rows = rows.get("annotations")
    if not isinstance(rows, list):
        raise ReactError(f"{path}: expected a list of {{image_id, bbox}} (or a dict with 'annotations')")
    sizes = {im.id: (im.width, im.height) for im in data.images}
    boxes: dict[int, list[list[float]]] = {im.id: [] for im in data.images}
    clipped = skipped = 0
    for i, row in enumerate(rows):
        where = f"{path}: entry {i}"
        if not isinstance(row, dict) or "image_id" not in row:
            raise ReactError(f"{where}: needs image_id and bbox")
        try:
            image_id = int(row["image_id"])
        except (TypeError, ValueError):
            raise ReactError(f"{where}: image_id {row['image_id']!r} is not an integer") from None
        if image_id not in sizes:
            raise ReactError(f"{where}: image_id {image_id} is not in the dataset")
        box = _box(row.get("bbox"), where)
        if box is None:
            raise ReactError(f"{where}: no bbox")
        box, changed = clip_box(box, *sizes[image_id])
        if box[2] <= 0 or box[3] <= 0:
            skipped += 1
            continue
        clipped += changed
        boxes[image_id].append([box[0], box[1], box[0] + box[2], box[1] + box[3]])
    if not any(boxes.values()):
        raise ReactError(f"{path}: no usable boxes ({skipped} empty)")
    out = {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in boxes.items()}
    return out, {"clipped_proposals": clipped, "skipped_empty_proposals": skipped}


def resolve_detection_dataset(dataset: str | Path, images: str | Path | None = None) -> tuple[Path, Path]:
    """``--dataset``/``--images`` -> (instances JSON, images folder).

    A directory holding instances.json (+ images/), or an instances JSON file
    with --images (default: an images/ folder beside it). The embedded corpus
    is handled by the caller (it builds the composed scenes first)."""
    dataset = Path(dataset)
    if dataset.is_dir():
        instances = dataset / INSTANCES_FILE
        if not instances.is_file():
            raise ReactError(f"{dataset}: no {INSTANCES_FILE} (expected DIR/{INSTANCES_FILE} + "
                             f"DIR/{IMAGES_DIR}/, an instances JSON file, or the embedded corpus)")
        folder = Path(images) if images else dataset / IMAGES_DIR
    elif dataset.is_file():
        instances = dataset
        folder = Path(images) if images else dataset.parent / IMAGES_DIR
    else:
        raise ReactError(f"--dataset {dataset}: no such file or directory")
    if not folder.is_dir():
        raise ReactError(f"images folder not found: {folder} (pass --images DIR)")
    return instances, folder
