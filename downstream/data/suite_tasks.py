"""The evaluation suite's tasks beyond the stamps: built once from material the
embedded world holds, cached beside the corpus, in the corpus' own task form.

Each task is a directory that ``react.datasets.build_classification_dataset``
opens like the embedded corpus (``downstream.parquet`` with key, image_path and
label; ``downstream_classes.txt``; ``templates.txt``), so it has the same
``val``/``test`` halves, fixed per class by sha256(key):

- ``emoji-twemoji``: a vendor held out of pretraining. The corpus learned and
  retrieves Google's emoji; this task is Twitter's drawings (Twemoji, npm
  ``emoji-datasource-twitter``) of emoji the corpus also holds, classified into
  20 concrete groups named from the Unicode subcategories (``EMOJI_CLASSES``).
  Classes are groups, not single emoji, because one vendor draws each emoji
  once: a single-image class cannot be halved into val and test.
- ``stamp-scenes``: each held-out stamp (the corpus' ``cutouts/``) alone on a
  generated textured background (downstream.data.scenes.make_background),
  smaller and off-centre. The key is the stamp's own, so a scene lands in the
  same half as its stamp and the test stamps stay unread while choosing on val.
- ``openclipart``: the demo's own class names drawn by other artists -- Open
  Clip Art Library drawings (Debian ``openclipart-png``) in the folders their
  authors filed them under (``OPENCLIPART_CLASSES``). Several times the stamps'
  held-out set, so a few-point gain on the targeted classes can be told apart
  from image-sampling noise. Variants of one drawing (``_bw``, numbered
  siblings) are one family and only its first is kept, so no drawing sits in
  both halves.

No task is ever pretraining or retrieval material: emoji and clip-art images are
checked by checksum against both corpus parts, scenes by key. Near-copies (a
stamp redrawn from a clip-art original) are the retrieval's business: the demo
excludes every suite task from what it retrieves (``react retrieve --exclude``).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageChops

from downstream.data.scenes import ALPHA_THRESHOLD, load_stamps, make_background
from react.embedded.corpus import MAX_SIDE, TEMPLATES
from react.embedded.sources import OPENCLIPART, TWEMOJI, fetch, iter_deb_files, iter_tgz_files
from react.errors import ReactError
from react.images import load_rgb
from react.schemas import CLASSES_FILE, TEMPLATES_FILE, atomic_dir, read_parquet

SUITE_DIR = "suite"  # under the corpus directory
RECIPE_FILE = "task.json"  # written last: marks a complete build
TASKS_VERSION = 1  # bump when a builder changes, so cached tasks are rebuilt

# Unicode emoji subcategory -> class name. Concrete, visually distinct groups; 12 of the
# 20 names are also stamp classes (the customization's target words), 8 are not.
EMOJI_CLASSES: dict[str, str] = {
    "animal-mammal": "mammal", "animal-bird": "bird", "animal-bug": "insect", "animal-marine": "sea animal",
    "animal-reptile": "reptile", "plant-flower": "flower", "food-fruit": "fruit",
    "food-vegetable": "vegetable", "food-sweet": "dessert", "drink": "drink", "clothing": "clothing",
    "tool": "tool", "musical-instrument": "musical instrument", "sport": "sports equipment",
    "transport-ground": "vehicle", "transport-air": "aircraft", "transport-water": "boat",
    "place-building": "building", "sky & weather": "weather", "country-flag": "flag",
}
EMOJI_PER_CLASS = 24  # cap, so flags (259) and mammals (66) do not swamp the average
EMOJI_IMAGE_DIR = "img/twitter/64/"

# Open Clip Art folder (longest prefix wins) -> the demo's class name. Folders whose
# contents are not the class (astronomy is mostly moon phases, holiday is mixed) are left out.
OPENCLIPART_CLASSES: dict[str, str] = {
    "animals/mammals": "mammal", "animals/birds": "bird", "animals/bugs": "insect", "animals/fish": "fish",
    "food/fruit": "fruit", "food/vegetables": "vegetable", "plants/flowers": "flower", "plants/trees": "tree",
    "buildings/homes": "house", "transportation/roadsigns": "road sign", "transportation/vehicles": "vehicle",
    "recreation/music": "musical instrument", "recreation/sports": "sports equipment", "tools": "tool",
    "tools/weapons": "", "tools/toys": "",  # not tools in the task's sense
}
OPENCLIPART_PER_CLASS = 60  # cap, so tools (100 families) do not swamp vegetables (12)
OPENCLIPART_PREFIX = "usr/share/openclipart/png/"
OPENCLIPART_MAX_PIXELS = 16_000_000  # a few posters are 600 Mpx renders: skipped, not decoded

SCENE_SIZE = 128  # pixels; the embedded base sees 64
SCENE_SCALE = (0.45, 0.75)  # the stamp's longer side, as a fraction of the scene side
SCENE_SEED = 0


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _write_task(out: Path, rows: list[dict], classnames: list[str], recipe: dict,
                images: dict[str, Image.Image]) -> Path:
    """The task directory, atomically: images, parquet, class and template lists, recipe last."""
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for row in rows:
            images[row["key"]].save(tmp / row["image_path"], format="PNG")
        from react.schemas import write_parquet, write_text

        write_parquet(pa.Table.from_pylist(rows), tmp / "downstream.parquet")
        write_text(tmp / CLASSES_FILE, "\n".join(classnames) + "\n")
        # The corpus' prompts, unchanged: no task gets prompts chosen for it.
        write_text(tmp / TEMPLATES_FILE, "\n".join(TEMPLATES) + "\n")
        counts = {name: sum(r["label"] == name for r in rows) for name in classnames}
        write_text(tmp / RECIPE_FILE, json.dumps({**recipe, "version": TASKS_VERSION, "images": len(rows),
                                                  "per_class": counts}, indent=2) + "\n")
    return out


def _corpus_hashes(corpus: Path) -> tuple[set[str], set[str]]:
    """Keys and image checksums of everything the base learned from or retrieval can return."""
    keys: set[str] = set()
    shas: set[str] = set()
    for part in ("pretraining", "retrieval"):
        table = read_parquet(corpus / f"{part}.parquet", required=("key", "sha256"))
        keys.update(table.column("key").to_pylist())
        shas.update(table.column("sha256").to_pylist())
    return keys, shas


def build_emoji_task(corpus: Path, tgz: Path, out: Path) -> Path:
    """Twemoji images of the emoji the corpus also holds, grouped into ``EMOJI_CLASSES``."""
    meta = dict(iter_tgz_files(tgz, {"emoji.json"}, prefix="package/"))
    if "emoji.json" not in meta:
        raise ReactError(f"{tgz}: emoji.json missing")
    entries = [e for e in json.loads(meta["emoji.json"])
               if e.get("has_img_twitter") and e.get("has_img_google") and e.get("subcategory") in EMOJI_CLASSES]
    by_class: dict[str, list[dict]] = {}
    for e in entries:
        by_class.setdefault(EMOJI_CLASSES[e["subcategory"]], []).append(e)
    chosen = []
    for group in by_class.values():
        group.sort(key=lambda e: _digest("emoji-task", e["unified"]))
        chosen += group[:EMOJI_PER_CLASS]
    wanted = {EMOJI_IMAGE_DIR + e["image"]: e for e in chosen}
    _, corpus_shas = _corpus_hashes(corpus)
    rows, images = [], {}
    for rel, raw in iter_tgz_files(tgz, set(wanted), prefix="package/"):
        e = wanted[rel]
        sha = hashlib.sha256(raw).hexdigest()
        if sha in corpus_shas:  # a vendor that reused Google's drawing would leak it
            raise ReactError(f"{tgz}:{rel} is byte-identical to a corpus image: not a held-out vendor")
        key = "twemoji-" + _digest(TWEMOJI.name, e["unified"])[:12]
        image = load_rgb(raw, f"{tgz.name}:{rel}")  # flattened on white, as the corpus' emoji are
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        images[key] = image
        rows.append({"key": key, "image_path": f"images/{key}.png", "label": EMOJI_CLASSES[e["subcategory"]],
                     "caption": f"{(e.get('name') or e['short_name']).lower()} emoji", "sha256": sha})
    if len(rows) != len(wanted):
        raise ReactError(f"{tgz}: {len(wanted) - len(rows)} listed emoji images are missing from the package")
    rows.sort(key=lambda r: r["key"])
    classnames = [name for name in EMOJI_CLASSES.values() if name in by_class]
    recipe = {"task": "emoji-twemoji", "source": {"package": TWEMOJI.package, "version": TWEMOJI.version,
                                                 "sha256": TWEMOJI.sha256, "license": TWEMOJI.license}}
    return _write_task(out, rows, classnames, recipe, images)


def _family(stem: str) -> str:
    """One drawing's variants share it: colour/outline suffixes and a trailing number dropped."""
    stem = re.sub(r"_(bw|black|white|outline|colou?r)(?=[_\-.\d]|$)", "", stem.lower())
    return re.sub(r"[_\-.]*\d+$", "", stem).strip("_-. ") or stem


