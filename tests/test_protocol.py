"""The evaluation protocol (issue 17): the embedded held-out task is halved into a validation split
(every recipe choice, sweep and threshold) and a test split (the final report), and tuning code
cannot open the test split."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from react.datasets import SEALED_ENV, build_classification_dataset, seal_splits
from react.errors import ReactError

REPO = Path(__file__).resolve().parents[1]
# scripts whose figures choose settings
TUNING_SCRIPTS = ["benchmarks/react_effect.py", "benchmarks/recipe_sweep.py", "benchmarks/world_sweep.py",
                  "benchmarks/seg_threshold.py"]


def _embedded(root: Path, per_class: dict[str, int]) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for label, n in per_class.items():
        for i in range(n):
            key = f"{label}-{i}"
            Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(root / "images" / f"{key}.png")
            rows.append({"key": key, "image_path": f"images/{key}.png", "label": label})
    pq.write_table(pa.Table.from_pylist(rows), root / "downstream.parquet")
    (root / "downstream_classes.txt").write_text("".join(f"{c}\n" for c in per_class))
    return root


def test_halves_are_disjoint_stratified_complete_and_fixed(tmp_path):
    root = _embedded(tmp_path / "c", {"cat": 7, "dog": 4, "owl": 1})
    val, test = (build_classification_dataset(root, s) for s in ("val", "test"))
    assert set(val.paths).isdisjoint(test.paths) and len(val) + len(test) == 12
    for label, n in enumerate((7, 4, 1)):  # each class split in half (an odd one extra to val)
        assert (val.labels.count(label), test.labels.count(label)) == ((n + 1) // 2, n // 2)
    assert build_classification_dataset(root).paths == test.paths  # the default split is the test half
    assert build_classification_dataset(root, "test").paths == test.paths  # no seed: the same halves every time
    with pytest.raises(ReactError, match="splits 'val' and 'test'"):
        build_classification_dataset(root, "train")


def test_a_sealed_split_cannot_be_opened_here_or_in_child_processes(tmp_path, monkeypatch):
    root = _embedded(tmp_path / "c", {"cat": 2, "dog": 2})
    monkeypatch.setenv(SEALED_ENV, "")  # recorded, so the seal below is undone after the test
    seal_splits("test")
    assert os.environ[SEALED_ENV] == "test"  # (the empty entry the fixture set is dropped)
    build_classification_dataset(root, "val")
    with pytest.raises(ReactError, match="split 'test' is sealed"):
        build_classification_dataset(root, "test")
    child = subprocess.run([sys.executable, "-m", "react", "eval", "zeroshot", "--model", "unused", "--dataset",
                            str(root), "--out", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert child.returncode == 2 and "sealed" in child.stderr


def test_decontamination_refuses_a_sealed_split_rather_than_skipping_it(tmp_path, monkeypatch):
    """Excluding a dataset must cover every split: with the test half sealed, the exclusion set
    would silently miss exactly the images a report is read from."""
    from retrieval_service.exclude import open_all_splits

    root = _embedded(tmp_path / "c", {"cat": 4, "dog": 2})
    assert sum(len(ds) for ds in open_all_splits(root)) == 6  # unsealed: both halves
    monkeypatch.setenv(SEALED_ENV, "test")
    with pytest.raises(ReactError, match="split 'test' is sealed"):
        open_all_splits(root)


@pytest.mark.parametrize("script", TUNING_SCRIPTS)
def test_tuning_scripts_seal_the_test_split_before_opening_data(script):
    """In each tuning script, seal_splits("test") is called before any dataset is opened."""
    tree = ast.parse((REPO / script).read_text())
    calls = [(n.lineno, n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", ""), n)
             for n in ast.walk(tree) if isinstance(n, ast.Call)]
    seals = [line for line, name, n in calls if name == "seal_splits"
             and any(isinstance(a, ast.Constant) and a.value == "test" for a in n.args)]
    # score_runs (benchmarks/react_effect.py) opens the validation half for the scripts that call it
    opens = [line for line, name, _ in calls if name in ("build_classification_dataset", "open_splits", "score_runs")]
    # and every `react eval ...` command line the script writes
    opens += [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "eval"]
    assert seals and opens and min(seals) < min(opens), f"{script} opens a dataset before sealing the test split"
