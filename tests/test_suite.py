"""The evaluation suite: its built tasks (held-out-vendor emoji, stamps on scenes, clip art),
the ELEVATER-style report's wins/ties/losses, and ``react eval suite`` end to end."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from downstream.data.suite_tasks import (
    EMOJI_CLASSES,
    OPENCLIPART_PREFIX,
    SCENE_SIZE,
    build_emoji_task,
    build_openclipart_task,
    build_scenes_task,
)
from downstream.report.intervals import mean_gain_interval
from downstream.report.suite import compare, render_markdown, verdict, write_report
from react.datasets import build_classification_dataset
from react.embedded.sources import TWEMOJI, sha256_file
from react.errors import ReactError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
STAMP_CLASSES = ["disc", "square"]


def _png(colour: tuple[int, int, int], shape: str = "disc", size: int = 48) -> bytes:
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    (draw.ellipse if shape == "disc" else draw.rectangle)([4, 4, size - 5, size - 5], fill=(*colour, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _corpus(root: Path, per_class: int = 5, web_shas: tuple[str, ...] = ()) -> Path:
    """A small embedded corpus: held-out stamps (images + cut-outs) and web parts."""
    (root / "cutouts").mkdir(parents=True)
    (root / "images").mkdir()
    rows = []
    for c, name in enumerate(STAMP_CLASSES):
        for i in range(per_class):
            key = f"stamp-{name}-{i}"
            raw = _png((40 * i, 200 - 100 * c, 90), name)
            (root / "cutouts" / f"{key}.png").write_bytes(raw)
            Image.open(io.BytesIO(raw)).convert("RGB").save(root / "images" / f"{key}.jpg")
            rows.append({"key": key, "label": name, "image_path": f"images/{key}.jpg"})
    pq.write_table(pa.Table.from_pylist(rows), root / "downstream.parquet")
    (root / "downstream_classes.txt").write_text("\n".join(STAMP_CLASSES) + "\n")
    (root / "downstream_templates.txt").write_text("a photo of a {}.\n")
    web = [{"key": f"emoji-{i}", "sha256": sha} for i, sha in enumerate(web_shas or ("0" * 64,))]
    for part in ("pretraining", "retrieval"):
        pq.write_table(pa.Table.from_pylist(web), root / f"{part}.parquet")
    return root


# (unified, name, subcategory, has a Twitter image): as emoji-datasource's emoji.json has them
EMOJI = [("1F436", "DOG FACE", "animal-mammal", True), ("1F408", "CAT", "animal-mammal", True),
         ("1F404", "COW", "animal-mammal", True), ("1F426", "BIRD", "animal-bird", True),
         ("1F427", "PENGUIN", "animal-bird", True), ("1F41D", "HONEYBEE", "animal-bug", True),
         ("1F41C", "ANT", "animal-bug", True), ("1F600", "GRINNING FACE", "face-smiling", True),
         ("1F98E", "LIZARD", "animal-reptile", False)]


def _twemoji_tgz(path: Path) -> Path:
    entries, files = [], {}
    for n, (unified, name, sub, has_twitter) in enumerate(EMOJI):
        image = f"{unified.lower()}.png"
        entries.append({"unified": unified, "name": name, "short_name": name.lower().replace(" ", "_"),
                        "image": image, "category": "x", "subcategory": sub, "has_img_google": True,
                        "has_img_twitter": has_twitter})
        files[f"package/img/twitter/64/{image}"] = _png((20 * n, 100, 255 - 20 * n))
    files["package/emoji.json"] = json.dumps(entries).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _halves(task: Path) -> tuple:
    return build_classification_dataset(task, "val"), build_classification_dataset(task, "test")


def test_emoji_task_builds_with_disjoint_halves_and_right_labels(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    task = build_emoji_task(corpus, _twemoji_tgz(tmp_path / "tw.tgz"), tmp_path / "emoji")
    val, test = _halves(task)
    assert set(val.paths).isdisjoint(test.paths) and len(val) + len(test) == 7  # no smiley, no Google-only lizard
    assert val.classnames == ["mammal", "bird", "insect"]  # EMOJI_CLASSES order, present groups only
    table = pq.read_table(task / "downstream.parquet").to_pylist()
    dog = next(r for r in table if r["caption"] == "dog face emoji")  # hand-checked: U+1F436 is a mammal
    assert dog["label"] == "mammal"
    image = Image.open(task / dog["image_path"])
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # flattened on white
    assert json.loads((task / "task.json").read_text())["per_class"] == {"mammal": 3, "bird": 2, "insect": 2}


def test_emoji_task_refuses_a_vendor_image_the_corpus_holds(tmp_path):
    tgz = _twemoji_tgz(tmp_path / "tw.tgz")
    with tarfile.open(tgz) as tar:
        raw = tar.extractfile("package/img/twitter/64/1f41c.png").read()
    corpus = _corpus(tmp_path / "corpus", web_shas=(hashlib.sha256(raw).hexdigest(),))
    with pytest.raises(ReactError, match="1f41c.png is byte-identical to a corpus image"):
        build_emoji_task(corpus, tgz, tmp_path / "emoji")
    assert not (tmp_path / "emoji").exists()  # nothing half-built is left


def _real_twemoji() -> Path | None:
    from react.config import cache_dir

    path = cache_dir() / "sources" / TWEMOJI.filename
    return path if path.is_file() and sha256_file(path) == TWEMOJI.sha256 else None


@pytest.mark.skipif(_real_twemoji() is None, reason="the Twemoji package is not in the cache (react eval suite fetches it)")
def test_real_twemoji_groups(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    task = build_emoji_task(corpus, _real_twemoji(), tmp_path / "emoji")
    rows = {r["caption"]: r["label"] for r in pq.read_table(task / "downstream.parquet").to_pylist()}
    recipe = json.loads((task / "task.json").read_text())
    assert list(recipe["per_class"]) == list(EMOJI_CLASSES.values()) and max(recipe["per_class"].values()) == 24
    # hand-checked items that the stable draw keeps (per-class cap of 24)
    assert rows.get("penguin emoji") == "bird" and rows.get("ant emoji") == "insect"
    assert rows.get("sailboat emoji") == "boat" and rows.get("cloud emoji") == "weather"


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    """A Debian package as apt ships one: an ar archive whose data.tar.xz holds ``files``."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    members = {"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": data.getvalue()}
    with open(path, "wb") as fh:
        fh.write(b"!<arch>\n")
        for name, raw in members.items():
            fh.write(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(raw):<10}`\n".encode())
            fh.write(raw + (b"\n" if len(raw) % 2 else b""))
    return path


def _canvas(colour: tuple[int, int, int], shape: str) -> bytes:
    """A drawing small in the middle of a wide transparent canvas, as clip art often is."""
    im = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    im.paste(Image.open(io.BytesIO(_png(colour, shape, 40))), (80, 30))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_openclipart_task_keeps_one_drawing_per_family_in_the_task_folders(tmp_path):
    files = {
        "animals/mammals/dog_ganson.png": _canvas((200, 0, 0), "disc"),
        "animals/mammals/dog_ganson_bw.png": _canvas((90, 90, 90), "disc"),  # same drawing, grey
        "animals/mammals/cats/cat_01.png": _canvas((0, 200, 0), "disc"),  # a subfolder: still a mammal
        "animals/mammals/cats/cat_02.png": _canvas((0, 150, 0), "disc"),  # a numbered sibling
        "animals/birds/owl.png": _canvas((0, 0, 200), "square"),
        "tools/hammer.png": _canvas((100, 50, 0), "square"),
        "tools/weapons/sword.png": _canvas((10, 10, 10), "square"),  # not a tool in the task's sense
        "computer/icon.png": _canvas((1, 2, 3), "square"),  # no task folder
    }
    deb = _deb(tmp_path / "oc.deb", {OPENCLIPART_PREFIX + rel: raw for rel, raw in files.items()})
    task = build_openclipart_task(_corpus(tmp_path / "corpus"), deb, tmp_path / "clipart")
    recipe = json.loads((task / "task.json").read_text())
    assert recipe["per_class"] == {"mammal": 2, "bird": 1, "tool": 1}
    captions = sorted(r["caption"] for r in pq.read_table(task / "downstream.parquet").to_pylist())
    assert captions == ["cat", "dog ganson", "hammer", "owl"]  # families, their first member
    val, test = _halves(task)
    assert set(val.paths).isdisjoint(test.paths) and len(val) + len(test) == 4
    assert val.classnames == ["mammal", "bird", "tool"]
    image = Image.open(val.paths[0])
    assert image.size == (32, 32)  # cropped from the 200 x 100 canvas to the 32-px shape drawn in it


def test_openclipart_task_drops_a_file_the_corpus_holds(tmp_path):
    raw = _canvas((200, 0, 0), "disc")
    deb = _deb(tmp_path / "oc.deb", {OPENCLIPART_PREFIX + "animals/birds/a.png": raw,
                                     OPENCLIPART_PREFIX + "animals/birds/b.png": _canvas((0, 0, 9), "square")})
    corpus = _corpus(tmp_path / "corpus", web_shas=(hashlib.sha256(raw).hexdigest(),))
    recipe = json.loads((build_openclipart_task(corpus, deb, tmp_path / "clipart") / "task.json").read_text())
    assert recipe["byte_identical_dropped"] == 1 and recipe["images"] == 1


def test_scenes_task_keeps_each_stamp_in_its_half(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    task = build_scenes_task(corpus, tmp_path / "scenes")
    val, test = _halves(task)
    stamps_val, stamps_test = _halves(corpus)
    assert set(val.paths).isdisjoint(test.paths) and len(val) + len(test) == 10
    # the same keys give the same halves: a scene is in val exactly when its stamp is
    assert [p.stem for p in val.paths] == [p.stem for p in stamps_val.paths]
    assert [p.stem for p in test.paths] == [p.stem for p in stamps_test.paths]
    assert val.labels == stamps_val.labels and val.classnames == STAMP_CLASSES
    scene = np.asarray(Image.open(task / "images" / "stamp-square-3.png"))
    assert scene.shape == (SCENE_SIZE, SCENE_SIZE, 3)
    assert (scene.min(axis=2) > 180).mean() > 0.4  # mostly the pale textured background ...
    assert (scene == 255).all(axis=2).mean() < 0.01  # ... not the white the stamp task shows
    # the pasted square is there: pixels of its colour (120, 100, 90), not the pale background
    assert (np.abs(scene.astype(int) - (120, 100, 90)).sum(axis=2) < 30).sum() > 100
    table = {r["key"]: r["label"] for r in pq.read_table(task / "downstream.parquet").to_pylist()}
    assert table["stamp-square-3"] == "square"
    again = build_scenes_task(corpus, tmp_path / "again")  # deterministic
    assert (again / "images/stamp-disc-1.png").read_bytes() == (task / "images/stamp-disc-1.png").read_bytes()


def test_scenes_task_refuses_a_held_out_stamp_in_retrieval(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    pq.write_table(pa.Table.from_pylist([{"key": "stamp-disc-2", "sha256": "1" * 64}]), corpus / "retrieval.parquet")
    with pytest.raises(ReactError, match="stamp-disc-2 is also in pretraining or retrieval"):
        build_scenes_task(corpus, tmp_path / "scenes")


def _result(answers: dict[str, tuple[list[int], list[int]]], model: str, split: str = "val") -> dict:
    """A suite result with given per-image labels and predictions per task."""
    tasks = {t: {"metrics": {"top1": float(np.mean(np.equal(lab, pred))), "num_classes": 2},
                 "per_image": {"label": lab, "prediction": pred}} for t, (lab, pred) in answers.items()}
    return {"model": model, "split": split, "tasks": tasks}


def test_report_counts_wins_ties_and_losses():
    labels = [0, 1] * 30
    right, wrong = labels, [1 - x for x in labels]
    half = right[:30] + wrong[30:]
    base = _result({"up": (labels, half), "same": (labels, half), "down": (labels, half)}, "b")
    runs = [_result({"up": (labels, right), "same": (labels, half), "down": (labels, wrong)}, f"c{i}")
            for i in range(2)]
    report = compare(base, runs, "base", "gated")
    assert {t: r["verdict"] for t, r in report["tasks"].items()} == {"up": "win", "same": "tie", "down": "loss"}
    assert (report["wins"], report["ties"], report["losses"]) == (1, 1, 1)
    assert report["tasks"]["up"]["gain"]["mean"] == 0.5 and report["tasks"]["down"]["gain"]["mean"] == -0.5
    assert report["tasks"]["same"]["gain"]["ci95"] == [0.0, 0.0]
    assert report["average"]["gain"]["mean"] == 0.0 and report["average"]["verdict"] == "tie"
    assert report["average"]["base_top1"] == 0.5 and report["average"]["customized_top1"] == 0.5
    md = render_markdown(report)
    assert "| up | 60 | 2 | 50.0 % | 100.0 % | +50.0 |" in md and "**1 / 1 / 1**" in md


def test_verdict_and_average_interval():
    assert [verdict({"ci95": ci}) for ci in ([0.01, 0.2], [-0.1, 0.0], [-0.3, -0.01])] == ["win", "tie", "loss"]
    rng = np.random.default_rng(0)
    a, b = rng.random(400) < 0.7, rng.random(400) < 0.5
    one = mean_gain_interval({"t": ([a], [b])})
    assert one["mean"] == round(a.mean() - b.mean(), 4) and one["ci95"][0] < one["mean"] < one["ci95"][1]
    # two tasks weigh the same whatever their sizes: a +20-point task and a 0-point task average to about +10
    two = mean_gain_interval({"t": ([a], [b]), "flat": ([b[:50]], [b[:50]])})
    assert two["mean"] == round((a.mean() - b.mean()) / 2, 4)
    with pytest.raises(ValueError, match="different numbers of models"):
        mean_gain_interval({"t": ([a, a], [b]), "u": ([a], [b])})


def test_report_refuses_results_on_other_images_or_splits(tmp_path):
    base = _result({"t": ([0, 1, 0], [0, 1, 1])}, "b")
    with pytest.raises(ReactError, match="scored on other images"):
        compare(base, [_result({"t": ([1, 1, 0], [0, 1, 1])}, "c")])
    with pytest.raises(ReactError, match="split 'test', the base on 'val'"):
        compare(base, [_result({"t": ([0, 1, 0], [0, 1, 1])}, "c", split="test")])
    report = compare(base, [_result({"t": ([0, 1, 0], [0, 1, 0])}, "c")])
    json_path, md_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["tasks"]["t"]["customized_top1"] == 1.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["suite_report.json", "suite_report.md"]


def test_cli_suite_end_to_end(tiny_model_dir, tmp_path, capsys):
    from tests.cli_helpers import eval_parser

    corpus = _corpus(tmp_path / "corpus")
    out = tmp_path / "suite"
    args = eval_parser().parse_args(
        ["eval", "suite", "--model", str(tiny_model_dir), "--customized", str(tiny_model_dir), str(tiny_model_dir),
         "--corpus", str(corpus), "--tasks", "stamps", "stamp-scenes", "--split", "val", "--device", "cpu",
         "--out", str(out)])
    assert args.func(args) == 0
    report = json.loads((out / "suite_report.json").read_text())
    assert list(report["tasks"]) == ["stamps", "stamp-scenes"] and report["split"] == "val"
    # the same weights on both sides: every gain is exactly 0, so every task ties
    assert (report["wins"], report["ties"], report["losses"]) == (0, 2, 0)
    assert report["tasks"]["stamps"]["images"] == 6  # val: 3 of the 5 stamps per class
    assert sorted(p.name for p in out.iterdir()) == ["base.json", "customized-0.json", "customized-1.json",
                                                     "suite_report.json", "suite_report.md"]
    assert (corpus / "suite" / "stamp-scenes" / "task.json").is_file()  # cached beside the corpus
    assert "Wins / ties / losses" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "stamps", "bogus"], "unknown suite task 'bogus'"),
    (["--customized", "{tmp}/nowhere"], "--customized {tmp}/nowhere: not a model or run directory"),
    (["--customized", "{tmp}"], "--customized needs --out"),
    (["--label", "a/b"], "--label 'a/b': use letters"),
    (["--corpus", "{tmp}"], "not an embedded corpus directory"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_cli_errors_are_one_line(tmp_path, argv, message):
    corpus = _corpus(tmp_path / "corpus")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    base = ["--corpus", str(corpus)] if "--corpus" not in argv else []
    child = subprocess.run([sys.executable, "-m", "react", "eval", "suite", "--model", "unused", *base, *argv],
                           capture_output=True, text=True, cwd=tmp_path)
    assert child.returncode == 2
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and message.replace("{tmp}", str(tmp_path)) in lines[0], child.stderr


def test_demo_suite_step_runs_once_for_the_same_weights(tiny_model_dir, tmp_path):
    from demo.transfer import evaluation_suite
    from react.cli import run

    corpus = _corpus(tmp_path / "corpus")
    (corpus / "suite").mkdir()
    calls = []

    def step(name: str, argv: list[str]) -> None:
        calls.append(name)
        # the demo's own corpus has all three tasks; this one is scored on two (no Twemoji package here)
        assert run(argv + ["--tasks", "stamps", "stamp-scenes", "--device", "cpu"]) == 0

    summary = evaluation_suite(step, tmp_path / "demo", corpus, tiny_model_dir, [tiny_model_dir], split="val")
    assert calls == ["eval suite"] and summary["split"] == "val"
    assert (summary["wins"], summary["ties"], summary["losses"]) == (0, 2, 0)
    assert summary["average"]["gain_ci95"] == [0.0, 0.0] and set(summary["tasks"]) == {"stamps", "stamp-scenes"}
    evaluation_suite(step, tmp_path / "demo", corpus, tiny_model_dir, [tiny_model_dir], split="val")
    assert calls == ["eval suite"]  # reused
    evaluation_suite(step, tmp_path / "demo", corpus, tiny_model_dir, [tiny_model_dir], split="test")
    assert calls == ["eval suite"] * 2  # another split is measured again
