"""The report's headline: one line per part of a run's ``summary.json`` that it has
(``react demo`` writes every part; a user's own summary may hold any of them)."""
from __future__ import annotations

from downstream.report.results import is_number


def summary_lines(summary: dict) -> list[str]:
    """The run's headline from ``summary.json``: whatever parts it has."""
    lines = []
    corpus = summary.get("corpus")
    if isinstance(corpus, dict):
        parts = [f"{corpus[k]:,} {k}" for k in ("pretraining", "retrieval", "downstream") if is_number(corpus.get(k))]
        if is_number(corpus.get("downstream_classes")):
            parts.append(f"{corpus['downstream_classes']} downstream classes")
        if parts:
            lines.append("corpus: " + ", ".join(parts))
    for name, entry in (summary.get("index") or {}).items() if isinstance(summary.get("index"), dict) else []:
        if isinstance(entry, dict) and "factory" in entry:
            recall = f", recall@{entry.get('k')} {entry['recall']:.3f}" if is_number(entry.get("recall")) else ""
            count = f" over {entry['count']:,} rows" if is_number(entry.get("count")) else ""
            lines.append(f"{name} index: {entry['factory']}{count}{recall}")
    subset = summary.get("subset")
    if isinstance(subset, dict) and is_number(subset.get("rows")):
        extra = f" from {subset['unique_pairs']:,} unique pairs" if is_number(subset.get("unique_pairs")) else ""
        lines.append(f"retrieved subset: {subset['rows']:,} rows{extra}")
    download = summary.get("download")
    if isinstance(download, dict) and is_number(download.get("downloaded")):
        lines.append(f"downloaded: {download['downloaded']:,} of {download.get('requested', '?')} images")
    lines += shaping_lines(summary)
    timings = summary.get("timings_s")
    if isinstance(timings, dict) and timings:
        total = sum(v for v in timings.values() if is_number(v))
        lines.append("timings: " + ", ".join(f"{k} {v:g} s" for k, v in timings.items() if is_number(v))
                     + f" (total {total:.1f} s)")
    return lines


def _get(d: object, *keys: str):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def shaping_lines(summary: dict) -> list[str]:
    """Decontamination, coverage, aliases, example images, safety, link rot and the suite."""
    lines = []
    subset, download = summary.get("subset"), summary.get("download")
    if is_number(_get(subset, "excluded")):
        lines.append(f"decontamination: {subset['excluded']} retrieved pairs dropped as copies of the "
                     f"{subset.get('excluded_images', '?')} evaluation images")
    flagged = _get(subset, "coverage", "not_covered")
    if isinstance(flagged, list):
        lines.append(f"classes not covered by the corpus (absolute rule): {', '.join(flagged) or 'none'}")
    aliases = _get(subset, "with_aliases")
    if isinstance(aliases, dict) and is_number(aliases.get("rows")):
        weak = aliases.get("weak_aliases") or []
        lines.append(f"with {aliases.get('aliases')} aliases and at most {aliases.get('per_class')} pairs per class: "
                     f"{aliases['rows']:,} rows; weak aliases: {', '.join(weak) or 'none'}")
    examples = _get(subset, "with_examples")
    if isinstance(examples, dict) and is_number(examples.get("rows")):
        lines.append(f"with {examples.get('examples')} example images ({examples.get('per_class')} per class, "
                     f"{examples.get('split')} split): {examples['rows']:,} rows")
    mode = _get(download, "safety", "mode")
    if isinstance(mode, str):
        lines.append(f"safety filter: {mode}")
    rot = _get(download, "link_rot")
    if isinstance(rot, dict) and is_number(rot.get("downloaded")):
        lines.append(f"link rot ({100 * rot['rot_fraction']:.0f} % of urls gone): {rot['downloaded']} of "
                     f"{rot['requested']} kept; one top-up round of {rot.get('topped_up')} pairs: "
                     f"{rot.get('downloaded_after')} ({rot.get('short_after')} short)")
    suite = summary.get("suite")
    if isinstance(suite, dict) and isinstance(suite.get("average"), dict):
        avg = suite["average"]
        lines.append(f"evaluation suite ({suite.get('split')}): average gain {100 * avg['gain']:+.1f} points, "
                     f"95 % interval [{100 * avg['gain_ci95'][0]:+.1f}, {100 * avg['gain_ci95'][1]:+.1f}]; "
                     f"{suite.get('wins')} wins / {suite.get('ties')} ties / {suite.get('losses')} losses")
    lines += dense_lines(summary.get("dense"))
    return lines


def dense_lines(dense: object) -> list[str]:
    """Detection and segmentation: the base against its floor, the customized seeds' gain with its interval."""
    lines = []
    floors = {"detection": ("base_crop", "crop-and-encode"), "segmentation": ("all_background", "all-background")}
    for task, (key, floor_name) in floors.items():
        entry = _get(dense, task)
        gain = _get(entry, "gain")
        if not (isinstance(entry, dict) and isinstance(gain, dict) and is_number(entry.get("base"))):
            continue
        floor = f" ({floor_name}: {100 * entry[key]:.2f}" if is_number(entry.get(key)) else ""
        versus = entry.get("base_roi_minus_crop")
        if floor and isinstance(versus, dict):
            floor += f"; RoI minus crop {_points(versus)}"
        floor += ")" if floor else ""
        lines.append(f"{task} {entry['metric']}: base {100 * entry['base']:.2f}{floor}; customized "
                     f"({len(entry.get('seeds') or [])} seeds) {_points(gain)}")
    return lines


def _points(interval: dict) -> str:
    lo, hi = interval["ci95"]
    return (f"{100 * interval['mean']:+.2f} points, 95 % interval [{100 * lo:+.2f}, {100 * hi:+.2f}]"
            + (" (contains 0)" if interval.get("contains_zero") else ""))
