"""``react report``: hand-built result files of four models and several tasks,
rendered once through the real command; tables and gains checked against
hand-computed numbers, figures opened as images, the HTML checked for any
external reference, and bad input checked for one-line errors."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from downstream.report.results import collect, fewshot_curve, load_result, load_subset_similarities, parse_inputs
from react.cli import run
from react.errors import ReactError
from react.schemas import SUBSET_SCHEMA, SUBSET_TASK_KEY


def _result(task: str, model: str, metrics: dict, per_class: dict | None = None, dataset: str = "toy",
            **extra) -> dict:
    return {"task": task, "model": model, "dataset": dataset, "metrics": metrics, "per_class": per_class or {},
            **extra}


def _zs(top1, top5, mpcr, per_class, dataset="toy"):
    return _result("zeroshot", "", {"top1": top1, "top5": top5, "mean_per_class_recall": mpcr,
                                    "num_images": 10, "num_classes": 3}, per_class, dataset=dataset)


def _lp(top1, mpcr, curve):
    fewshot = [{"shots": s, "seeds": [0, 1, 2], "top1_mean": m, "top1_std": sd,
                "mean_per_class_recall_mean": m, "mean_per_class_recall_std": sd} for s, m, sd in curve]
    return _result("linear-probe", "", {"top1": top1, "mean_per_class_recall": mpcr}, {"a": top1},
                   fewshot=fewshot)


def _ret(r1, r5, r10):
    return _result("retrieval", "", {f"{d}_R@{k}": v for d in ("image_to_text", "text_to_image")
                                     for k, v in ((1, r1), (5, r5), (10, r10))})


# Four models; "random" has no retrieval/linear-probe/detection result (-> "—" cells).
RESULTS = {
    "base": [_zs(0.5, 0.8, 0.45, {"a": 0.5, "b": 0.25, "c": 0.6}),
             _zs(0.3, 0.7, 0.3, {"x": 0.3, "y": 0.3}, dataset="toy2"),
             _lp(0.6, 0.55, [(1, 0.3, 0.05), (5, 0.5, 0.02)]),
             _ret(0.2, 0.5, 0.7),
             _result("detection", "", {"AP50": 0.4, "AP": 0.2}, {"a": 0.4, "b": 0.4}),
             _result("segmentation", "", {"mIoU": 0.25, "pixel_accuracy": 0.7}, {"a": 0.25}),
             _result("vqa", "", {"accuracy": 0.3, "num_questions": 5, "note": "text"})],
    "gated": [_zs(0.6, 0.9, 0.5, {"a": 0.75, "b": 0.25, "c": 0.4}),
              _zs(0.4, 0.7, 0.4, {"x": 0.5, "y": 0.3}, dataset="toy2"),
              _lp(0.65, 0.6, [(1, 0.35, 0.04), (5, 0.52, 0.01)]),
              _ret(0.25, 0.5, 0.65),
              _result("detection", "", {"AP50": 0.5, "AP": 0.25}, {"a": 0.6, "b": 0.4}),
              _result("vqa", "", {"accuracy": 0.35, "num_questions": 5})],
    "locked": [_zs(0.55, 0.85, 0.5, {"a": 0.5, "b": 0.5, "c": 0.6})],
    "random": [_zs(0.45, 0.8, 0.4, {"a": 0.25, "b": 0.25, "c": 0.6})],
}


def _write_results(root: Path) -> list[Path]:
    paths = []
    for model, results in RESULTS.items():
        for i, result in enumerate(results):
            result = dict(result, model=f"out/{model}")
            path = root / f"{model}_{i}.json"
            path.write_text(json.dumps(result))
            paths.append(path)
    return paths


def _write_subset(path: Path) -> None:
    table = pa.table({"key": ["k0", "k1", "k2", "k3"], "url": ["u0", "u1", "u2", "u3"],
                      "caption": ["c0", "c1", "c2", "c3"], "similarity": [0.2, 0.25, 0.3, 0.22],
                      "classes": [["a"], ["a", "b"], ["b"], ["a"]]}, schema=SUBSET_SCHEMA)
    spec = {"spec": {"classes": ["a", "b", "c"]}}
    pq.write_table(table.replace_schema_metadata({SUBSET_TASK_KEY: json.dumps(spec)}), path)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    paths = _write_results(root)
    _write_subset(root / "subset.parquet")
    (root / "summary.json").write_text(json.dumps({
        "corpus": {"pretraining": 2086, "retrieval": 2223, "downstream": 217, "downstream_classes": 20},
        "subset": {"rows": 617, "unique_pairs": 758}, "timings_s": {"embed": 1.5, "retrieve": 6.5}}))
    labels = [p.stem.rsplit("_", 1)[0] for p in paths]
    argv = ["report", *map(str, paths), "--out", str(root / "out"), "--subset", str(root / "subset.parquet"),
            "--summary", str(root / "summary.json")]
    for label in labels:
        argv += ["--label", label]
    assert run(argv) == 0
    return root / "out"


def _tables(markdown: str) -> dict[str, dict[str, list[str]]]:
    """Table title (its **bold** line, else the section heading) -> first cell -> the other cells."""
    tables: dict[str, dict[str, list[str]]] = {}
    name, rows = "", []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
            continue
        if rows:
            tables[name] = {row[0]: row[1:] for row in [rows[0]] + rows[2:]}
            rows = []
        if line.startswith("## ") or line.startswith("**"):
            name = line.lstrip("#").strip().strip("*")
    return tables


def test_tables_and_gains(report):
    tables = _tables((report / "report.md").read_text())
    zs = tables["Zero-shot classification — toy"]
    assert zs["model"] == ["top-1 %", "top-5 %", "mean per-class recall %"]
    assert zs["base (base)"] == ["50.00", "80.00", "45.00"]
    assert zs["gated"] == ["60.00 (+10.00)", "90.00 (+10.00)", "50.00 (+5.00)"]
    assert zs["locked"] == ["55.00 (+5.00)", "85.00 (+5.00)", "50.00 (+5.00)"]
    assert zs["random"] == ["45.00 (-5.00)", "80.00 (+0.00)", "40.00 (-5.00)"]
    # Same task, other dataset: its own table.
    assert tables["Zero-shot classification — toy2"]["gated"][0] == "40.00 (+10.00)"
    lp = tables["Linear probe — toy"]
    assert lp["model"][-2:] == ["top-1 1-shot %", "top-1 5-shot %"]
    assert lp["gated"] == ["65.00 (+5.00)", "60.00 (+5.00)", "35.00 ± 4.00 (+5.00)", "52.00 ± 1.00 (+2.00)"]
    assert lp["random"] == ["—"] * 4
    ret = tables["Image-text retrieval — toy"]
    assert ret["gated"] == ["25.00 (+5.00)", "50.00 (+0.00)", "65.00 (-5.00)"] * 2
    assert ret["locked"] == ["—"] * 6
    assert tables["Zero-shot detection — toy"]["gated"] == ["50.00 (+10.00)", "25.00 (+5.00)"]
    assert tables["Zero-shot semantic segmentation — toy"]["gated"] == ["—", "—"]
    # Unknown task: its numeric metrics, fractions in %, counts raw without a gain column of their own.
    vqa = tables["vqa — toy"]
    assert vqa["model"] == ["accuracy %"]
    assert vqa["gated"] == ["35.00 (+5.00)"]
    # Per-class: base value, others' gains; sorted by the base, lowest first.
    per_class = tables["Per-class recall — Zero-shot classification, toy"]
    assert list(per_class)[1:4] == ["b", "a", "c"]
    assert per_class["a"] == ["50.00", "75.00 (+25.00)", "50.00 (+0.00)", "25.00 (-25.00)"]
    assert per_class["c"][1] == "40.00 (-20.00)"
    assert "Per-class IoU — Zero-shot semantic segmentation, toy" not in tables  # only the base has one


def test_summary_and_models(report):
    markdown = (report / "report.md").read_text()
    assert "corpus: 2,086 pretraining, 2,223 retrieval, 217 downstream, 20 downstream classes" in markdown
    assert "retrieved subset: 617 rows from 758 unique pairs" in markdown
    assert "timings: embed 1.5 s, retrieve 6.5 s (total 8.0 s)" in markdown
    models = _tables(markdown)["Models"]
    assert models["base (base)"][0] == "out/base"
    assert models["gated"][2] == "6"


def test_figures_are_valid_pngs_linked_from_markdown(report):
    markdown = (report / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert sorted(linked) == pngs
    # zeroshot x2 datasets, detection, linear-probe per-class + few-shot, the subset.
    assert {"zeroshot_toy_per_class_gain.png", "zeroshot_toy2_per_class_gain.png", "linear-probe_toy_fewshot.png",
            "detection_toy_per_class_gain.png", "subset_similarity.png"} <= set(pngs)
    for name in pngs:
        with Image.open(report / name) as image:
            image.verify()
        with Image.open(report / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            # Not a blank canvas: a drawn figure has many distinct colours.
            assert len(np.unique(np.asarray(image.convert("L")))) > 10


def test_html_is_self_contained(report):
    page = (report / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page, flags=re.I)
    assert refs and all(ref.startswith("data:image/png;base64,") for ref in refs)
    assert not re.search(r"https?://|<link|<script|url\(|@import", page, flags=re.I)
    # Each inlined image is exactly one of the PNGs written beside the Markdown.
    inlined = {base64.b64decode(ref.split(",", 1)[1]) for ref in refs}
    assert inlined == {p.read_bytes() for p in report.glob("*.png")}
    assert "60.00 (+10.00)" in page and "—" in page


def test_subset_similarities_by_class(tmp_path):
    _write_subset(tmp_path / "s.parquet")
    sims = load_subset_similarities(tmp_path / "s.parquet")
    assert list(sims) == ["a", "b", "c"]  # the spec's order, empty classes kept
    assert sorted(sims["a"].round(3)) == [0.2, 0.22, 0.25]
    assert sorted(sims["b"].round(3)) == [0.25, 0.3]
    assert len(sims["c"]) == 0


def test_labels_base_and_fewshot_from_flat_metrics(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b=c.json"  # "=" in a file name stays part of the path
    a.write_text(json.dumps(_result("linear-probe", "m1", {"top1": 0.5, "mean_per_class_recall": 0.5,
                                                           "top1_5shot": 0.3, "top1_5shot_std": 0.1,
                                                           "top1_1shot": 0.2})))
    b.write_text(json.dumps(_result("linear_probe", "m2", {"top1": 0.4, "mean_per_class_recall": 0.5})))
    parsed = parse_inputs([f"first={a}", str(b)], ["second"])
    assert parsed == [("first", a), ("second", b)]
    results = [load_result(p, label) for label, p in parsed]
    assert fewshot_curve(results[0]) == [(1, 0.2, 0.0), (5, 0.3, 0.1)]
    collection = collect(results, base="second")
    assert collection.labels == ["second", "first"]
    assert list(collection.groups) == [("linear-probe", "toy")]  # task spellings unified
    # Default labels are the results' model names; the first file is the base.
    assert collect([load_result(a), load_result(b)]).base == "m1"


def _fail(argv: list[str], capsys) -> str:
    assert run(["report", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(dict(_zs(0.5, 0.8, 0.4, {"a": 0.5}), model="m")))
    out = ["--out", str(tmp_path / "rep")]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json" in _fail([str(bad), *out], capsys) and "not valid JSON" in _fail([str(bad), *out], capsys)
    assert "missing.json" in _fail([str(tmp_path / "missing.json"), *out], capsys)
    bad.write_text(json.dumps({"task": "zeroshot", "model": "m", "metrics": {}}))
    err = _fail([str(bad), *out], capsys)
    assert "bad.json" in err and "dataset" in err and "per_class" in err
    bad.write_text(json.dumps(_result("zeroshot", "m", {"top1": 0.5, "top5": 0.8})))
    assert "mean_per_class_recall" in _fail([str(bad), *out], capsys)
    bad.write_text(json.dumps(_result("zeroshot", "m", {"top1": 50.0, "top5": 0.8, "mean_per_class_recall": 0.4})))
    assert "top1=50.0 is not a fraction" in _fail([str(bad), *out], capsys)
    bad.write_text(json.dumps([1, 2]))
    assert "JSON object" in _fail([str(bad), *out], capsys)
    copy = tmp_path / "copy.json"
    copy.write_text(good.read_text())
    err = _fail([str(good), str(copy), *out], capsys)
    assert "two zeroshot results" in err and "good.json" in err and "copy.json" in err
    assert "--base 'zz'" in _fail([str(good), "--base", "zz", *out], capsys)
    assert "--label" in _fail([str(good), "--label", "a", "--label", "b", *out], capsys)
    (tmp_path / "sub.parquet").write_bytes(b"nope")
    assert "sub.parquet" in _fail([str(good), "--subset", str(tmp_path / "sub.parquet"), *out], capsys)
    pq.write_table(pa.table({"key": ["k"], "similarity": [0.1]}), tmp_path / "sub.parquet")
    assert "classes" in _fail([str(good), "--subset", str(tmp_path / "sub.parquet"), *out], capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("precious")
    assert "refusing" in _fail([str(good), "--out", str(tmp_path / "other")], capsys)
    assert (tmp_path / "other" / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "rep").exists()  # nothing written by any failure


def test_rewrite_is_atomic(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(dict(_result("vqa", "m", {"accuracy": 0.5}))))
    out = tmp_path / "rep"
    assert run(["report", str(good), "--out", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    first = (out / "report.md").read_text()
    assert "| m (base) | 50.00 |" in first and not list(out.glob("*.png"))  # no per-class numbers: no figure
    # A failing run leaves the previous report and no temporary directory behind.
    assert run(["report", str(good), str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert (out / "report.md").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.json", "rep"]
    with pytest.raises(ReactError, match="no result files"):
        collect([])


def test_figures_stay_readable_for_many_classes(tmp_path, monkeypatch):
    from downstream.report import figures

    # Small caps keep the test fast; the capping logic is the same at 30/40.
    monkeypatch.setattr(figures, "MAX_BARS_PER_SIDE", 4)
    monkeypatch.setattr(figures, "MAX_PANELS", 3)
    rng = np.random.default_rng(0)
    gains = {"m": {f"class {i}": float(g) for i, g in enumerate(rng.normal(size=200))}}
    figures.per_class_gain_figure(gains, "base", "recall", tmp_path / "gain.png")
    sims = {f"c{i}": rng.uniform(0.1, 0.3, size=i) for i in range(30)}
    figures.similarity_histograms(sims, tmp_path / "hist.png")
    # Uncapped, 200 bars would be ~9000 px wide and 30 panels 6 rows high.
    for name, max_width, max_height in (("gain.png", 1000, 600), ("hist.png", 900, 400)):
        with Image.open(tmp_path / name) as image:
            assert image.width <= max_width and image.height <= max_height, (name, image.size)


def test_headline_shows_the_task_shaping_parts_of_a_summary():
    from downstream.report.headline import summary_lines

    summary = {"subset": {"rows": 10, "excluded": 3, "excluded_images": 40, "coverage": {"not_covered": ["lute"]},
                          "with_aliases": {"aliases": 4, "per_class": 5, "rows": 8, "weak_aliases": ["bird|birds"]},
                          "with_examples": {"examples": 6, "per_class": 3, "split": "val", "rows": 12}},
               "download": {"downloaded": 9, "requested": 10, "safety": {"mode": "off"},
                            "link_rot": {"rot_fraction": 0.15, "requested": 10, "downloaded": 8, "topped_up": 2,
                                         "downloaded_after": 10, "short_after": 0}},
               "suite": {"split": "test", "average": {"gain": -0.012, "gain_ci95": [-0.05, 0.02]},
                         "wins": 0, "ties": 2, "losses": 1}}
    text = "\n".join(summary_lines(summary))
    assert "3 retrieved pairs dropped as copies of the 40 evaluation images" in text
    assert "(absolute rule): lute" in text
    assert "4 aliases and at most 5 pairs per class: 8 rows; weak aliases: bird|birds" in text
    assert "6 example images (3 per class, val split): 12 rows" in text
    assert "safety filter: off" in text
    assert "8 of 10 kept; one top-up round of 2 pairs: 10 (0 short)" in text
    assert "average gain -1.2 points, 95 % interval [-5.0, +2.0]; 0 wins / 2 ties / 1 losses" in text
    assert summary_lines({}) == []
