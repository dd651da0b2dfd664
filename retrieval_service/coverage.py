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

A class's aliases (``screwdriver|screw driver|turnscrew``) get a row each
(:func:`alias_stats`): the subset pairs the alias found, how many of them
**only** it found among its class's names (what it adds), and its coverage
score. An alias is flagged **weak** when it found nothing or its coverage
lies more than ``margin`` below its class name's own: it retrieves something
else than the class (a homonym, a misspelling).

That rule is relative: a task the corpus covers nowhere passes it. The
**absolute** rule (``ABSOLUTE_RULE``) compares the same coverage score with
the index's own calibration (index.calibration): a class is **not covered**
when its score lies below the cut -- the 2.5 % quantile of the same
statistic for the corpus's own captions used as queries. With mode ``both``
the higher of the two directions' cuts applies. The table carries both flags,
and beside them how many pairs lie above the count's similarity
(retrieval_service.abundance).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from retrieval_service.merge import Hits, Merged
from retrieval_service.spec import DEFAULT_MARGIN

TOP_N = 10  # the same as index.calibration.TOP_N: the cut is calibrated on this statistic
SPREAD_FACTOR = 3.0
LOW_COVERAGE_RULE = (f"coverage = mean similarity of a class's {TOP_N} best unique pairs; flagged when it lies more "
                     f"than max({SPREAD_FACTOR:g} x 1.4826 x MAD, margin) below the task median, or the class "
                     "retrieved nothing")
ABSOLUTE_RULE = (f"not covered = the mean similarity of a class's {TOP_N} best unique pairs lies below the index's "
                 f"calibrated cut: the 2.5 % quantile of that statistic for the corpus's own captions used as queries "
                 f"(own pair left out), measured per index (t2i, t2t) when it is built or first loaded")


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
    cut: int = 0       # pairs beyond the per-class quota (retrieval_service.quota)
    aliases: list[dict] = field(default_factory=list)  # one entry per alias: alias_stats
    not_covered: bool | None = None        # the absolute rule; None: the index has no calibration
    pairs_above: int | None = None         # corpus pairs >= the count's similarity (retrieval_service.abundance)
    pairs_above_lower_bound: bool = False  # counted from the top-k tail with the k-th hit still above the cut
    k_too_small: bool = False              # a query of the class has more than k pairs above the cut
    almost_nothing: bool = False           # fewer than abundance.ALMOST_NOTHING pairs above the cut

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


def alias_stats(hits: Hits, names: list[tuple[str, int]], query_name: np.ndarray, n_templates: int,
                raw_hits_per_name: np.ndarray, stats: list[ClassStats], margin: float = DEFAULT_MARGIN) -> list[str]:
    """Fill each class's ``aliases`` entries from the subset's ``hits`` (``query_name[q]``: the name query q
    searched, an index into ``names``, -1 for an example image; ``names``: (name, class) with the class
    names first, as ``TaskSpec.names``); return one warning per weak alias."""
    n_classes, n_names = len(stats), len(names)
    if n_names == n_classes:
        return []
    name_class = np.array([c for _, c in names], np.int64)
    hits = hits.select(query_name[hits.query] >= 0)  # text queries only: an alias is judged by its own hits
    order = np.argsort(-hits.score, kind="stable")
    name = query_name[hits.query[order]].astype(np.int64)
    pair_key, first = np.unique(hits.row[order] * n_names + name, return_index=True)  # best hit per (pair, name)
    p_name, p_score = pair_key % n_names, hits.score[order][first]
    _, inverse, count = np.unique((pair_key // n_names) * n_classes + name_class[p_name], return_inverse=True,
                                  return_counts=True)
    only = count[inverse.reshape(-1)] == 1  # no other name of the same class found this pair
    found = np.bincount(p_name, minlength=n_names)
    alone = np.bincount(p_name[only], minlength=n_names)
    by_name = np.lexsort((-p_score, p_name))
    sorted_name = p_name[by_name]
    top = (np.arange(len(by_name)) - np.searchsorted(sorted_name, sorted_name, side="left")) < TOP_N
    sums = np.bincount(sorted_name[top], weights=p_score[by_name][top], minlength=n_names)
    tops = np.bincount(sorted_name[top], minlength=n_names)
    cover = [round(float(sums[g] / tops[g]), 4) if tops[g] else None for g in range(n_names)]
    warnings: list[str] = []
    for g in range(n_classes, n_names):
        alias, c = names[g]
        own = cover[c]
        weak = cover[g] is None or (own is not None and cover[g] < own - margin)
        stats[c].aliases.append({"alias": alias, "queries": n_templates, "hits": int(raw_hits_per_name[g]),
                                 "unique": int(found[g]), "only": int(alone[g]), "coverage": cover[g], "weak": weak})
        if cover[g] is None:
            warnings.append(f"alias {alias!r} of class {stats[c].name!r} retrieved nothing")
        elif weak:
            warnings.append(f"alias {alias!r} of class {stats[c].name!r} is weak: its best pairs score "
                            f"{cover[g]:.3f}, the class name's {own:.3f}; it may retrieve something else")
    return warnings


def flag_not_covered(stats: list[ClassStats], cut: float | None) -> list[str]:
    """Set ``not_covered`` per ``ABSOLUTE_RULE`` (left None without a cut); one warning line per flagged class."""
    warnings: list[str] = []
    if cut is None:
        return warnings
    for s in stats:
        s.not_covered = s.coverage is None or s.coverage < cut
        if s.not_covered and s.coverage is not None:
            warnings.append(f"class {s.name!r} is not covered by this corpus: its best pairs score "
                            f"{s.coverage:.3f}, below the index's calibrated cut {cut:.3f}")
    return warnings


def count_warnings(stats: list[ClassStats], similarity: float) -> list[str]:
    """A line per class the corpus has (almost) nothing for, and one naming the classes k is too small for."""
    out = [f"class {s.name!r}: the corpus holds only {s.pairs_above} pairs at similarity >= {similarity:.3f}"
           for s in stats if s.pairs_above is not None and s.almost_nothing]
    short = [s.name for s in stats if s.k_too_small]
    if short:
        named = ", ".join(repr(n) for n in short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
        out.append(f"k is too small for {len(short)} class(es) ({named}): more pairs than k lie at similarity "
                   f">= {similarity:.3f}")
    return out
