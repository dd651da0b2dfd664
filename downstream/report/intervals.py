"""95 % intervals for gains, over images and seeds.

A gain measured on a few hundred images moves by a point when a handful of
images change their answer, and a customized model's seeds differ again. The
interval here is a paired, two-level bootstrap: each replicate draws the
evaluation images with replacement (the same draw for the base and the
customized model, so their shared difficulty cancels) and the seeds with
replacement, and takes the mean over the drawn seeds of (customized - base)
accuracy on the drawn images. Its 2.5th and 97.5th percentiles are the
interval; a gain whose interval contains 0 is not distinguishable from none.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

REPLICATES = 2000


def correct(result: dict) -> np.ndarray:
    """Per-image top-1 correctness (bool [n]) of a ``react eval zeroshot`` result."""
    per_image = result.get("per_image")
    if not per_image:
        raise ValueError(f"result of {result.get('model')!r} has no per-image answers (re-run react eval)")
    return np.asarray(per_image["prediction"]) == np.asarray(per_image["label"])


def _interval(gains: np.ndarray, mean: float, **extra: Any) -> dict:
    """The 95 % percentile interval of bootstrap ``gains`` around the point ``mean``."""
    lo, hi = np.quantile(gains, [0.025, 0.975])
    return {"mean": round(float(mean), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "contains_zero": bool(lo <= 0.0 <= hi), **extra, "replicates": len(gains)}


def gain_interval(runs: list[np.ndarray], against: list[np.ndarray], replicates: int = REPLICATES,
                  seed: int = 0) -> dict:
    """Mean top-1 of ``runs`` minus that of ``against`` (one correctness vector per seed each; the
    base is a list of one), with its 95 % interval."""
    a = np.stack([np.asarray(r, np.float64) for r in runs])  # [seeds, images]
    b = np.stack([np.asarray(r, np.float64) for r in against])
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a.shape[1]} images against {b.shape[1]}: not the same evaluation set")
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    gains = np.empty(replicates)
    for i in range(replicates):
        idx = rng.integers(0, n, size=n)  # the same images for both sides: paired
        sa, sb = rng.integers(0, len(a), size=len(a)), rng.integers(0, len(b), size=len(b))
        gains[i] = a[sa][:, idx].mean() - b[sb][:, idx].mean()
    return _interval(gains, a.mean() - b.mean(), images=int(n), seeds=[len(a), len(b)])


def mean_gain_interval(tasks: dict[str, tuple[list[np.ndarray], list[np.ndarray]]],
                       replicates: int = REPLICATES, seed: int = 0) -> dict:
    """The ELEVATER average: the mean over tasks of each task's gain (every task weighs the
    same, whatever its size), with its 95 % interval. ``tasks``: {name: (runs, against)} as
    ``gain_interval`` takes them, the runs in the same seed order for every task. Each
    replicate draws the seeds once (a seed is one model, scored on every task) and each
    task's images on their own."""
    if not tasks:
        raise ValueError("no tasks to average")
    stacked = {name: (np.stack([np.asarray(r, np.float64) for r in a]), np.stack([np.asarray(r, np.float64) for r in b]))
               for name, (a, b) in tasks.items()}
    seeds = {(a.shape[0], b.shape[0]) for a, b in stacked.values()}
    if len(seeds) != 1:
        raise ValueError(f"the tasks were scored with different numbers of models: {sorted(seeds)}")
    for name, (a, b) in stacked.items():
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"{name}: {a.shape[1]} images against {b.shape[1]}: not the same evaluation set")
    (na, nb), = seeds
    rng = np.random.default_rng(seed)
    gains = np.empty(replicates)
    for i in range(replicates):
        sa, sb = rng.integers(0, na, size=na), rng.integers(0, nb, size=nb)
        total = 0.0
        for a, b in stacked.values():
            idx = rng.integers(0, a.shape[1], size=a.shape[1])
            total += a[sa][:, idx].mean() - b[sb][:, idx].mean()
        gains[i] = total / len(stacked)
    mean = np.mean([a.mean() - b.mean() for a, b in stacked.values()])
    return _interval(gains, mean, tasks=len(stacked), seeds=[na, nb])


def metric_gain_interval(runs: list, against: list, metric: Callable[[Any, np.ndarray], float], images: int,
                         replicates: int = REPLICATES, seed: int = 0) -> dict:
    """The same paired image x seed bootstrap for a metric that is not a mean over images
    (detection AP50, segmentation mIoU): ``metric(stats, weights)`` scores one model's
    per-image statistics with image i counted ``weights[i]`` times, so a replicate's draw
    of the images is a weight vector shared by both sides."""
    rng = np.random.default_rng(seed)
    ones = np.ones(images)
    point = np.mean([metric(r, ones) for r in runs]) - np.mean([metric(b, ones) for b in against])
    gains = np.empty(replicates)
    for i in range(replicates):
        w = np.bincount(rng.integers(0, images, size=images), minlength=images).astype(np.float64)
        a = np.array([metric(r, w) for r in runs])
        b = np.array([metric(r, w) for r in against])
        gains[i] = a[rng.integers(0, len(a), size=len(a))].mean() - b[rng.integers(0, len(b), size=len(b))].mean()
    return _interval(gains, point, images=int(images), seeds=[len(runs), len(against)])
