"""``--safety classifier``: score the downloaded images, take the unsafe ones out of their shards.

A scorer is a callable ``score(images: list[bytes]) -> list[(p_unsafe, label)]``
(encoded images in, one probability in [0, 1] and a short label out per image),
made by a factory registered here under a name (``register_scorer``) or named
as ``MODULE:FACTORY`` on the command line. The built-in one, ``nudenet``, runs
NudeNet's ONNX detector (shipped inside the ``nudenet`` wheel: nothing is
fetched at run time) with onnxruntime on the CPU; it comes with the optional
``safety`` extra.

Each shard is scored once: its stats file gets a ``react_safety`` entry (the
scorer, threshold, and what it dropped) when the shard is done, and a shard
img2dataset redoes comes with a fresh stats file, so it is scored again. A
shard's three files are rewritten as a commit is made (download/shardsdir.py):
the stats file (the completion marker) goes first and comes back last, so a
run killed in between leaves a shard that the next ``--resume`` redoes.
"""
from __future__ import annotations

import copy
import importlib
import io
import json
import tarfile
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from react.errors import ReactError
from react.images import read_span
from react.progress import progress
from react.schemas import SAFETY_DROPPED_STATUS, SHARD_SUBSET_KEY, write_text
from react.shards import TarMember, scan_tar, split_key

from download.safety import Drop
from download.shardsdir import ShardInfo, ShardsDir, _place, shard_files

Scorer = Callable[[list[bytes]], list[tuple[float, str]]]
STATS_KEY = "react_safety"
BATCH = 16  # images scored at once

# NudeNet's detector classes that make an image unsafe; the others (faces,
# covered parts, feet, belly, armpits, male chest) do not.
NUDENET_UNSAFE = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                  "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")


def _nudenet() -> Scorer:
    try:
        from nudenet import NudeDetector
    except ImportError:
        raise ReactError("--safety classifier: the nudenet scorer needs the safety extra "
                         "(pip install 'react-clip[safety]'), which is not installed") from None
    detector = NudeDetector()  # the 320n.onnx the wheel ships; CPU

    def score(images: list[bytes]) -> list[tuple[float, str]]:
        out = []
        for detections in detector.detect_batch(list(images), batch_size=len(images) or 1):
            unsafe = [d for d in detections if d["class"] in NUDENET_UNSAFE]
            best = max(unsafe, key=lambda d: d["score"], default=None)
            out.append((float(best["score"]), best["class"]) if best else (0.0, ""))
        return out

    return score


SCORERS: dict[str, Callable[[], Scorer]] = {"nudenet": _nudenet}


def register_scorer(name: str, factory: Callable[[], Scorer]) -> None:
    """Make ``--safety-scorer NAME`` build its scorer with ``factory()``."""
    SCORERS[name] = factory


def load_scorer(name: str) -> Scorer:
    """The scorer ``name`` names; ReactError (one line) when it cannot be had."""
    factory = SCORERS.get(name)
    if factory is None and ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ReactError(f"--safety-scorer {name}: cannot load it ({exc})") from None
    if factory is None:
        raise ReactError(f"--safety-scorer: unknown scorer {name!r} (registered: {', '.join(sorted(SCORERS))}; "
                         "or MODULE:FACTORY)")
    return factory()


def classify_shards(folder: ShardsDir, scorer: Scorer, scorer_name: str, max_score: float) -> None:
    """Score every committed shard not scored yet; take out the images above ``max_score``."""
    todo = [s for s in sorted(folder.shards) if STATS_KEY not in _stats(folder.root, s)]
    total = sum(folder.shards[s].successes for s in todo)
    if not todo:
        return
    with progress() as bar:
        task = bar.add_task(f"safety ({scorer_name})", total=total, unit="img")
        for shard_id in todo:
            folder.shards[shard_id] = _classify_shard(folder.root, shard_id, folder.shards[shard_id], scorer,
                                                      scorer_name, max_score,
                                                      lambda n: bar.advance(task, n))


def _stats(root: Path, shard_id: int) -> dict:
    return json.loads(shard_files(root, shard_id)[2].read_text())


