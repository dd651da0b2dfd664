"""Linear probe on frozen image features (the ELEVATER protocol).

Images are encoded once per split; every shot count and seed then runs on
the cached features. The classifier is multinomial logistic regression,
fitted full-batch with L-BFGS in float64 (deterministic), minimising

    mean_i CE(W x_i + b, y_i) + lambda/2 * ||W - W0||^2          (b unpenalised)

which is scikit-learn's ``LogisticRegression(C=1/(lambda*N))`` when W0 = 0.
``lambda`` is chosen on a validation split carved out of the training images
by a coarse sweep over 1e-6..1e6 (every 2 decades), then a finer sweep
(every half decade) around the best coarse value.

With ``text_init`` ELEVATER's language-augmented head is used: W0 = the
class-name text embeddings times the model's logit scale, and the solve
starts from it. Because the problem is convex, a start point alone would not
change the optimum, so the penalty pulls towards W0 instead of 0: a large
lambda gives back the zero-shot classifier, a small one a plain probe, and the
sweep picks between them.

The embedded corpus has no train split: its downstream images are split per
class deterministically (see ``stratified_halves``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from downstream.defaults import DEFAULT_BATCH_SIZE, DEFAULT_SEEDS, DEFAULT_SHOTS
from downstream.tasks.metrics import mean_per_class_recall, per_class_recall, topk_accuracy
from react.errors import ReactError

if TYPE_CHECKING:
    from react.datasets import ClassificationDataset
    from react.models import LoadedModel

COARSE_LOG10 = tuple(range(-6, 7, 2))  # 1e-6 .. 1e6
FINE_OFFSETS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)  # decades around the best coarse value
VAL_FRACTION = 0.2
DEFAULT_LAMBDA = 1e-2  # used only when a run has no validation images (1 image per class)
EMBEDDED_SPLIT_SEED = 0
MAX_ITER = 200
# On the mean loss; scikit-learn's lbfgs stops at 1e-4 on its summed one, so this is tighter.
TOLERANCE_GRAD = 1e-6


# --- the classifier ----------------------------------------------------------------

@dataclass
class LinearHead:
    weight: torch.Tensor  # [C, D] float64
    bias: torch.Tensor  # [C] float64

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.double() @ self.weight.T + self.bias


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, lam: float,
                 prior: torch.Tensor | None = None, start: LinearHead | None = None,
                 max_iter: int = MAX_ITER) -> LinearHead:
    """Multinomial logistic regression with an L2 pull of strength ``lam``
    towards ``prior`` ([C, D], default 0); see the module docstring.

    ``start`` (a solution for a nearby lambda) only saves iterations: the
    problem is convex, so the optimum does not depend on it."""
    x = features.double()
    y = labels.long()
    anchor = torch.zeros(num_classes, x.shape[1], dtype=torch.float64) if prior is None else prior.double()
    weight = (anchor if start is None else start.weight).clone().requires_grad_(True)
    bias = (torch.zeros(num_classes, dtype=torch.float64) if start is None else start.bias.clone())
    bias.requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=TOLERANCE_GRAD, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * lam * (weight - anchor).pow(2).sum()
        loss.backward()
        return loss

    # Tiny matrices: extra threads only add contention on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    return LinearHead(weight.detach(), bias.detach())


def _score(head: LinearHead, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, cross-entropy): the sweep ranks by accuracy, then by loss,
    since a few validation images leave many lambdas tied on accuracy."""
    logits = head.logits(features)
    acc = float((logits.argmax(1) == labels).double().mean())
    return acc, float(F.cross_entropy(logits, labels.long()))


def sweep_lambda(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 num_classes: int, prior: torch.Tensor | None = None) -> tuple[float, list[dict]]:
    """Coarse-to-fine search of lambda on (val_x, val_y); returns (best, every trial)."""
    tried: dict[float, tuple[float, float]] = {}
    heads: dict[float, LinearHead] = {}

    def trial(log10: float) -> None:
        key = round(log10, 6)
        if key not in tried:
            # Warm start from the nearest lambda fitted so far; strong penalties
            # first, so the slow weakly-penalised fits start close to their optimum.
            near = min(heads, key=lambda k: abs(k - key), default=None)
            head = fit_logistic(train_x, train_y, num_classes, 10.0 ** key, prior,
                                start=heads.get(near) if near is not None else None)
            heads[key] = head
            tried[key] = _score(head, val_x, val_y)

    def best() -> float:
        return min(tried, key=lambda k: (-tried[k][0], tried[k][1], -k))

    for log10 in sorted(COARSE_LOG10, reverse=True):
        trial(float(log10))
    centre = best()
    for offset in FINE_OFFSETS:
        trial(centre + offset)
    chosen = best()
    trials = [{"lambda": 10.0 ** k, "val_top1": a, "val_loss": l} for k, (a, l) in sorted(tried.items())]
    return 10.0 ** chosen, trials


