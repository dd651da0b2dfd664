"""Linear probe: the logistic regression against scikit-learn, the splits, the
lambda sweep, the protocol on known features, and the command on all three
dataset forms with the tiny model."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from downstream.runners import parse_seeds
from downstream.tasks.linear_probe import (
    COARSE_LOG10,
    FINE_OFFSETS,
    ProbeData,
    carve_validation,
    fit_logistic,
    run_protocol,
    sample_shots,
    stratified_halves,
    sweep_lambda,
    text_prior,
)
from react.errors import ReactError
from react.schemas import CLASSES_FILE, RESULT_KEYS
from cli_helpers import eval_parser

COLORS = [(220, 20, 20), (20, 200, 20), (20, 20, 220)]
NAMES = ["red", "green", "blue"]


def _features(n_per_class: int, num_classes: int = 3, dim: int = 8, spread: float = 0.3, seed: int = 0):
    """Gaussian clusters around orthogonal class directions, L2-normalized like CLIP features."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    centres = torch.eye(num_classes, dim)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1), y


# --- the classifier -----------------------------------------------------------------

@pytest.mark.parametrize("lam", [1e-2, 1e-1, 1.0])
def test_fit_matches_scikit_learn(lam):
    from sklearn.linear_model import LogisticRegression

    x, y = _features(20, spread=0.8)
    head = fit_logistic(x, y, 3, lam)
    # Same objective: sklearn minimises C * sum CE + ||W||^2 / 2, i.e. lambda = 1 / (C N).
    ref = LogisticRegression(C=1.0 / (lam * len(y)), tol=1e-10, max_iter=10_000).fit(x.numpy(), y.numpy())
    ours = torch.softmax(head.logits(x), dim=1).numpy()
    assert np.abs(ours - ref.predict_proba(x.numpy().astype(np.float64))).max() < 1e-3
    assert np.abs(head.weight.numpy() - ref.coef_).max() < 1e-3
    assert (ours.argmax(1) == ref.predict(x.numpy())).all()


def test_fit_is_deterministic_and_warm_start_reaches_the_same_optimum():
    x, y = _features(10, spread=0.8)
    a, b = fit_logistic(x, y, 3, 0.1), fit_logistic(x, y, 3, 0.1)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    warm = fit_logistic(x, y, 3, 0.1, start=fit_logistic(x, y, 3, 10.0))
    assert torch.allclose(warm.weight, a.weight, atol=1e-4)


def test_text_prior_pulls_towards_the_text_head():
    x, y = _features(10, spread=0.8)
    class_emb = torch.nn.functional.normalize(torch.eye(3, 8) + 0.1, dim=1)
    prior = text_prior(class_emb, 10.0)
    assert torch.allclose(prior, class_emb.double() * 10.0)
    # A huge lambda pins the weights to the prior (the zero-shot classifier) ...
    pinned = fit_logistic(x, y, 3, 1e8, prior)
    assert torch.allclose(pinned.weight, prior, atol=1e-5)
    # ... and to zero without one.
    assert fit_logistic(x, y, 3, 1e8).weight.abs().max() < 1e-5
    with pytest.raises(ReactError, match="logit scale"):
        text_prior(class_emb, float("nan"))


# --- splits -------------------------------------------------------------------------------

def test_stratified_halves_hand_counted():
    labels = [0] * 5 + [1] * 4 + [2] * 1
    train, test = stratified_halves(labels)
    y = np.asarray(labels)
    assert np.bincount(y[train], minlength=3).tolist() == [2, 2, 0]  # floor(n / 2)
    assert np.bincount(y[test], minlength=3).tolist() == [3, 2, 1]
    assert sorted(train.tolist() + test.tolist()) == list(range(10))
    again = stratified_halves(labels)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_sample_shots_and_validation_carve():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1)
    pool = np.arange(len(labels))
    chosen, short = sample_shots(labels, pool, 5, seed=0)
    assert np.bincount(labels[chosen], minlength=3).tolist() == [5, 3, 1]
    assert short == 2  # classes 1 and 2 have fewer than 5
    assert np.array_equal(sample_shots(labels, pool, 5, seed=0)[0], chosen)
    assert not np.array_equal(sample_shots(labels, pool, 5, seed=1)[0], chosen)
    fit, val = carve_validation(labels, pool, seed=0)
    # round(20%) per class, at least one from a class of >= 2, none from a class of 1.
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]
    assert sorted(fit.tolist() + val.tolist()) == pool.tolist()


