"""Task retrieval: class names in, one merged image-text subset out (REACT eq. 2.1).

    retriever = TaskRetriever(Searcher(index_dir), load_index_model(searcher))
    result = retriever.run(validate_spec(["cat", "dog"], "imagenet", k=50, mode="t2i"))  # retrieval_service.spec
    write_subset(result, "subset.parquet")

For every class and template the query ``template.format(class)`` is encoded
with the index's own model and searched (``t2i`` on the image index, ``t2t``
on the text index, or ``both``). All hits are then merged into one row per
corpus pair -- deduplicated across templates *and* classes, labelled with
every class and query that found it -- and near-duplicate images among the
retrieved pairs are collapsed into their best-scoring member (see
``retrieval_service.dedup``). Queries go through in chunks, so memory holds
only the flat hit arrays (16 bytes a hit: 64 MB for 4M hits).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from react.errors import ReactError
from react.schemas import SAFETY_COLUMNS, SUBSET_SCHEMA, SUBSET_TASK_KEY, write_parquet
from retrieval_service.abundance import Abundance
from retrieval_service.coverage import (ABSOLUTE_RULE, LOW_COVERAGE_RULE, ClassStats, alias_stats, class_stats,
                                        count_warnings, flag_not_covered)
from retrieval_service.dedup import NearDuplicates
from retrieval_service.examples import EXAMPLE_BATCH, QueryPlan, comparable_stats, encode_examples, plan_queries
from retrieval_service.exclude import Exclusion
from retrieval_service.merge import Hits, collapse_rows, from_search, merge
from retrieval_service.quota import drop_labels, quota_cuts
from retrieval_service.spec import MODE_INDEX, TaskSpec

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
EXCLUDE_BLOCK = 65_536  # retrieved rows whose vectors are read at a time
StageTimer = Callable[[str, float], None]     # (stage, seconds): encode, search, metadata, dedup


class TaskCancelled(ReactError):
    """The task was cancelled (its job deleted) while running."""


@dataclass
class TaskResult:
    table: pa.Table               # SUBSET_SCHEMA columns first, then extras
    stats: list[ClassStats]
    warnings: list[str]
    summary: dict                 # counts and timings
    calibration: dict | None = None  # per modality index searched: what its similarities mean (index.calibration)

    def report(self) -> dict:
        return {"summary": self.summary, "classes": [s.to_json() for s in self.stats], "warnings": self.warnings,
                "low_coverage_rule": LOW_COVERAGE_RULE, "absolute_coverage_rule": ABSOLUTE_RULE,
                "calibration": self.calibration}


def resolve_model_spec(spec: str, index_dir: Path) -> tuple[str, str | None]:
    """``(model, pretrained)`` for load_model from an index's recorded model: a model directory
    (relative paths also tried against the index folder's ancestors) or ``name:tag``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path), None
    if not path.is_absolute():
        for base in Path(index_dir).resolve().parents:
            if (base / path).is_dir():
                return str(base / path), None
    if ":" in spec and not spec.startswith(("hf-hub:", "local-dir:")):
        name, tag = spec.rsplit(":", 1)
        return name, tag
    return spec, None


def load_index_model(searcher, model: str | None = None, pretrained: str | None = None, device: str | None = None):
    """The model an index was built with (or ``model`` if given), checked against the index."""
    from react.models import load_model

    spec = model or searcher.model
    if not spec:
        raise ReactError(f"index {searcher.root} records no model; pass one explicitly")
    # A given ``name:tag`` (e.g. ViT-L-14:openai for a LAION index) splits like a recorded one.
    name, tag = (str(spec), pretrained) if model and pretrained else resolve_model_spec(str(spec), searcher.root)
    loaded = load_model(name, pretrained=tag, device=device)
    searcher.check_model(loaded)
    return loaded


class TaskRetriever:
    """Runs tasks against one opened index and its model. Thread-safe for concurrent ``run`` calls."""

    def __init__(self, searcher, model=None, encode: Callable[[list[str]], np.ndarray] | None = None,
                 timer: StageTimer | None = None) -> None:
        self.searcher = searcher
        self.model = model
        self._encode = encode
        self.timer = timer or (lambda stage, seconds: None)
        self.dups = NearDuplicates(searcher)

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        if self._encode is not None:
            return self._encode(texts)
        if self.model is None:
            raise ReactError(f"index {self.searcher.root}: no text model is loaded, so text queries are unavailable")
        return self.model.encode_texts(texts, batch_size=batch_size).numpy()

    def _timed(self, stage: str, timings: dict, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.perf_counter() - started
            timings[stage] = timings.get(stage, 0.0) + spent
            self.timer(stage, spent)

    def run(self, spec: TaskSpec, progress: ProgressFn | None = None,
            cancelled: Callable[[], bool] | None = None, exclusion: Exclusion | None = None) -> TaskResult:
        """``exclusion``: the evaluation images ``spec.exclude`` names, embedded with this index's model."""
        progress = progress or (lambda stage, done, total: None)
        missing = [m for m in MODE_INDEX[spec.mode] if m not in self.searcher.modalities]
        if missing:
            raise ReactError(f"mode {spec.mode} needs the {missing[0]} index, which {self.searcher.root} lacks "
                             f"(it has {', '.join(self.searcher.modalities)})")
        started = time.perf_counter()
        timings: dict[str, float] = {}
        plan = plan_queries(spec)  # names, then aliases, then example images (retrieval_service.examples)
        queries, query_class, n_t, n_classes = plan.labels, plan.query_class, len(spec.templates), len(spec.classes)
        parts: list[Hits] = []
        calibration = self._calibration(spec, timings)
        # Pairs above the task's threshold if it has one, else above the calibrated cut (per modality).
        count_cuts = ({m: c["cut"] for m, c in calibration.items()} if spec.threshold is None
                      else {m: float(spec.threshold) for m in MODE_INDEX[spec.mode]})
        abundance = Abundance(len(spec.classes), query_class, spec.k, count_cuts)
        progress("search", 0, len(queries))
        for lo in range(0, len(plan.texts), spec.chunk):
            if cancelled and cancelled():
                raise TaskCancelled("task cancelled")
            batch = plan.texts[lo : lo + spec.chunk]
            vecs = self._timed("encode", timings, self.encode, batch, spec.batch_size)
            for modality in MODE_INDEX[spec.mode]:
                # the batched IVF scan counts the pairs above the cut from the scores it computes anyway
                scores, rows, ranges = self._timed("search", timings, self.searcher.search_range, vecs, spec.k,
                                                   modality=modality, above=abundance.radius(modality),
                                                   max_hits=abundance.room())
                self._timed("count", timings, abundance.add, self.searcher, modality, lo, vecs, scores, rows, ranges)
                parts.append(self._kept(from_search(scores, rows, lo), spec))
            progress("search", min(lo + spec.chunk, len(queries)), len(queries))
        if plan.images:
            parts.extend(self._search_examples(plan, spec, timings, progress, cancelled))
        hits = Hits.concat(parts)
        del parts
        raw_per_class = np.bincount(query_class[hits.query], minlength=n_classes)
        named = plan.query_name[hits.query]
        raw_per_name = np.bincount(named[named >= 0], minlength=len(plan.names))

        def merged_hits(hits: Hits):
            return self._timed("merge", timings, merge, hits, n_t, len(queries), spec.include_queries, query_class)

        progress("merge", 0, 1)
        merged = merged_hits(hits)
        distinct = len(merged)
        excluded = np.zeros(len(spec.classes), np.int64)
        if exclusion is not None and len(merged):
            progress("exclude", 0, 1)
            drop = self._timed("exclude", timings, self._contaminated, merged.row, exclusion, spec.exclude_threshold)
            if drop.size:
                gone = np.isin(hits.row, drop)
                pairs = np.unique(np.stack([hits.row[gone], query_class[hits.query[gone]].astype(np.int64)]), axis=1)
                excluded = np.bincount(pairs[1], minlength=n_classes)
                hits = hits.select(~gone)
                merged = merged_hits(hits)
        unique_before = len(merged)
        groups: dict[int, int] = {}
        if spec.dedup_threshold is not None and len(merged) > 1:
            if cancelled and cancelled():
                raise TaskCancelled("task cancelled")
            progress("dedup", 0, 1)
            edges = self._timed("dedup", timings, self.dups.edges, merged.row, spec.dedup_threshold)
            if edges is not None and edges[0].size:
                hits, groups = collapse_rows(hits, merged.row, merged.similarity, *edges)
                merged = merged_hits(hits)
        cut = np.zeros(n_classes, np.int64)
        before_quota, n_hits = len(merged), len(hits)
        if spec.per_class is not None and len(merged):
            keys, cut = quota_cuts(merged, n_classes, spec.per_class)
            if keys.size:
                hits = drop_labels(hits, query_class, n_classes, keys)
                merged = merged_hits(hits)
                kept = set(merged.row.tolist())  # a group whose keeper every class cut left with it
                groups = {r: n for r, n in groups.items() if r in kept}
        progress("metadata", 0, 1)
        table = self._timed("metadata", timings, self._table, merged, spec, queries, groups)
        stats, warnings = class_stats(merged, spec.classes, plan.per_class, raw_per_class, spec.coverage_margin)
        if plan.images:  # similarity figures on the text queries' scale, so classes compare
            stats, warnings = comparable_stats(stats, hits, plan, spec)
        for row, n, c in zip(stats, excluded.tolist(), cut.tolist()):
            row.excluded, row.cut = int(n), int(c)
        warnings += alias_stats(hits, plan.names, plan.query_name, n_t, raw_per_name, stats, spec.coverage_margin)
        coverage_cut = max((c["cut"] for c in calibration.values()), default=None)
        warnings += flag_not_covered(stats, coverage_cut)
        if count_cuts:
            for row, counted in zip(stats, abundance.per_class()):
                for key, value in counted.items():
                    setattr(row, key, value)
            warnings += count_warnings(stats, max(count_cuts.values()))
        if spec.dedup_threshold is not None and self.dups.unavailable:
            warnings.insert(0, self.dups.unavailable)
        summary = {"index": str(self.searcher.root), "model": self.searcher.model, "classes": len(spec.classes),
                   "templates": n_t, "queries": len(queries), "k": spec.k, "mode": spec.mode,
                   "examples": len(plan.images), "example_mode": spec.example_mode if plan.images else None,
                   "threshold": spec.threshold, "dedup_threshold": spec.dedup_threshold, "hits": int(n_hits),
                   "unique_pairs": distinct, "near_duplicates_collapsed": unique_before - before_quota,
                   "exclude": list(exclusion.names) if exclusion is not None else [],
                   "exclude_threshold": spec.exclude_threshold if exclusion is not None else None,
                   "excluded_images": sum(exclusion.sizes.values()) if exclusion is not None else 0,
                   "excluded": distinct - unique_before, "aliases": len(plan.names) - n_classes,
                   "per_class": spec.per_class, "quota_cut": int(cut.sum()),
                   "quota_rows_dropped": before_quota - len(merged),
                   "rows": len(merged), "coverage_cut": coverage_cut, "count_similarity": count_cuts or None,
                   "count_method": ", ".join(sorted(abundance.methods)) or None,
                   "seconds": round(time.perf_counter() - started, 3),
                   "stage_seconds": {k: round(v, 3) for k, v in timings.items()}}
        result = TaskResult(table, stats, spec.warnings + warnings, summary,
                            {m: _brief(c) for m, c in calibration.items()})
        meta = {SUBSET_TASK_KEY: json.dumps({"spec": spec.to_json()} | result.report())}
        result.table = table.replace_schema_metadata(meta)
        progress("done", 1, 1)
        return result

    def _calibration(self, spec: TaskSpec, timings: dict) -> dict[str, dict]:
        """Each searched modality index's calibration (computed on the index's first task when not stored)."""
        found = {}
        for modality in MODE_INDEX[spec.mode]:
            cal = self._timed("calibrate", timings, self.searcher.calibration, modality)
            if cal is not None:
                found[modality] = cal
        return found

    @staticmethod
    def _kept(hits: Hits, spec: TaskSpec) -> Hits:
        return hits.select(hits.score >= spec.threshold) if spec.threshold is not None else hits

    def _search_examples(self, plan: QueryPlan, spec: TaskSpec, timings: dict, progress: ProgressFn,
                         cancelled: Callable[[], bool] | None) -> list[Hits]:
        """The example images' hits: encoded with the index's model, searched image -> image."""
        if "image" not in self.searcher.modalities:
            raise ReactError(f"example images are searched on the image index, which {self.searcher.root} lacks "
                             f"(it has {', '.join(self.searcher.modalities)})")
        first, parts = len(plan.texts), []
        labels = plan.labels[first:]
        for lo in range(0, len(plan.images), EXAMPLE_BATCH):
            if cancelled and cancelled():
                raise TaskCancelled("task cancelled")
            vecs = self._timed("encode", timings, encode_examples, self.model, plan.images[lo : lo + EXAMPLE_BATCH],
                               labels[lo : lo + EXAMPLE_BATCH])
            scores, rows = self._timed("search", timings, self.searcher.search, vecs, spec.k, modality="image",
                                       query_modality="image")
            parts.append(self._kept(from_search(scores, rows, first + lo), spec))
            progress("search", min(first + lo + EXAMPLE_BATCH, plan.n_queries), plan.n_queries)
        return parts

    def _contaminated(self, rows: np.ndarray, exclusion: Exclusion, threshold: float) -> np.ndarray:
        """The ``rows`` whose image is within ``threshold`` of an excluded image."""
        out = []
        for lo in range(0, len(rows), EXCLUDE_BLOCK):
            fetched = self.dups._vectors(rows[lo : lo + EXCLUDE_BLOCK])
            if fetched is None:
                raise ReactError(f"exclude: {self.searcher.root} has no image vectors to compare "
                                 "(no Flat-coded image index, no embedding folder)")
            out.append(rows[lo : lo + EXCLUDE_BLOCK][exclusion.too_close(*fetched, threshold)])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _table(self, merged, spec: TaskSpec, queries: list[str], groups: dict[int, int]) -> pa.Table:
        available = set(self.searcher.rowmeta.column_names)
        cols = [c for c in ("key", "url", "caption", "image_path", *SAFETY_COLUMNS) if c in available]
        meta = self.searcher.metadata(merged.row, columns=cols)
        n = len(merged)
        url = meta.column("url") if "url" in cols else meta.column("image_path") if "image_path" in cols \
            else pa.nulls(n, pa.string())
        columns = {
            "key": meta.column("key").cast(pa.string()),
            "url": url.cast(pa.string()),
            "caption": meta.column("caption").cast(pa.string()),
            "similarity": pa.array(merged.similarity, pa.float32()),
            "classes": _ragged(merged.classes.offsets, pa.array(spec.classes, pa.string()), merged.classes.values),
        }
        table = pa.table(columns, schema=SUBSET_SCHEMA)
        if spec.include_queries and merged.queries is not None:
            table = table.append_column("queries", _ragged(merged.queries.offsets, pa.array(queries, pa.string()),
                                                           merged.queries.values))
        table = table.append_column("hits", pa.array(merged.hits, pa.int32()))
        dup = np.ones(n, np.int32)
        if groups:
            keepers = np.fromiter(groups.keys(), np.int64, len(groups))
            sizes = np.fromiter(groups.values(), np.int32, len(groups))
            sorter = np.argsort(merged.row)
            pos = sorter[np.searchsorted(merged.row, keepers, sorter=sorter)]
            dup[pos] = sizes
        table = table.append_column("duplicates", pa.array(dup, pa.int32()))
        table = table.append_column("row", pa.array(merged.row, pa.int64()))
        if "image_path" in cols:
            table = table.append_column("image_path", meta.column("image_path").cast(pa.string()))
        for name in SAFETY_COLUMNS:  # as the corpus has them: react download --safety metadata reads them
            if name in cols:
                table = table.append_column(name, _safety_column(meta.column(name)))
        return table


def _safety_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A corpus safety column for the subset: large_string (the index's) as
    string, and a NaN score (pandas' missing value) as null -- the inline API
    answer is JSON, which has no NaN."""
    import pyarrow.compute as pc

    if pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    if pa.types.is_floating(column.type):
        return pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
    return column


def _brief(calibration: dict) -> dict:
    """What the report keeps of a calibration: the cut and the covered / null / matched quantiles."""
    return {k: calibration[k] for k in ("direction", "sample", "top_n", "cut_quantile", "cut", "covered", "null",
                                        "matched") if k in calibration}


def _ragged(offsets: np.ndarray, names: pa.Array, values: np.ndarray) -> pa.Array:
    """A list<string> column: row i holds ``names[values[offsets[i]:offsets[i+1]]]``."""
    values = names.take(pa.array(values))
    if offsets[-1] < 2**31 - 1:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)


def write_subset(result: TaskResult, path: str | os.PathLike) -> Path:
    """The subset parquet (atomic), readable by img2dataset; the task report rides in its schema metadata."""
    return write_parquet(result.table, path)


def read_subset_report(path: str | os.PathLike) -> dict:
    """The task report (summary, per-class stats, warnings) stored in a subset parquet."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(SUBSET_TASK_KEY.encode())
    if raw is None:
        raise ReactError(f"{path}: no task report in its metadata (not written by react retrieve?)")
    return json.loads(raw)