def _classify_shard(root: Path, shard_id: int, info: ShardInfo, scorer: Scorer, scorer_name: str,
                    max_score: float, advance: Callable[[int], None]) -> ShardInfo:
    tar, parquet, stats_path = shard_files(root, shard_id)
    samples = [s for s in scan_tar(tar, want=("json",)) if isinstance(s.image, TarMember)]
    subset_key = {s.key: json.loads(s.files["json"]).get(SHARD_SUBSET_KEY) for s in samples}
    dropped: dict[str, tuple[float, str]] = {}  # sample key -> (score, label)
    for lo in range(0, len(samples), BATCH):
        batch = samples[lo : lo + BATCH]
        try:
            scores = scorer([read_span(s.image.tar, s.image.offset, s.image.size) for s in batch])
        except ReactError:
            raise
        except Exception as exc:  # a scorer's own failure, named with where it happened
            raise ReactError(f"--safety-scorer {scorer_name} failed on {tar.name} "
                             f"(samples {batch[0].key}..{batch[-1].key}): {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        if len(scores) != len(batch):
            raise ReactError(f"--safety-scorer {scorer_name}: {len(scores)} scores for {len(batch)} images")
        for s, (p, label) in zip(batch, scores):
            if not 0 <= p <= 1:
                raise ReactError(f"--safety-scorer {scorer_name}: score {p} for {tar.name}:{s.key} is outside [0, 1]")
            if p > max_score:
                dropped[s.key] = (float(p), str(label))
        advance(len(batch))
    stats = _stats(root, shard_id)
    stats[STATS_KEY] = {"scorer": scorer_name, "max_score": max_score, "checked": len(samples),
                        "dropped": [{SHARD_SUBSET_KEY: subset_key[k], "score": p, "label": label}
                                    for k, (p, label) in dropped.items()]}
    if not dropped:
        write_text(stats_path, json.dumps(stats, indent=4))
        return info
    stats["successes"] = int(stats["successes"]) - len(dropped)
    stats_path.unlink()  # the shard is incomplete until the new stats are in
    _place(tar, tar, lambda src, dst: _without_samples(src, dst, set(dropped)))
    _place(parquet, parquet, lambda src, dst: _mark_dropped(src, dst, dropped))
    write_text(stats_path, json.dumps(stats, indent=4))
    return ShardInfo(info.count, info.successes - len(dropped))


def _without_samples(src: Path, dst: Path, keys: set[str]) -> None:
    with tarfile.open(src, "r:") as tin, tarfile.open(dst, "w", format=tin.format) as tout:
        for member in tin:
            if split_key(member.name)[0] in keys:
                continue
            data = tin.extractfile(member).read() if member.isfile() else None
            tout.addfile(copy.copy(member), io.BytesIO(data) if data is not None else None)


def _mark_dropped(src: Path, dst: Path, dropped: dict[str, tuple[float, str]]) -> None:
    table = pq.read_table(src)
    keys = table.column("key").to_pylist()
    status = table.column("status").to_pylist()
    errors = table.column("error_message").to_pylist()
    for i, k in enumerate(keys):
        if k in dropped and status[i] == "success":
            p, label = dropped[k]
            status[i] = SAFETY_DROPPED_STATUS
            errors[i] = f"safety: score {p:.3f}{f' ({label})' if label else ''}"
    table = table.set_column(table.column_names.index("status"), "status", pa.array(status, pa.string()))
    table = table.set_column(table.column_names.index("error_message"), "error_message",
                             pa.array(errors, table.schema.field("error_message").type))
    pq.write_table(table, dst)


def classifier_drops(folder: ShardsDir) -> tuple[list[str], list[Drop]]:
    """The subset keys the classifier checked (kept or dropped) and the drops,
    over the committed shards; later shards (retry rounds) win for a key."""
    checked: dict[str, None] = {}
    drops: dict[str, Drop] = {}
    for shard_id in sorted(folder.shards):
        record = _stats(folder.root, shard_id).get(STATS_KEY)
        if record is None:
            continue
        parquet = pq.read_table(shard_files(folder.root, shard_id)[1], columns=[SHARD_SUBSET_KEY, "status"])
        for key, status in zip(parquet.column(SHARD_SUBSET_KEY).to_pylist(), parquet.column("status").to_pylist()):
            if status in ("success", SAFETY_DROPPED_STATUS):
                checked[key] = None
        for d in record["dropped"]:
            drops[d[SHARD_SUBSET_KEY]] = Drop(d[SHARD_SUBSET_KEY], "classifier", d["score"], d["label"] or None)
    return list(checked), list(drops.values())