def _too_large(raw: bytes) -> bool:
    """Judged from the PNG header alone, before anything is decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            width, height = Image.open(io.BytesIO(raw)).size
        except Image.DecompressionBombError:
            return True
    return width * height > OPENCLIPART_MAX_PIXELS


def _clipart_label(rel: str) -> str:
    folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
    best = max((p for p in OPENCLIPART_CLASSES if folder == p or folder.startswith(p + "/")), key=len, default=None)
    return OPENCLIPART_CLASSES[best] if best else ""


def build_openclipart_task(corpus: Path, deb: Path, out: Path) -> Path:
    """Open Clip Art drawings of the demo's classes: one per family, ``OPENCLIPART_PER_CLASS`` per class."""
    _, corpus_shas = _corpus_hashes(corpus)
    families: dict[str, dict[str, tuple[str, bytes]]] = {}
    identical = oversized = 0
    for rel, raw in sorted(iter_deb_files(deb, OPENCLIPART_PREFIX, (".png",))):
        label = _clipart_label(rel)
        if not label:
            continue
        if hashlib.sha256(raw).hexdigest() in corpus_shas:  # the corpus holds this very file
            identical += 1
            continue
        if _too_large(raw):
            oversized += 1
            continue
        families.setdefault(label, {}).setdefault(_family(rel.rsplit("/", 1)[-1][:-4]), (rel, raw))
    if not families:
        raise ReactError(f"{deb}: no drawing under {OPENCLIPART_PREFIX} in the task's folders")
    rows, images = [], {}
    for label, members in families.items():
        for family in sorted(members, key=lambda f: _digest("openclipart-task", f))[:OPENCLIPART_PER_CLASS]:
            rel, raw = members[family]
            key = "openclipart-" + _digest(OPENCLIPART.name, rel)[:12]
            image = load_rgb(raw, f"{deb.name}:{rel}")  # flattened on white, as the corpus' stamps are
            # Clip art often sits small on a wide canvas; stamps fill theirs. Crop to the drawing.
            box = ImageChops.difference(image, Image.new("RGB", image.size, (255, 255, 255))).getbbox()
            image = image.crop(box) if box else image
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            images[key] = image
            rows.append({"key": key, "image_path": f"images/{key}.png", "label": label,
                         "caption": family.replace("_", " "), "sha256": hashlib.sha256(raw).hexdigest()})
    rows.sort(key=lambda r: r["key"])
    classnames = [name for name in dict.fromkeys(OPENCLIPART_CLASSES.values()) if name in families]
    recipe = {"task": "openclipart", "per_class_cap": OPENCLIPART_PER_CLASS, "byte_identical_dropped": identical,
              "oversized_skipped": oversized,
              "source": {"package": OPENCLIPART.package, "version": OPENCLIPART.version,
                         "sha256": OPENCLIPART.sha256, "license": OPENCLIPART.license}}
    return _write_task(out, rows, classnames, recipe, images)