def test_sweep_is_coarse_then_fine():
    x, y = _features(12, spread=0.5)
    fit, val = carve_validation(y.numpy(), np.arange(len(y)), seed=0)
    lam, trials = sweep_lambda(x[fit], y[fit], x[val], y[val], 3)
    lams = [t["lambda"] for t in trials]
    assert len(lams) == len(COARSE_LOG10) + len(FINE_OFFSETS) - 1  # the best coarse value is reused
    best = max(trials, key=lambda t: (t["val_top1"], -t["val_loss"]))
    assert lam == best["lambda"] and best["val_top1"] == 1.0
    coarse = [t for t in trials if round(np.log10(t["lambda"]), 6) in COARSE_LOG10]
    assert len(coarse) == len(COARSE_LOG10)
    coarse_best = max(coarse, key=lambda t: (t["val_top1"], -t["val_loss"]))
    # Every fine value lies within 1.5 decades of the best coarse one.
    fine = [t for t in trials if t not in coarse]
    assert all(abs(np.log10(t["lambda"] / coarse_best["lambda"])) <= 1.5 + 1e-9 for t in fine)


# --- the protocol on known features ---------------------------------------------------------

def test_protocol_on_separable_clusters():
    x, y = _features(16, spread=0.2)
    tx, ty = _features(6, spread=0.2, seed=1)
    data = ProbeData(x, y, tx, ty, 3)
    parts = run_protocol(data, shots=[1, 4, 50], seeds=[0, 1, 2], classnames=NAMES)
    m = parts["metrics"]
    assert m["top1"] == 1.0 and m["mean_per_class_recall"] == 1.0
    assert parts["per_class"] == {"red": 1.0, "green": 1.0, "blue": 1.0}
    assert [run["shots"] for run in parts["fewshot"]] == [1, 4, 50]
    one, four, fifty = parts["fewshot"]
    assert one["train_images"] == [3, 3, 3] and four["train_images"] == [12, 12, 12]
    assert fifty["classes_with_fewer_images"] == 3 and four["classes_with_fewer_images"] == 0
    for run in parts["fewshot"]:
        assert run["seeds"] == [0, 1, 2]
        assert run["top1_mean"] == pytest.approx(np.mean(run["top1"]))
        assert run["top1_std"] == pytest.approx(np.std(run["top1"], ddof=1))
        assert m[f"top1_{run['shots']}shot"] == run["top1_mean"]
        assert m[f"mean_per_class_recall_{run['shots']}shot_std"] == run["mean_per_class_recall_std"]
    assert m["top1_4shot"] == 1.0
    assert parts["full"]["lambda_from"] == "validation"


