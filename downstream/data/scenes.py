"""Composed scenes: the embedded default for detection and segmentation.

The embedded corpus has no box or mask annotations, so we make them: held-out
downstream stamps (``cutouts/<key>.png``, RGBA) are pasted onto generated
backgrounds at random positions and scales, deterministically from a seed.
Every object pixel is known, so boxes and masks are exact.

Why generated backgrounds: the only photographs the corpus holds are the
pretraining/retrieval web images, and evaluating on them would leak retrieval
images into the test set; the downstream stamps are the objects themselves and
would put unannotated objects in the background. A smooth two-colour gradient
with low-frequency texture and fine grain has no class content, so every
labelled pixel is a pasted stamp and every unlabelled pixel is background.
The colours are pale (each channel in ``BG_RANGE``): the embedded models see
stamps flattened on white, and on saturated backgrounds the small embedded
base model scored near chance even on crops of single objects (box
classification 8% vs 14% on pale backgrounds, chance 5%), which would leave
nothing for a customized model to improve on.

Occlusion: objects are pasted in order, later ones in front. A placement is
rejected (and re-drawn, up to ``PLACEMENT_TRIES`` times, then the object is
left out) if it would leave any earlier object less than ``MIN_VISIBLE`` of its
own pixels visible. So every pasted object is annotated and no half-hidden
object stays unlabelled; the annotated box is the bounding box of the
*visible* mask and the area its visible pixel count. A pixel belongs to an
object where the stamp's (resized) alpha is >= 128; the soft alpha rim outside
that is blended into the image but counts as its background/occluder.

One output directory holds both forms (written atomically):

- ``instances.json``: COCO instances (``images``, ``annotations`` with ``bbox``
  [x, y, w, h], ``area``, ``iscrowd`` 0 and an RLE ``segmentation``,
  ``categories`` with ids 1..C in ``downstream_classes.txt`` order);
- ``images/<stem>.png`` and ``masks/<stem>.png`` (mode L: 0 background,
  i + 1 for downstream class i);
- ``classes.txt`` ("background", then the class names);
- ``scenes.json`` (the recipe: version, n, seed, size, counts).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from downstream.defaults import DEFAULT_SCENE_SEED, DEFAULT_SCENES, DEFAULT_SPLIT
from react.errors import ReactError
from react.schemas import CLASSES_FILE, atomic_dir, read_parquet

# Bump when the generator changes, so cached scenes are rebuilt.
SCENES_VERSION = 2
SCENE_SIZE = 320
MAX_OBJECTS = 4
SCALE_RANGE = (0.25, 0.6)  # longer side of a stamp, as a fraction of the scene side
MIN_VISIBLE = 0.5
PLACEMENT_TRIES = 20
ALPHA_THRESHOLD = 128
# Pale backgrounds: see the module doc.
BG_RANGE = (205.0, 250.0)
BG_TEXTURE = 8.0
BG_GRAIN = 3.0
CUTOUTS_DIR = "cutouts"
SCENES_CACHE_DIR = "scenes"
INSTANCES_FILE = "instances.json"
SEG_CLASSES_FILE = "classes.txt"
RECIPE_FILE = "scenes.json"


@dataclass
class Stamp:
    key: str
    label: int
    rgba: Image.Image  # cropped to its alpha bounding box


def load_stamps(corpus_dir: str | Path, split: str | None = None) -> tuple[list[str], list[Stamp]]:
    """Class names and the downstream stamps' cut-outs (of one half of the held-out task
    when ``split`` is given: react.datasets.embedded_halves), or ReactError."""
    from react.datasets import embedded_halves

    corpus_dir = Path(corpus_dir)
    classes_path = corpus_dir / CLASSES_FILE
    if not classes_path.is_file():
        raise ReactError(f"{corpus_dir}: no {CLASSES_FILE} (not an embedded corpus directory)")
    classnames = [line.strip() for line in classes_path.read_text().splitlines() if line.strip()]
    table = read_parquet(corpus_dir / "downstream.parquet", required=("key", "label"))
    index = {name: i for i, name in enumerate(classnames)}
    keys, labels = table.column("key").to_pylist(), table.column("label").to_pylist()
    halves = embedded_halves(keys, [str(label) for label in labels])
    stamps: list[Stamp] = []
    for key, label, half in zip(keys, labels, halves):
        if split and half != split:
            continue
        if label not in index:
            raise ReactError(f"{corpus_dir}/downstream.parquet: label {label!r} of {key!r} "
                             f"is not in {CLASSES_FILE}")
        path = corpus_dir / CUTOUTS_DIR / f"{key}.png"
        if not path.is_file():
            raise ReactError(f"missing cut-out {path} (the embedded corpus needs {CUTOUTS_DIR}/)")
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
        box = rgba.getchannel("A").point(lambda a: 255 if a >= ALPHA_THRESHOLD else 0).getbbox()
        if box is None:
            raise ReactError(f"cut-out {path} is fully transparent")
        stamps.append(Stamp(key, index[label], rgba.crop(box)))
    if not stamps:
        raise ReactError(f"{corpus_dir}/downstream.parquet has no rows"
                         + (f" in the {split} half of the held-out task" if split and table.num_rows else ""))
    return classnames, stamps


def make_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A [size, size, 3] float image: gradient + low-frequency texture + grain."""
    c0, c1 = rng.uniform(BG_RANGE[0], BG_RANGE[1], size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    image = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    coarse = rng.normal(0, 1, size=(3, 6, 6)).astype(np.float32)
    for ch in range(3):
        # PIL's bicubic upsampling of a tiny random grid gives smooth blotches.
        blotch = Image.fromarray(coarse[ch], mode="F").resize((size, size), Image.BICUBIC)
        image[..., ch] += BG_TEXTURE * np.asarray(blotch, dtype=np.float64)
    image += rng.normal(0, BG_GRAIN, size=image.shape)
    return image


def _place(rng: np.random.Generator, stamp: Stamp, size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The resized stamp as RGB and alpha in [0, 1], and a top-left corner that keeps it inside."""
    w, h = stamp.rgba.size
    longer = rng.uniform(*SCALE_RANGE) * size
    scale = longer / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(stamp.rgba.resize((nw, nh), Image.BILINEAR), dtype=np.float64)
    x0 = int(rng.integers(0, size - nw + 1))
    y0 = int(rng.integers(0, size - nh + 1))
    return resized[..., :3], resized[..., 3] / 255.0, x0, y0


def compose_scene(rng: np.random.Generator, stamps: list[Stamp], num_classes: int,
                  size: int = SCENE_SIZE) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
    """One scene: uint8 RGB image, owner map (-1 background, else object index),
    and [(class index, visible bool mask)] per pasted object."""
    image = make_background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)
    full_area: list[int] = []
    labels: list[int] = []
    by_class = [[s for s in stamps if s.label == c] for c in range(num_classes)]
    present = [c for c in range(num_classes) if by_class[c]]
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        # Classes drawn uniformly (not stamps), so rare classes get as many boxes as common ones.
        cls = present[int(rng.integers(len(present)))]
        stamp = by_class[cls][int(rng.integers(len(by_class[cls])))]
        for _try in range(PLACEMENT_TRIES):
            rgb, alpha, x0, y0 = _place(rng, stamp, size)
            h, w = alpha.shape
            solid = np.zeros((size, size), dtype=bool)
            solid[y0:y0 + h, x0:x0 + w] = alpha >= ALPHA_THRESHOLD / 255.0
            covered = np.bincount(owner[solid & (owner >= 0)], minlength=len(full_area))
            remaining = [np.count_nonzero(owner == j) - covered[j] for j in range(len(full_area))]
            if all(r >= MIN_VISIBLE * a for r, a in zip(remaining, full_area)):
                break
        else:
            continue  # no placement keeps the earlier objects visible enough: leave this one out
        region = image[y0:y0 + h, x0:x0 + w]
        region[:] = alpha[..., None] * rgb + (1 - alpha[..., None]) * region
        owner[solid] = len(full_area)
        full_area.append(int(solid.sum()))
        labels.append(cls)
    objects = [(labels[j], owner == j) for j in range(len(labels))]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), owner, objects


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def build_scenes(corpus_dir: str | Path, out_dir: str | Path, n: int = DEFAULT_SCENES, seed: int = DEFAULT_SCENE_SEED,
                 size: int = SCENE_SIZE, split: str | None = None) -> Path:
    """Write ``n`` composed scenes (both forms, see the module doc) to ``out_dir``, atomically,
    from the stamps of one half of the held-out task (``split``) or of all of it (None).

    Scene i depends only on (seed, i) and the stamps, so the first k scenes of a larger
    build are the same as a build with n=k."""
    if n < 1:
        raise ReactError(f"number of scenes must be >= 1, got {n}")
    from react.progress import progress

    classnames, stamps = load_stamps(corpus_dir, split)
    images, annotations = [], []
    with atomic_dir(out_dir) as tmp, progress(transient=True) as bar:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        task = bar.add_task("composing scenes", total=n, unit="scenes")
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            image, _, objects = compose_scene(rng, stamps, len(classnames), size)
            stem = f"scene_{i:05d}"
            Image.fromarray(image, mode="RGB").save(tmp / "images" / f"{stem}.png")
            label_map = np.zeros((size, size), dtype=np.uint8)
            for cls, visible in objects:
                label_map[visible] = cls + 1
                ys, xs = np.nonzero(visible)
                x0, y0 = int(xs.min()), int(ys.min())
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                    "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                    "area": int(visible.sum()), "iscrowd": 0, "segmentation": _rle(visible),
                })
            Image.fromarray(label_map, mode="L").save(tmp / "masks" / f"{stem}.png")
            images.append({"id": i + 1, "file_name": f"{stem}.png", "width": size, "height": size})
            bar.advance(task)
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(classnames)]
        (tmp / INSTANCES_FILE).write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}) + "\n")
        (tmp / SEG_CLASSES_FILE).write_text("\n".join(["background", *classnames]) + "\n")
        recipe = {"version": SCENES_VERSION, "n": n, "seed": seed, "split": split, "size": size,
                  "objects": len(annotations), "classes": len(classnames),
                  "stamps": len(stamps), "source": str(Path(corpus_dir).resolve())}
        # Written last: its presence marks a complete build for ensure_scenes.
        (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    return Path(out_dir)


def ensure_scenes(corpus_dir: str | Path, n: int = DEFAULT_SCENES, seed: int = DEFAULT_SCENE_SEED,
                  split: str = DEFAULT_SPLIT) -> Path:
    """The composed scenes of one half of an embedded corpus' held-out task -- ``val`` for
    every choice, ``test`` for the report -- built once and cached under
    ``CORPUS/scenes/v{version}-{split}-n{n}-seed{seed}`` (deterministic, so the cache is
    just a shortcut). A sealed split fails here, before anything is built."""
    from react.datasets import check_embedded_split

    corpus_dir = Path(corpus_dir)
    check_embedded_split(corpus_dir, split)
    out = corpus_dir / SCENES_CACHE_DIR / f"v{SCENES_VERSION}-{split}-n{n}-seed{seed}"
    recipe = out / RECIPE_FILE
    if recipe.is_file():
        try:
            done = json.loads(recipe.read_text())
        except json.JSONDecodeError:
            done = {}
        if (done.get("version"), done.get("n"), done.get("seed"), done.get("split")) == (SCENES_VERSION, n, seed,
                                                                                          split):
            return out
    from react.progress import console

    console.log(f"building {n} composed scenes of the {split} stamps (seed {seed}) under {out}")
    return build_scenes(corpus_dir, out, n=n, seed=seed, split=split)


def is_embedded_corpus(path: str | Path) -> bool:
    """A directory ensure_scenes can build from."""
    path = Path(path)
    return path.is_dir() and (path / "downstream.parquet").is_file() and (path / CUTOUTS_DIR).is_dir()
