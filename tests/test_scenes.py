"""Composed scenes: determinism, exact masks/boxes under occlusion, caching, bad corpora."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from downstream.data.scenes import build_scenes, ensure_scenes, is_embedded_corpus
from react.errors import ReactError

CLASSES = ["disc", "square", "bar"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


def _stamp(kind: str, colour: tuple[int, int, int]) -> Image.Image:
    im = Image.new("RGBA", (60, 48), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    if kind == "disc":
        draw.ellipse([4, 2, 55, 45], fill=(*colour, 255))
    elif kind == "square":
        draw.rectangle([10, 5, 49, 44], fill=(*colour, 255))
    else:
        draw.rectangle([2, 18, 57, 28], fill=(*colour, 255))
    return im


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "cutouts").mkdir(parents=True)
    keys, labels = [], []
    for i, (kind, colour) in enumerate([("disc", (200, 30, 30)), ("square", (30, 200, 30)),
                                        ("bar", (30, 30, 200)), ("disc", (220, 220, 30))]):
        key = f"stamp-{i}"
        _stamp(kind, colour).save(root / "cutouts" / f"{key}.png")
        keys.append(key)
        labels.append(kind)
    pq.write_table(pa.table({"key": keys, "label": labels}), root / "downstream.parquet")
    (root / "downstream_classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != "scenes.json"}  # scenes.json names the source path only


def test_same_seed_gives_identical_bytes(corpus: Path, tmp_path: Path) -> None:
    a = build_scenes(corpus, tmp_path / "a", n=6, seed=3, size=96)
    b = build_scenes(corpus, tmp_path / "b", n=6, seed=3, size=96)
    c = build_scenes(corpus, tmp_path / "c", n=6, seed=4, size=96)
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)
    # Scene i depends only on (seed, i): a shorter build is a prefix.
    d = build_scenes(corpus, tmp_path / "d", n=2, seed=3, size=96)
    assert (d / "images/scene_00001.png").read_bytes() == (a / "images/scene_00001.png").read_bytes()


def test_masks_boxes_and_classes_agree(corpus: Path, tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    out = build_scenes(corpus, tmp_path / "s", n=12, seed=0, size=96)
    coco = json.loads((out / "instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == CLASSES
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert (out / "classes.txt").read_text().splitlines() == ["background", *CLASSES]
    assert len(coco["images"]) == 12 and coco["annotations"]
    for image in coco["images"]:
        label_map = np.asarray(Image.open(out / "masks" / image["file_name"]))
        assert Image.open(out / "masks" / image["file_name"]).mode == "L"
        assert Image.open(out / "images" / image["file_name"]).size == (96, 96)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert 1 <= len(anns) <= 4
        rebuilt = np.zeros_like(label_map)
        for ann in anns:
            visible = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert not rebuilt[visible].any(), "visible masks of two objects overlap"
            rebuilt[visible] = ann["category_id"]
            ys, xs = np.nonzero(visible)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == visible.sum() > 0
            assert ann["iscrowd"] == 0
        np.testing.assert_array_equal(rebuilt, label_map)


def test_object_pixels_show_the_stamp_colour(corpus: Path, tmp_path: Path) -> None:
    # The squares are pure green and opaque: well inside a visible square mask the
    # image must be that green, i.e. the mask marks the pixels actually shown.
    out = build_scenes(corpus, tmp_path / "s", n=12, seed=1, size=96)
    seen = 0
    for path in sorted((out / "masks").glob("*.png")):
        label_map = np.asarray(Image.open(path))
        inner = label_map == CLASSES.index("square") + 1
        from scipy.ndimage import binary_erosion

        inner = binary_erosion(inner, iterations=2)
        if inner.any():
            image = np.asarray(Image.open(out / "images" / path.name)).astype(int)
            assert np.abs(image[inner] - [30, 200, 30]).max() <= 2
            seen += 1
    assert seen


def test_ensure_scenes_caches(corpus: Path) -> None:
    assert is_embedded_corpus(corpus)
    first = ensure_scenes(corpus, n=3, seed=0)
    stamp = (first / "scenes.json").stat().st_mtime_ns
    again = ensure_scenes(corpus, n=3, seed=0)
    assert again == first and (again / "scenes.json").stat().st_mtime_ns == stamp
    assert ensure_scenes(corpus, n=4, seed=0) != first


def test_scenes_keep_to_their_half(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A val scene holds only val stamps and a test scene only test stamps (the halves of
    react.datasets.embedded_halves), so a choice made on val scenes never saw a test stamp."""
    from react.datasets import SEALED_ENV, embedded_halves, seal_splits

    keys = [f"stamp-{i}" for i in range(4)]
    halves = dict(zip(keys, embedded_halves(keys, ["disc", "square", "bar", "disc"])))
    assert sorted(halves.values()) == ["test", "val", "val", "val"]  # one disc each side; square and bar: val
    test_key = next(k for k, h in halves.items() if h == "test")
    for split in ("val", "test"):
        out = ensure_scenes(corpus, n=6, seed=0, split=split)
        recipe = json.loads((out / "scenes.json").read_text())
        assert recipe["split"] == split and recipe["stamps"] == (1 if split == "test" else 3)
        found = {a["category_id"] for a in json.loads((out / "instances.json").read_text())["annotations"]}
        assert found == ({1} if split == "test" else {1, 2, 3}), (split, found)
    assert test_key in {"stamp-0", "stamp-3"}
    monkeypatch.setenv(SEALED_ENV, "")  # restored after the test, whatever seal_splits writes
    seal_splits("test")
    with pytest.raises(ReactError, match="'test' is sealed"):
        ensure_scenes(corpus, n=6, seed=0, split="test")
    assert ensure_scenes(corpus, n=6, seed=0, split="val").is_dir()
    with pytest.raises(ReactError, match="splits 'val' and 'test'"):
        ensure_scenes(corpus, n=6, seed=0, split="train")


def test_bad_corpora(corpus: Path, tmp_path: Path) -> None:
    (corpus / "cutouts" / "stamp-2.png").unlink()
    with pytest.raises(ReactError, match="missing cut-out.*stamp-2"):
        build_scenes(corpus, tmp_path / "x", n=1)
    (corpus / "downstream_classes.txt").write_text("disc\n")
    with pytest.raises(ReactError, match="'square'.*not in downstream_classes.txt"):
        build_scenes(corpus, tmp_path / "x", n=1)
    with pytest.raises(ReactError, match="no downstream_classes.txt"):
        build_scenes(tmp_path, tmp_path / "x", n=1)
    assert not (tmp_path / "x").exists()


def test_real_corpus_scenes(tmp_path: Path) -> None:
    from react.embedded.corpus import fetch_embedded

    # the quarter-size embedded corpus (cached; the end-to-end slice uses it too)
    out = build_scenes(fetch_embedded(fraction=0.25), tmp_path / "real", n=3, seed=0)
    coco = json.loads((out / "instances.json").read_text())
    assert len(coco["categories"]) == 20 and len(coco["images"]) == 3
    assert Image.open(out / "images" / "scene_00000.png").size == (320, 320)
