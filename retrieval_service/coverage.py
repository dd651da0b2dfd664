"""Per-class statistics of a retrieved subset and the low-coverage rule.

REACT's failure case is a domain the corpus barely covers: the retrieved
pairs of such a class are only loosely related to it, and customizing on
them cannot help. It shows before any training as a class whose *best*
matches score far below those of the other classes of the task.

The rule (documented in docs/service.md and in ``LOW_COVERAGE_RULE``):

- a class's coverage score is the mean similarity of its ``TOP_N`` (10)
  best-matching unique pairs;
- the task's reference is the median of the classes' coverage scores, and
  its spread the median absolute deviation scaled to a standard deviation
  (1.4826 x MAD);
- a class is flagged **low coverage** when its score lies more than
  ``max(3 x spread, margin)`` below the median (``margin`` 0.05 cosine by
  default), or when it retrieved nothing at all.

The median/MAD pair is robust: one failing class among a thousand does not
move the reference it is compared to. With fewer than three classes only the
"nothing retrieved" case can be flagged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from retrieval_service.merge import Merged
from retrieval_service.spec import DEFAULT_MARGIN

TOP_N = 10
SPREAD_FACTOR = 3.0
LOW_COVERAGE_RULE = (f"coverage = mean similarity of a class's {TOP_N} best unique pairs; flagged when it lies more "
                     f"than max({SPREAD_FACTOR:g} x 1.4826 x MAD, margin) below the task median, or the class "
                     "retrieved nothing")


@dataclass
class ClassStats:
    name: str
    queries: int      # templates formed for this class
    hits: int         # (query, pair) hits above the threshold, before any merging
    unique: int       # subset rows labelled with this class
    exclusive: int    # of those, rows no other class retrieved
    coverage: float | None  # mean of the TOP_N best pair similarities
    p10: float | None
    p50: float | None
    p90: float | None
    max: float | None
    low_coverage: bool = False
    excluded: int = 0  # pairs dropped as (near-copies of) evaluation images (retrieval_service.exclude)

    def to_json(self) -> dict:
        return asdict(self)


def class_stats(merged: Merged, class_names: list[str], n_templates: int | np.ndarray, raw_hits_per_class: np.ndarray,
                margin: float = DEFAULT_MARGIN) -> tuple[list[ClassStats], list[str]]:
    """Statistics per class and the warnings (low coverage, nothing retrieved). ``n_templates``: queries per
    class, one number or one per class (example images give classes different counts)."""
    labels = merged.classes
    n_classes = len(class_names)
    per_row = np.diff(labels.offsets)
    exclusive_rows = np.repeat(per_row == 1, per_row)
    order = np.lexsort((-labels.scores, labels.values))  # by class, best pair first
    sorted_cls, sorted_scores = labels.values[order], labels.scores[order]
    bounds = np.searchsorted(sorted_cls, np.arange(n_classes + 1))
    excl = np.bincount(labels.values[exclusive_rows], minlength=n_classes)
    stats: list[ClassStats] = []
    for c, name in enumerate(class_names):
        n_q = int(n_templates) if np.ndim(n_templates) == 0 else int(n_templates[c])
        s = sorted_scores[bounds[c] : bounds[c + 1]]
        if s.size:
            q10, q50, q90 = (float(v) for v in np.quantile(s, [0.1, 0.5, 0.9]))
            top = float(s[:TOP_N].mean())
            stats.append(ClassStats(name, n_q, int(raw_hits_per_class[c]), int(s.size), int(excl[c]),
                                    round(top, 4), round(q10, 4), round(q50, 4), round(q90, 4), round(float(s[0]), 4)))
        else:
            stats.append(ClassStats(name, n_q, int(raw_hits_per_class[c]), 0, 0, None, None, None, None, None))
    return stats, flag_low_coverage(stats, margin)


def flag_low_coverage(stats: list[ClassStats], margin: float = DEFAULT_MARGIN,
                      exempt: frozenset[str] = frozenset()) -> list[str]:
    """Set ``low_coverage`` per the module's rule; return one warning line per flagged class. Classes in
    ``exempt`` (searched on another similarity scale: retrieval_service.examples) are neither part of the
    median nor compared to it; they are flagged only when they retrieved nothing."""
    warnings: list[str] = []
    scored = np.array([s.coverage for s in stats if s.coverage is not None and s.name not in exempt],
                      dtype=np.float64)
    median = float(np.median(scored)) if scored.size else 0.0
    spread = 1.4826 * float(np.median(np.abs(scored - median))) if scored.size else 0.0
    cut = median - max(SPREAD_FACTOR * spread, margin)
    for s in stats:
        if s.coverage is None:
            s.low_coverage = True
            warnings.append(f"class {s.name!r} retrieved nothing (threshold too high, or the corpus lacks it)")
        elif scored.size >= 3 and s.name not in exempt and s.coverage < cut:
            s.low_coverage = True
            warnings.append(f"class {s.name!r} has low coverage: its best pairs score {s.coverage:.3f}, "
                            f"task median {median:.3f} (cut {cut:.3f}); the corpus may barely cover it")
    return warnings
