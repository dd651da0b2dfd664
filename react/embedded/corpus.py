"""Build the embedded corpus: real images and captions from registry packages.

Three disjoint-by-construction parts, written in the project's corpus form
(``react.schemas.CORPUS_SCHEMA`` parquet + image files):

- ``pretraining``: what the embedded base CLIP learns from (all emoji and
  a quarter of each web-stamp folder, rounded up);
- ``retrieval``: the "web" the index holds (all emoji and all web stamps; it
  includes the pretraining part, as LAION includes OpenCLIP's own data);
- ``downstream``: held-out stamps labelled with their class, never in the
  other two parts (checked by key and by image checksum).
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from PIL import Image

from react.config import cache_dir
from react.embedded.categories import stamp_label
from react.embedded.sources import EMOJI, SOURCES, TUXPAINT, fetch, iter_deb_files, iter_tgz_files
from react.errors import ReactError
from react.images import load_rgb
from react.progress import progress
from react.schemas import (
    CLASSES_FILE,
    CORPUS_MANIFEST,
    CORPUS_SCHEMA,
    TEMPLATES_FILE,
    atomic_dir,
    write_parquet,
    write_text,
)

CORPUS_VERSION = "embedded-v3"
# Placeholder web location. ".invalid" never resolves (RFC 2606), so nothing
# can leave the machine; `react download` rebases it onto a loopback server.
URL_BASE = "http://corpus.react.invalid/"
MAX_SIDE = 256
DOWNSTREAM_FRACTION = 0.5
PRETRAINING_STRIDE = 4
# Prompts for the embedded task. Measured on the demo base: these six score
# 21.7 % top-1 against 21.2 % for CLIP's 80 ImageNet templates, at a fraction
# of the text-encoding time on a CPU.
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.",
             "a drawing of a {}.", "a close-up photo of a {}.")
STAMP_PREFIX = "usr/share/tuxpaint/stamps/"


@dataclass
class Item:
    key: str
    caption: str
    source: str
    license: str
    category: str
    label: str | None
    raw: bytes = field(repr=False)
    sha256: str = ""


def _stable_hash(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()


def _caption_from_name(stem: str) -> str:
    words = stem.replace("_", " ").replace("-", " ").strip()
    return f"A {words}." if words else ""


def _stamp_caption(txt: bytes | None, stem: str) -> str:
    if txt:
        for line in txt.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if line and "=" not in line.split(" ")[0]:
                return line
            if line:
                break  # first line is a translation: no English text
    return _caption_from_name(stem)


def read_stamps(deb: Path) -> list[Item]:
    files = dict(iter_deb_files(deb, STAMP_PREFIX, (".png", ".txt")))
    items = []
    for rel, raw in sorted(files.items()):
        if not rel.endswith(".png") or rel.startswith("symbols/"):
            continue
        stem = rel[: -len(".png")]
        folder = stem.rsplit("/", 1)[0] if "/" in stem else ""
        caption = _stamp_caption(files.get(stem + ".txt"), stem.rsplit("/", 1)[-1])
        items.append(
            Item(key="stamp-" + _stable_hash(TUXPAINT.name, rel)[:12], caption=caption, source=TUXPAINT.name,
                 license=TUXPAINT.license, category=folder, label=stamp_label(folder), raw=raw)
        )
    return items


def read_emoji(tgz: Path) -> list[Item]:
    meta = dict(iter_tgz_files(tgz, {"emoji.json"}, prefix="package/"))
    if "emoji.json" not in meta:
        raise ReactError(f"{tgz}: emoji.json missing")
    entries = [e for e in json.loads(meta["emoji.json"]) if e.get("has_img_google") and e.get("category") != "Component"]
    wanted = {f"img/google/64/{e['image']}": e for e in entries}
    items = []
    for rel, raw in sorted(iter_tgz_files(tgz, set(wanted), prefix="package/")):
        e = wanted[rel]
        name = (e.get("name") or e["short_name"].replace("_", " ")).lower()
        items.append(
            Item(key="emoji-" + _stable_hash(EMOJI.name, e["unified"])[:12], caption=f"{name} emoji",
                 source=EMOJI.name, license=EMOJI.license, category=f"{e['category']}/{e['subcategory']}",
                 label=None, raw=raw)
        )
    return items


def _subsample(items: list[Item], fraction: float) -> list[Item]:
    if fraction >= 1.0:
        return items
    by_cat: dict[str, list[Item]] = {}
    for it in items:
        by_cat.setdefault(it.category, []).append(it)
    kept = []
    for group in by_cat.values():
        group.sort(key=lambda it: _stable_hash("subsample", it.key))
        kept += group[: max(1, round(len(group) * fraction))]
    return sorted(kept, key=lambda it: it.key)


def dedupe(items: list[Item]) -> list[Item]:
    """Byte-identical images appear once (the first by key): a duplicate could
    otherwise sit on both sides of the downstream split."""
    seen: set[str] = set()
    out = []
    for it in sorted(items, key=lambda it: it.key):
        it.sha256 = hashlib.sha256(it.raw).hexdigest()
        if it.sha256 not in seen:
            seen.add(it.sha256)
            out.append(it)
    return out


def split(items: list[Item], seed: int = 0, stride: int | None = None) -> dict[str, list[Item]]:
    """Deterministic split; see the module docstring. ``stride``: one web stamp in
    ``stride`` of each folder is pretraining material (0: none is; None: PRETRAINING_STRIDE)."""
    stride = PRETRAINING_STRIDE if stride is None else stride
    order = lambda it: _stable_hash(str(seed), it.key)  # noqa: E731
    downstream: list[Item] = []
    web: list[Item] = []
    by_label: dict[str, list[Item]] = {}
    for it in items:
        if it.label is not None:
            by_label.setdefault(it.label, []).append(it)
        else:
            web.append(it)
    for group in by_label.values():
        group.sort(key=order)
        n_test = round(len(group) * DOWNSTREAM_FRACTION) if len(group) > 1 else 0
        downstream += group[:n_test]
        web += group[n_test:]
    # One stamp in PRETRAINING_STRIDE of each folder goes to pretraining; the
    # rest is knowledge only the retrieval corpus holds, as LAION holds far
    # more than any one model was trained on. With half (corpus v2) the base
    # had already seen most of what retrieval could bring back, and
    # customization gained nothing measurable (docs/customize.md, "How it got there").
    pretraining: list[Item] = []
    by_cat: dict[str, list[Item]] = {}
    for it in web:
        if it.source == EMOJI.name:
            pretraining.append(it)
        else:
            by_cat.setdefault(it.category, []).append(it)
    for group in by_cat.values():
        group.sort(key=order)
        pretraining += group[::stride] if stride else []
    key = lambda it: it.key  # noqa: E731
    return {"pretraining": sorted(pretraining, key=key), "retrieval": sorted(web, key=key),
            "downstream": sorted(downstream, key=key)}


def _write_image(item: Item, root: Path, keep_cutout: bool) -> str:
    rel = f"images/{item.key}.jpg"
    image = load_rgb(item.raw)
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    image.save(root / rel, format="JPEG", quality=95)
    if keep_cutout:  # alpha kept for composing detection/segmentation scenes
        cut = Image.open(io.BytesIO(item.raw)).convert("RGBA")
        cut.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        cut.save(root / f"cutouts/{item.key}.png")
    return rel


def _table(items: list[Item], paths: dict[str, str]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"key": it.key, "url": URL_BASE + paths[it.key], "caption": it.caption, "image_path": paths[it.key],
             "source": it.source, "license": it.license, "category": it.category, "label": it.label,
             "sha256": it.sha256}
            for it in items
        ],
        schema=CORPUS_SCHEMA,
    )


def corpus_dir(fraction: float = 1.0, seed: int = 0, root: Path | None = None,
               stride: int | None = None) -> Path:
    name = (CORPUS_VERSION + (f"-f{fraction:g}" if fraction < 1 else "") + (f"-s{seed}" if seed else "")
            + (f"-p{stride}" if stride not in (None, PRETRAINING_STRIDE) else ""))
    return (root or cache_dir() / "corpus") / name


def build_embedded_corpus(out: Path, sources_dir: Path, fraction: float = 1.0, seed: int = 0,
                          stride: int | None = None) -> Path:
    """Fetch, convert and split; the corpus appears at ``out`` only when complete."""
    if not 0 < fraction <= 1:
        raise ReactError(f"--fraction must be in (0, 1], got {fraction}")
    stride = PRETRAINING_STRIDE if stride is None else stride
    if stride < 0:
        raise ReactError(f"--pretraining-stride must be >= 0, got {stride}")
    started = time.time()
    deb, tgz = (fetch(s, sources_dir) for s in (TUXPAINT, EMOJI))
    items = dedupe(_subsample(read_stamps(deb), fraction) + _subsample(read_emoji(tgz), fraction))
    parts = split(items, seed, stride)
    check_disjoint(parts)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "cutouts").mkdir()
        test_keys = {it.key for it in parts["downstream"]}
        unique = {it.key: it for part in parts.values() for it in part}
        paths = {}
        with progress() as bar:
            task = bar.add_task("converting images", total=len(unique), unit="img")
            for key, it in unique.items():
                paths[key] = _write_image(it, tmp, keep_cutout=key in test_keys)
                bar.advance(task)
        for name, part in parts.items():
            write_parquet(_table(part, paths), tmp / f"{name}.parquet")
        classes = sorted({it.label for it in parts["downstream"]})
        write_text(tmp / CLASSES_FILE, "\n".join(classes) + "\n")
        write_text(tmp / TEMPLATES_FILE, "\n".join(TEMPLATES) + "\n")
        manifest = {
            "version": CORPUS_VERSION, "seed": seed, "fraction": fraction, "pretraining_stride": stride,
            "counts": {name: len(part) for name, part in parts.items()},
            "downstream_classes": len(classes),
            "sources": [{"name": s.name, "registry": s.registry, "package": s.package, "version": s.version,
                         "sha256": s.sha256, "license": s.license, "origin": s.homepage} for s in SOURCES],
            "url_base": URL_BASE, "build_seconds": round(time.time() - started, 1),
        }
        write_text(tmp / CORPUS_MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return out


def check_disjoint(parts: dict[str, list[Item]]) -> None:
    """Downstream shares no key and no image bytes with pretraining or retrieval."""
    test = parts["downstream"]
    for other in ("pretraining", "retrieval"):
        keys = {it.key for it in parts[other]} & {it.key for it in test}
        shas = {it.sha256 for it in parts[other]} & {it.sha256 for it in test}
        if keys or shas:
            raise ReactError(f"downstream leaks into {other}: {len(keys)} keys, {len(shas)} images")


def fetch_embedded(cache: Path | None = None, fraction: float = 1.0, seed: int = 0, force: bool = False,
                   stride: int | None = None) -> Path:
    """The embedded corpus directory, built on first use and cached."""
    base = Path(cache) if cache else cache_dir()
    out = corpus_dir(fraction, seed, base / "corpus", stride)
    manifest = out / CORPUS_MANIFEST
    if not force and manifest.is_file():
        try:
            if json.loads(manifest.read_text()).get("version") == CORPUS_VERSION:
                return out
        except json.JSONDecodeError:
            pass
    return build_embedded_corpus(out, base / "sources", fraction, seed, stride)
