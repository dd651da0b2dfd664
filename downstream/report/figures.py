"""``react report``'s figures: matplotlib (Agg) PNGs, one function per figure.

Each function takes plain numbers (no result objects) and writes one PNG, so
the figures can be tested and reused without the rest of the report.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

DPI = 110
POSITIVE, NEGATIVE = "#2e7d32", "#c62828"  # the paper's green gains, red losses
MAX_BARS_PER_SIDE = 30
MAX_PANELS = 40


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return path


def per_class_gain_figure(gains: dict[str, dict[str, float]], base: str, metric: str, path: Path,
                          title: str = "") -> Path:
    """One panel per non-base model: a bar per class, its gain over ``base`` in
    points, sorted from largest gain to largest loss (as the REACT paper's
    per-dataset figure)."""
    plt = _pyplot()
    n_classes = min(max(len(g) for g in gains.values()), 2 * MAX_BARS_PER_SIDE)
    fig, axes = plt.subplots(len(gains), 1, squeeze=False, sharey=True,
                             figsize=(max(6.0, 0.42 * n_classes + 1.5), 3.4 * len(gains)))
    for ax, (label, per_class) in zip(axes[:, 0], gains.items()):
        ranked = sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0]))
        mean, up, down = (np.mean([v for _, v in ranked]), sum(v > 0 for _, v in ranked),
                          sum(v < 0 for _, v in ranked))
        shown = ""
        if len(ranked) > 2 * MAX_BARS_PER_SIDE:  # 1000 ImageNet bars would be unreadable
            ranked = ranked[:MAX_BARS_PER_SIDE] + ranked[-MAX_BARS_PER_SIDE:]
            shown = f"; largest {MAX_BARS_PER_SIDE} gains and losses of {len(per_class)} classes"
        names = [name for name, _ in ranked]
        values = np.array([value for _, value in ranked])
        ax.bar(range(len(values)), values, color=[POSITIVE if v >= 0 else NEGATIVE for v in values])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylabel(f"Δ {metric} (points)")
        ax.set_title(f"{label} vs {base}: mean gain {mean:+.2f} points, {up} up / {down} down{shown}",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def fewshot_figure(curves: dict[str, Sequence[tuple[int, float, float]]], path: Path, metric: str = "top-1",
                   full_shot: dict[str, float] | None = None, title: str = "") -> Path:
    """Accuracy (%) against shots per class, one line per model, a band of
    mean ± spread over seeds; full-shot accuracy as a dotted line if given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, curve) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        shots = np.array([s for s, _, _ in curve], dtype=float)
        mean = 100 * np.array([m for _, m, _ in curve])
        std = 100 * np.array([sd for _, _, sd in curve])
        ax.plot(shots, mean, marker="o", color=color, label=label)
        ax.fill_between(shots, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
        if full_shot and label in full_shot:
            ax.axhline(100 * full_shot[label], color=color, linestyle=":", linewidth=1.2)
    # axhline does not widen the autoscaled range: make room for the full-shot lines.
    low, high = ax.get_ylim()
    if full_shot:
        low = min(low, 100 * min(full_shot.values()))
        high = max(high, 100 * max(full_shot.values()))
    pad = 0.06 * max(high - low, 1.0)
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
    all_shots = sorted({s for curve in curves.values() for s, _, _ in curve})
    if len(all_shots) > 1 and all_shots[-1] / max(all_shots[0], 1) >= 8:
        ax.set_xscale("log")  # shot counts are usually 1..100, log-spaced
    ax.set_xticks(all_shots)
    ax.set_xticklabels([str(s) for s in all_shots])
    ax.minorticks_off()
    ax.set_xlabel("training images per class (shots)")
    ax.set_ylabel(f"{metric} accuracy %")
    note = " (band: ± spread over seeds" + ("; dotted: full-shot)" if full_shot else ")")
    ax.set_title((title or "Few-shot linear probe") + note, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def similarity_histograms(similarities: dict[str, np.ndarray], path: Path, ncols: int = 5,
                          title: str = "") -> Path:
    """Small multiples: the retrieval similarity of each class's subset rows,
    all panels on the same bins so classes compare at a glance."""
    plt = _pyplot()
    names = list(similarities)
    if len(names) > MAX_PANELS:  # a grid of 1000 panels is no summary: the most-retrieved ones
        names = sorted(names, key=lambda n: -len(similarities[n]))[:MAX_PANELS]
        title = (title or "Retrieved subset: similarity per class") + \
            f" ({MAX_PANELS} classes with most rows of {len(similarities)})"
    nrows = max(1, math.ceil(len(names) / ncols))
    ncols = min(ncols, max(1, len(names)))
    nonempty = [v for v in similarities.values() if len(v)]
    lo, hi = (float(min(v.min() for v in nonempty)), float(max(v.max() for v in nonempty))) if nonempty else (0, 1)
    if hi <= lo:
        lo, hi = lo - 0.01, hi + 0.01
    bins = np.linspace(lo, hi, 21)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharex=True, figsize=(2.3 * ncols, 1.9 * nrows))
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        values = np.asarray(similarities[name], dtype=float)
        ax.hist(values, bins=bins, color="#1565c0", alpha=0.85)
        median = f", median {np.median(values):.3f}" if len(values) else ""
        ax.set_title(f"{name}\n{len(values)} rows{median}", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(values):
            ax.axvline(float(np.median(values)), color="black", linewidth=0.8, linestyle="--")
    # The lowest panel of each column carries the axis, even above an empty slot.
    for ax in list(axes.flat)[max(0, len(names) - ncols):len(names)]:
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("similarity", fontsize=8)
    fig.suptitle(title or "Retrieved subset: similarity per class", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