def compose_single(stamp: Image.Image, key: str, size: int = SCENE_SIZE, seed: int = SCENE_SEED) -> Image.Image:
    """One stamp (RGBA, cropped to its alpha box) on a textured background, at a scale and
    position drawn from (seed, key): the same stamp always gives the same scene."""
    rng = np.random.default_rng([seed, int(_digest("scene", key)[:12], 16)])
    image = make_background(rng, size)
    w, h = stamp.size
    scale = rng.uniform(*SCENE_SCALE) * size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    pasted = np.asarray(stamp.resize((nw, nh), Image.BILINEAR), dtype=np.float64)
    x0, y0 = int(rng.integers(0, size - nw + 1)), int(rng.integers(0, size - nh + 1))
    alpha = pasted[..., 3:] / 255.0
    region = image[y0:y0 + nh, x0:x0 + nw]
    region[:] = alpha * pasted[..., :3] + (1 - alpha) * region
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), mode="RGB")


def build_scenes_task(corpus: Path, out: Path) -> Path:
    """Every held-out stamp composed alone onto a scene, keyed and labelled as the stamp."""
    classnames, stamps = load_stamps(corpus)
    corpus_keys, _ = _corpus_hashes(corpus)
    leaked = [s.key for s in stamps if s.key in corpus_keys]
    if leaked:
        raise ReactError(f"{corpus}: held-out stamp {leaked[0]} is also in pretraining or retrieval")
    rows, images = [], {}
    for stamp in stamps:
        images[stamp.key] = compose_single(stamp.rgba, stamp.key)
        rows.append({"key": stamp.key, "image_path": f"images/{stamp.key}.png",
                     "label": classnames[stamp.label], "caption": "", "sha256": ""})
    recipe = {"task": "stamp-scenes", "size": SCENE_SIZE, "scale": list(SCENE_SCALE), "seed": SCENE_SEED,
              "alpha_threshold": ALPHA_THRESHOLD}
    return _write_task(out, rows, classnames, recipe, images)


def ensure_task(corpus: Path, name: str, sources_dir: Path | None = None) -> Path:
    """The task directory ``CORPUS/suite/NAME``, built on first use (seconds) and cached."""
    out = corpus / SUITE_DIR / name
    try:
        if json.loads((out / RECIPE_FILE).read_text()).get("version") == TASKS_VERSION:
            return out
    except (OSError, ValueError):
        pass
    from react.config import cache_dir

    sources = sources_dir or cache_dir() / "sources"
    if name == "emoji-twemoji":
        return build_emoji_task(corpus, fetch(TWEMOJI, sources), out)
    if name == "openclipart":
        return build_openclipart_task(corpus, fetch(OPENCLIPART, sources), out)
    if name == "stamp-scenes":
        return build_scenes_task(corpus, out)
    raise ReactError(f"unknown suite task {name!r} (known: emoji-twemoji, stamp-scenes, openclipart)")