# --- splits --------------------------------------------------------------------------

def _by_class(indices: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(c): indices[labels[indices] == c] for c in np.unique(labels[indices])}


def stratified_halves(labels: Sequence[int], seed: int = EMBEDDED_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices for a dataset with one split: each class is
    shuffled with a fixed seed, its first floor(n/2) images go to train and the
    rest (the larger half when n is odd) to test. Depends only on the dataset
    order and the seed, so every model sees the same split."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for _, members in sorted(_by_class(np.arange(len(y)), y).items()):
        members = rng.permutation(members)
        half = len(members) // 2
        train.append(members[:half])
        test.append(members[half:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def sample_shots(labels: np.ndarray, pool: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, int]:
    """``shots`` images per class drawn from ``pool`` with ``seed``; classes
    with fewer keep all theirs. Returns (indices, number of such short classes)."""
    rng = np.random.default_rng(seed)
    chosen, short = [], 0
    for _, members in sorted(_by_class(pool, labels).items()):
        if len(members) <= shots:
            short += len(members) < shots
            chosen.append(members)
        else:
            chosen.append(np.sort(rng.choice(members, shots, replace=False)))
    return np.sort(np.concatenate(chosen)), short


def carve_validation(labels: np.ndarray, pool: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) split of ``pool``: per class round(20%) to validation, at
    least one when the class has two or more images, none when it has one."""
    rng = np.random.default_rng([seed, 1])
    fit, val = [], []
    for _, members in sorted(_by_class(pool, labels).items()):
        members = rng.permutation(members)
        n_val = 0 if len(members) < 2 else max(1, round(VAL_FRACTION * len(members)))
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val)).astype(np.int64)


# --- one run and the whole protocol ----------------------------------------------------

@dataclass
class ProbeData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    prior: torch.Tensor | None = None  # [C, D] text-init head, or None


def run_once(data: ProbeData, pool: np.ndarray, seed: int) -> dict:
    """Sweep lambda on a validation carve of ``pool``, refit on all of it, test."""
    labels = data.train_y.numpy()
    fit_idx, val_idx = carve_validation(labels, pool, seed)
    if len(val_idx):
        lam, _ = sweep_lambda(data.train_x[fit_idx], data.train_y[fit_idx],
                              data.train_x[val_idx], data.train_y[val_idx], data.num_classes, data.prior)
    else:
        lam = DEFAULT_LAMBDA
    head = fit_logistic(data.train_x[pool], data.train_y[pool], data.num_classes, lam, data.prior)
    logits = head.logits(data.test_x).float()
    preds = logits.argmax(1)
    return {
        "lambda": lam,
        "lambda_from": "validation" if len(val_idx) else "default (no validation images)",
        "train_images": int(len(pool)),
        "val_images": int(len(val_idx)),
        "top1": topk_accuracy(logits, data.test_y, 1),
        "mean_per_class_recall": mean_per_class_recall(preds, data.test_y, data.num_classes),
        "preds": preds,
    }


def _spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def run_protocol(data: ProbeData, shots: Sequence[int], seeds: Sequence[int],
                 classnames: Sequence[str], on_run: Callable[[], None] | None = None) -> dict:
    """Few-shot runs (each shot count x seed) and one full-shot run.

    Returns ``metrics``, ``per_class`` (full-shot), ``fewshot`` and ``full``
    parts of the result. ``on_run`` is called after each run (progress)."""
    if len(data.train_y) == 0:
        raise ReactError("no training images for the linear probe")
    if len(data.test_y) == 0:
        raise ReactError("no test images for the linear probe")
    labels = data.train_y.numpy()
    everything = np.arange(len(labels))
    metrics: dict[str, float | int] = {}
    fewshot = []
    for k in shots:
        runs, short = [], 0
        for seed in seeds:
            pool, short = sample_shots(labels, everything, k, seed)
            runs.append(run_once(data, pool, seed))
            if on_run:
                on_run()
        top1_mean, top1_std = _spread([r["top1"] for r in runs])
        mpcr_mean, mpcr_std = _spread([r["mean_per_class_recall"] for r in runs])
        fewshot.append({
            "shots": int(k), "seeds": [int(s) for s in seeds],
            "top1_mean": top1_mean, "top1_std": top1_std,
            "mean_per_class_recall_mean": mpcr_mean, "mean_per_class_recall_std": mpcr_std,
            "top1": [r["top1"] for r in runs],
            "mean_per_class_recall": [r["mean_per_class_recall"] for r in runs],
            "lambda": [r["lambda"] for r in runs],
            "train_images": [r["train_images"] for r in runs],
            # The same for every seed: it depends only on the class sizes.
            "classes_with_fewer_images": int(short),
        })
        metrics.update({f"top1_{k}shot": top1_mean, f"top1_{k}shot_std": top1_std,
                        f"mean_per_class_recall_{k}shot": mpcr_mean,
                        f"mean_per_class_recall_{k}shot_std": mpcr_std})
    full = run_once(data, everything, seeds[0] if seeds else 0)
    if on_run:
        on_run()
    preds = full.pop("preds")
    metrics = {"top1": full["top1"], "mean_per_class_recall": full["mean_per_class_recall"], **metrics,
               "num_train_images": int(len(labels)), "num_images": int(len(data.test_y)),
               "num_classes": int(data.num_classes)}
    return {
        "metrics": metrics,
        "per_class": per_class_recall(preds, data.test_y, data.num_classes, list(classnames)),
        "fewshot": fewshot,
        "full": {k: v for k, v in full.items() if k not in ("top1", "mean_per_class_recall")},
    }


def text_prior(class_emb: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """ELEVATER's language-augmented head: class text embeddings x logit scale."""
    if not math.isfinite(logit_scale) or logit_scale <= 0:
        raise ReactError(f"model has an unusable logit scale {logit_scale}")
    return class_emb.double() * logit_scale


# --- the evaluation --------------------------------------------------------------

def evaluate_linear_probe(model: LoadedModel, train_set: ClassificationDataset,
                          test_set: ClassificationDataset | None = None, rule: str = "",
                          shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = tuple(range(DEFAULT_SEEDS)),
                          text_init: bool = False, templates: str | None = None,
                          batch_size: int = DEFAULT_BATCH_SIZE, num_workers: int = 0) -> dict:
    """The linear-probe result dict of the ``react eval`` contract for ``model``
    (datasets from ``react.datasets.open_splits``; ``test_set``
    None halves ``train_set``)."""
    import time

    from downstream.tasks.zeroshot import class_embeddings, encode_dataset, resolve_templates
    from react.progress import console, progress

    classnames = train_set.classnames
    if test_set is None:
        feats, labels = encode_dataset(model, train_set, batch_size, num_workers)
        train_idx, test_idx = stratified_halves(labels.numpy())
        train_x, train_y = feats[train_idx], labels[train_idx]
        test_x, test_y = feats[test_idx], labels[test_idx]
    else:
        train_x, train_y = encode_dataset(model, train_set, batch_size, num_workers,
                                          description="encoding train images")
        test_x, test_y = encode_dataset(model, test_set, batch_size, num_workers,
                                        description="encoding test images")
    prior, prompt_label = None, None
    if text_init:
        prompts, prompt_label = resolve_templates(train_set, templates)
        scale = float(model.model.logit_scale.detach().exp())
        prior = text_prior(class_embeddings(model, classnames, prompts), scale)
    data = ProbeData(train_x, train_y, test_x, test_y, len(classnames), prior)
    console.log(f"linear probe: {len(train_y)} train / {len(test_y)} test images, {len(classnames)} "
                f"classes ({rule}); shots {list(shots) or 'none'} x seeds {list(seeds)} + full-shot")
    start = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("fitting probes", total=len(shots) * len(seeds) + 1, unit="run")
        parts = run_protocol(data, shots, seeds, classnames, on_run=lambda: bar.advance(task))
    per_class_train = np.bincount(train_y.numpy(), minlength=len(classnames))
    return {
        "task": "linear-probe",
        "model": model.name,
        "dataset": train_set.name,
        "metrics": parts["metrics"],
        "per_class": parts["per_class"],
        "fewshot": parts["fewshot"],
        "linear_probe": {
            "split_rule": rule,
            "text_init": bool(text_init),
            "templates": prompt_label,
            "regularization": "mean CE + lambda/2 ||W - W0||^2 (W0 = text head with --text-init, else 0)",
            "full_shot_lambda": parts["full"]["lambda"],
            "full_shot_lambda_from": parts["full"]["lambda_from"],
            "full_shot_val_images": parts["full"]["val_images"],
            "min_train_images_per_class": int(per_class_train.min()),
            "std": "sample standard deviation over seeds (ddof=1)",
            "fit_seconds": round(time.perf_counter() - start, 2),
        },
    }