def test_mean_per_class_recall_matches_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score

    x, y = _features(12, spread=1.2)
    tx, ty = _features(20, spread=1.2, seed=3)
    parts = run_protocol(ProbeData(x, y, tx, ty, 3), shots=[], seeds=[0], classnames=NAMES)
    head_lam = parts["full"]["lambda"]
    preds = fit_logistic(x, y, 3, head_lam).logits(tx).argmax(1).numpy()
    assert 0 < parts["metrics"]["top1"] < 1  # overlapping clusters: not trivially perfect
    assert parts["metrics"]["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(ty.numpy(), preds))
    assert parts["metrics"]["top1"] == pytest.approx(float((preds == ty.numpy()).mean()))


def test_one_image_per_class_falls_back_to_the_default_lambda():
    x, y = _features(1)
    parts = run_protocol(ProbeData(x, y, x, y, 3), shots=[], seeds=[0], classnames=NAMES)
    assert parts["full"]["lambda_from"].startswith("default")


def test_parse_seeds():
    assert parse_seeds([3]) == [0, 1, 2]
    assert parse_seeds([7, 9]) == [7, 9]
    for bad, message in (([0], "at least one"), ([1, 1], "twice")):
        with pytest.raises(ReactError, match=message):
            parse_seeds(bad)


# --- the command on the three dataset forms -------------------------------------------------

def _png(color, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _shade(c: int, i: int) -> tuple[int, int, int]:
    return tuple(min(255, v + 7 * i) for v in COLORS[c])


def _imagefolder(root: Path, counts: dict[str, int]) -> Path:
    for split, n in counts.items():
        for c, name in enumerate(NAMES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                (root / split / name / f"{i}.png").write_bytes(_png(_shade(c, i)))
    return root


def _wds(root: Path, counts: dict[str, int]) -> Path:
    (root).mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    for split, n in counts.items():
        (root / split).mkdir()
        with tarfile.open(root / split / "0.tar", "w") as tf:
            for c in range(3):
                for i in range(n):
                    for ext, data in (("png", _png(_shade(c, i))), ("cls", str(c).encode())):
                        info = tarfile.TarInfo(f"{split}{c}_{i}.{ext}")
                        info.size = len(data)
                        tf.addfile(info, io.BytesIO(data))
    return root


def _embedded(root: Path, n: int) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for c, name in enumerate(NAMES):
        for i in range(n):
            rel = f"images/{name}{i}.png"
            (root / rel).write_bytes(_png(_shade(c, i)))
            rows.append({"key": f"{name}{i}", "image_path": rel, "caption": f"a {name} stamp", "label": name})
    pq.write_table(pa.Table.from_pylist(rows), root / "downstream.parquet")
    (root / CLASSES_FILE).write_text("\n".join(NAMES) + "\n")
    return root


@pytest.mark.parametrize("form", ["imagefolder", "wds", "embedded"])
def test_cli_linear_probe_writes_result(form, tiny_model_dir, tmp_path, capsys):
    if form == "imagefolder":
        root, n_test = _imagefolder(tmp_path / "colors", {"train": 4, "test": 2}), 6
    elif form == "wds":
        root, n_test = _wds(tmp_path / "wds_colors", {"train": 4, "test": 2}), 6
    else:
        root, n_test = _embedded(tmp_path / "corpus", 5), 6  # 3 classes x the test half, floor(5/2)
    out = tmp_path / "results" / "lp.json"
    extra = ["--text-init", "--templates", "simple"] if form == "embedded" else []
    args = eval_parser().parse_args(["eval", "linear-probe", "--model", str(tiny_model_dir), "--dataset", str(root),
                                 "--shots", "1", "2", "--seeds", "2", "--device", "cpu", "--batch-size", "4",
                                 "--out", str(out), *extra])
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert all(k in result for k in RESULT_KEYS) and result["task"] == "linear-probe"
    m = result["metrics"]
    assert m["num_images"] == n_test and m["num_classes"] == 3
    for key in ("top1", "mean_per_class_recall", "top1_1shot", "top1_2shot_std", "mean_per_class_recall_2shot"):
        assert 0.0 <= m[key] <= 1.0
    assert set(result["per_class"]) == set(NAMES)
    assert [r["shots"] for r in result["fewshot"]] == [1, 2] and result["fewshot"][0]["seeds"] == [0, 1]
    assert result["linear_probe"]["text_init"] is (form == "embedded")
    assert result["linear_probe"]["full_shot_lambda"] > 0
    assert [p.name for p in out.parent.iterdir()] == ["lp.json"]
    assert "full" in capsys.readouterr().out


def test_flat_imagefolder_is_halved_not_leaked(tmp_path):
    from react.datasets import open_splits

    flat = tmp_path / "flat"
    for c, name in enumerate(NAMES):
        (flat / name).mkdir(parents=True)
        for i in range(3):
            (flat / name / f"{i}.png").write_bytes(_png(_shade(c, i)))
    train, test, rule = open_splits(flat)
    assert test is None and len(train) == 9 and rule.startswith("one split")
    split_train, split_test, rule = open_splits(_imagefolder(tmp_path / "split", {"train": 2, "test": 1}))
    assert (len(split_train), len(split_test), rule) == (6, 3, "train -> test")


def test_cli_rejects_bad_input_before_loading(tmp_path):
    folder = _imagefolder(tmp_path / "colors", {"train": 1, "test": 1})
    base = ["eval", "linear-probe", "--model", str(tmp_path / "no_model")]
    for extra, message in ((["--dataset", str(folder), "--shots", "0"], "--shots must be >= 1"),
                           (["--dataset", str(folder), "--seeds", "0"], "at least one seed"),
                           (["--dataset", str(folder), "--train-split", "test"], "both 'test'"),
                           (["--dataset", str(folder), "--split", "val"], "no 'val' split"),
                           (["--dataset", str(tmp_path / "nope")], "dataset not found")):
        args = eval_parser().parse_args(base + extra)
        with pytest.raises(ReactError, match=message):
            args.func(args)
