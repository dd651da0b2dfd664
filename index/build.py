"""``react index build``: one faiss index per modality, chosen and tuned by measurement.

1. Candidates (:func:`index.factory.auto_candidates`, or the forced
   ``--factory``) are built on a sample of at most ``sample_size`` rows and
   each is swept to the recall target on the real query distribution; the
   fastest that meets it wins. A corpus no bigger than the sample skips 2.
2. The winner is built over the whole folder, streaming parts (memory stays
   near the index size: vectors pass through once, a chunk at a time).
3. It is tuned again at full size -- knob settings do not transfer from a
   sample -- and written with ``index.json`` into a temporary folder that is
   renamed onto ``INDEX_DIR`` only when everything succeeded.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np

from index.defaults import (FACTORY, K, MODALITIES, MODALITY, N_QUERIES, SAMPLE_SIZE, SEED,
                            TARGET_RECALL)
from index.factory import Candidate, auto_candidates, bytes_per_vector, memory_budget, new_index, parse_factory, train_rows
from index.metadata import write_metadata
from index.query import QuerySet, reconstructor
from index.tune import Truth, bind, default_queries, ground_truth, load_queries, pick, sweep
from index.vectors import EmbeddingFolder
from react.errors import ReactError
from react.progress import console, progress
from react.schemas import INDEX_FORMAT, INDEX_JSON, atomic_dir, index_file, index_ids_file, ivfdata_file

SHIFT_SAMPLE = 50_000


def modalities_of(modality: str) -> tuple[str, ...]:
    if modality == "both":
        return MODALITIES
    if modality not in MODALITIES:
        raise ReactError(f"--modality must be image, text or both, got {modality!r}")
    return (modality,)


def check_args(target_recall: float, k: int, n_queries: int) -> None:
    if not 0 < target_recall <= 1:
        raise ReactError(f"--target-recall must be in (0, 1], got {target_recall}")
    if k < 1:
        raise ReactError(f"--k must be >= 1, got {k}")
    if n_queries < 1:
        raise ReactError(f"--n-queries must be >= 1, got {n_queries}")


def modality_gap(folder: EmbeddingFolder, n: int = SHIFT_SAMPLE, seed: int = 0) -> np.ndarray:
    """Mean image embedding minus mean text embedding over a sample of pairs."""
    rows = folder.sample_rows(n, seed=seed + 2)
    img_rows, img = folder.gather("image", rows)
    txt_rows, txt = folder.gather("text", rows)
    both = np.intersect1d(img_rows, txt_rows)
    gap = img[np.isin(img_rows, both)].mean(axis=0) - txt[np.isin(txt_rows, both)].mean(axis=0)
    return gap.astype(np.float32)


def variants(candidate: Candidate) -> list[dict]:
    """Search variants worth measuring. Measured on CLIP-like T2I queries
    (benchmarks/FINDINGS.md): re-ranking an over-fetched list exactly is what
    lets compressed codes reach the target (SQ8 at 200k: 0.947 -> 0.958 at
    nprobe 128); for Flat codes scores are exact already and over-fetching
    only costs time; shifting the query by the modality gap lost everywhere
    (IVF4096 nprobe 256: 0.993 -> 0.967), so it is available (``shift``) but
    not tried. PQ codes rank coarsely: OPQ64/PQ64x8 at 300k CLIP-like rows
    reached recall@50 0.894 with a 10x re-rank even probing every list, so a
    40x re-rank is measured too and the tuner keeps whichever meets the target
    faster. SQ8 codes rank almost exactly (512 dims x 8 bits), and at 10M rows
    the re-rank's random reads of the float16 parts cost as much as the
    batched scan itself (benchmarks/scale_bench.py), so SQ8 is measured
    without re-ranking, with a 2x and 4x one, and scanned in int8 (``scan``,
    index.batched_ivf: a few times faster per list, slightly coarser), with the
    quantizer's lists or the exact nearest ones (``probes``: at 10M rows, nprobe 32,
    recall@50 0.896 -> 0.908 for the cost of one GEMM against the centroids)."""
    if candidate.exact_codes:
        return [{}]
    if "PQ" in candidate.factory:
        return [{"rerank": 10}, {"rerank": 40}]
    int8 = [{"scan": "int8"}, {"scan": "int8", "probes": "exact"}] if candidate.knob == "nprobe" else []  # IVF only
    return [{}, *int8, {"rerank": 2}, {"rerank": 4}]


class Built:
    """A built index with what searching it needs."""

    def __init__(self, candidate: Candidate, index: faiss.Index, rows: np.ndarray | None, seconds: float) -> None:
        """``rows``: the global row of each faiss id; None when faiss ids are the rows themselves."""
        self.candidate, self.index, self.seconds = candidate, index, seconds
        self.ids = None if rows is None or np.array_equal(rows, np.arange(len(rows))) else rows
        self.count = int(index.ntotal)

    def searcher(self, folder: EmbeddingFolder, modality: str, shift: np.ndarray | None):
        if self.candidate.exact_codes:
            stored = reconstructor(self.index)
        else:
            ids = self.ids
            stored = lambda fids: folder.take(modality, ids[fids] if ids is not None else fids)  # noqa: E731
        return bind(self.index, ids=self.ids, shift=shift, stored=stored)


def build_one_index(candidate: Candidate, folder: EmbeddingFolder, modality: str, chunks, n: int,
                    seed: int = 0, label: str = "") -> Built:
    t0 = time.perf_counter()
    index = new_index(candidate, folder.dim)
    need = train_rows(candidate, n)
    if need and not index.is_trained:
        use_gpu_clustering(index, folder.dim)
        _, sample = folder.gather(modality, folder.sample_rows(need, seed=seed + 3))
        with console.status(f"training {candidate.factory} on {len(sample):,} vectors"):
            index.train(sample)
    rows = []
    with progress() as bar:
        task = bar.add_task(f"adding to {candidate.factory}{label}", total=n, unit="vec")
        for chunk_rows, vecs in chunks():
            index.add(vecs)
            rows.append(chunk_rows)
            bar.advance(task, len(chunk_rows))
    rows_all = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if len(rows_all) == 0:
        raise ReactError(f"{folder.root}: no usable {modality} embeddings (all NaN or zero)")
    return Built(candidate, index, rows_all, time.perf_counter() - t0)


def build_on_disk(winner: Candidate, folder: EmbeddingFolder, modality: str, tmp: Path, out: Path, budget: int,
                  seed: int, spark_master: str | None) -> Built:
    """The full index with its lists merged on disk (index.ondisk); partial work is kept
    beside ``out`` until the merge succeeds, so a rerun resumes."""
    from index.ondisk import build_ondisk
    from index.searcher import no_list_prefetch

    work = out.parent / f".{out.name}.{modality}.partials"
    index, seconds = build_ondisk(winner, folder, modality, index_file(tmp, modality), budget, work, seed,
                                  spark_master)
    no_list_prefetch(index)
    return Built(winner, index, None, seconds)


def use_gpu_clustering(index: faiss.Index, dim: int) -> None:
    """k-means of an inverted file's coarse quantizer on the GPU(s), when faiss has them."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() < 1:
        return
    ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(dim))


def _sample_chunks(folder: EmbeddingFolder, modality: str, rows: np.ndarray):
    kept, vecs = folder.gather(modality, rows)
    return lambda: iter([(kept, vecs)])


def select(cands: list[Candidate], folder: EmbeddingFolder, modality: str, queries: QuerySet, k: int,
           target: float, sample_size: int, shift, seed: int
           ) -> tuple[Built | None, list | None, Candidate, list[dict]]:
    """Measure each candidate on a sample; returns (the winner and its sweep if
    they cover the whole folder, the winning candidate, the measurements)."""
    whole = folder.count <= sample_size
    if whole:
        chunks, n = (lambda: folder.stream(modality)), folder.count
    else:
        rows = folder.sample_rows(sample_size, seed=seed + 4, exclude=queries.exclude)
        chunks, n = _sample_chunks(folder, modality, rows), len(rows)
    truth = ground_truth(chunks, queries, k)
    report, best = [], None
    for cand in cands:
        built = build_one_index(cand, folder, modality, chunks, n, seed, f" ({modality}, {n:,} rows)")
        points = sweep(built.searcher(folder, modality, shift), cand, queries, truth, k, n, target,
                       variants(cand))
        point, met = pick(points, target)
        report.append({"factory": cand.factory, "rows": n, "build_s": round(built.seconds, 2),
                       "bytes_per_vector": round(bytes_per_vector(cand.factory, folder.dim), 1),
                       "params": point.params, "recall": round(point.recall, 4), "qps": round(point.qps, 1),
                       "target_met": met})
        console.print(f"  {cand.factory}: recall@{k} {point.recall:.3f} at {point.params}, "
                      f"{point.qps:,.0f} q/s, built in {built.seconds:.1f} s")
        key = (met, point.qps if met else point.recall)
        if best is None or key > best[0]:
            best = (key, cand, (built, (truth, points)) if whole else (None, None))
    assert best is not None
    return best[2][0], best[2][1], best[1], report


def tune_built(built: Built, folder: EmbeddingFolder, modality: str, queries: QuerySet, k: int, target: float,
               shift, measured: tuple[Truth, list] | None = None) -> dict:
    """Tune a full index (or take the sweep already ``measured`` on it);
    returns the index.json entry's measured fields."""
    if measured is None:
        truth = ground_truth(lambda: folder.stream(modality), queries, k)
        points = sweep(built.searcher(folder, modality, shift), built.candidate, queries, truth, k, built.count,
                       target, variants(built.candidate))
    else:
        truth, points = measured
    point, met = pick(points, target)
    if not met:
        console.print(f"[yellow]warning: {modality} index {built.candidate.factory} reaches recall@{k} "
                      f"{point.recall:.3f} at best, below the target {target}")
    return {"search_params": point.params,
            "recall": {"k": k, "value": round(point.recall, 4), "lower_bound": round(point.lower, 4),
                       "queries": queries.name, "n": len(queries)},
            "qps": round(point.qps, 1), "exact_qps": round(truth.exact_qps, 1),
            "speedup": round(point.qps / max(truth.exact_qps, 1e-9), 2),
            "target_recall": target, "target_met": met,
            "sweep": [p.to_json() for p in points]}


def build_index(emb_dir: str | os.PathLike, out: str | os.PathLike, *, modality: str = MODALITY,
                factory: str = FACTORY, target_recall: float = TARGET_RECALL, k: int = K, queries: str | None = None,
                n_queries: int = N_QUERIES, memory_gb: float | None = None, sample_size: int = SAMPLE_SIZE,
                seed: int = SEED, overwrite: bool = False, on_disk: bool = False,
                spark_master: str | None = None) -> dict:
    """Build, tune and write the index folder; returns its index.json content.

    ``on_disk`` merges inverted lists into memory-mapped files in bounded
    memory (compressed codes that do not fit ``memory_gb`` go there anyway);
    ``spark_master`` builds the partial indices on Spark (implies ``on_disk``)."""
    check_args(target_recall, k, n_queries)
    if memory_gb is not None and not memory_gb > 0:
        raise ReactError(f"--memory-gb must be > 0, got {memory_gb}")
    mods = modalities_of(modality)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ReactError(f"{out} already exists; pass --overwrite to replace it")
    folder = EmbeddingFolder.open(emb_dir)
    if folder.count == 0:
        raise ReactError(f"empty embedding folder: {emb_dir} holds no rows")
    budget = int(memory_gb * 2**30) if memory_gb else memory_budget()
    on_disk = on_disk or bool(spark_master)
    if spark_master:
        from index.spark_build import check_master

        check_master(spark_master)
    cands = ([parse_factory(factory, folder.dim, folder.count, budget, on_disk)] if factory != "auto"
             else auto_candidates(folder.count, folder.dim, budget, on_disk=on_disk, ivf_only=bool(spark_master)))
    shift = modality_gap(folder) if "image" in mods else None
    with console.status("checksumming the embedding folder"):
        checksum = folder.checksum()
    entries = {}
    with atomic_dir(out) as tmp:
        write_metadata(folder, tmp)
        for mod in mods:
            qs = load_queries(queries, folder.dim, n_queries, seed) if queries else default_queries(folder, mod, n_queries, seed)
            console.print(f"[bold]{mod} index[/]: {folder.count:,} rows, dim {folder.dim}, "
                          f"{len(qs)} {qs.name} queries, target recall@{k} {target_recall}")
            entries[mod] = _build_modality(folder, mod, qs, cands, tmp, out, k=k, target_recall=target_recall,
                                           sample_size=sample_size, shift=shift, budget=budget, seed=seed,
                                           spark_master=spark_master)
        primary = entries[mods[0]]
        manifest = {"format": INDEX_FORMAT, "modality": modality, "model": folder.model,
                    "model_id": folder.model_id, "dim": folder.dim, "metric": "inner_product",
                    "rows": folder.count, "count": primary["count"], "factory": primary["factory"],
                    "search_params": primary["search_params"], "recall": primary["recall"], "qps": primary["qps"],
                    "embeddings": str(Path(emb_dir).resolve()), "checksum": checksum,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "indices": entries}
        (tmp / INDEX_JSON).write_text(json.dumps(manifest, indent=2) + "\n")
        _calibrate_into(tmp, manifest)
    return manifest


def _calibrate_into(tmp: Path, manifest: dict) -> None:
    """Measure what similarities mean on the finished index (index.calibration) and store it in index.json."""
    from index.calibration import calibrate_searcher
    from index.searcher import Searcher

    searcher = Searcher(tmp)
    with console.status("calibrating similarities (covered queries, random pairs)"):
        for mod in manifest["indices"]:
            found = calibrate_searcher(searcher, mod)
            if found is not None:
                manifest["indices"][mod]["calibration"] = found
                console.print(f"  {mod}: {found['direction']} coverage cut {found['cut']:.3f} "
                              f"({found['cut_quantile']:g} quantile of covered queries' {found['top_n']} best)")
    (tmp / INDEX_JSON).write_text(json.dumps(manifest, indent=2) + "\n")


def _build_modality(folder: EmbeddingFolder, mod: str, qs: QuerySet, cands: list[Candidate], tmp: Path, out: Path,
                    *, k: int, target_recall: float, sample_size: int, shift: np.ndarray | None, budget: int,
                    seed: int, spark_master: str | None) -> dict:
    """Choose (on a sample), build (all rows), tune and write one modality's
    index into ``tmp``; returns its entry of index.json's ``indices``."""
    mod_shift = shift if mod == "image" else None
    if len(cands) == 1 and folder.count > sample_size:  # nothing to choose: no sample build
        built, measured, winner, report = None, None, cands[0], []
    else:
        built, measured, winner, report = select(cands, folder, mod, qs, k, target_recall, sample_size,
                                              mod_shift, seed)
    if winner.on_disk:
        built, measured = build_on_disk(winner, folder, mod, tmp, out, budget, seed, spark_master), None
    elif built is None:
        built = build_one_index(winner, folder, mod, lambda m=mod: folder.stream(m), folder.count, seed,
                                f" ({mod}, all rows)")
    measured = tune_built(built, folder, mod, qs, k, target_recall, mod_shift, measured)
    if not winner.on_disk:  # an on-disk index was written by its merge
        faiss.write_index(built.index, str(index_file(tmp, mod)))
    if built.ids is not None:
        np.save(index_ids_file(tmp, mod), built.ids)
    entry = {"file": index_file(tmp, mod).name, **winner.to_json(), "count": built.count,
             "skipped": folder.count - built.count, "build_s": round(built.seconds, 2),
             "bytes": index_file(tmp, mod).stat().st_size, **measured, "candidates": report}
    if entry["skipped"]:
        bad = folder.unusable_rows(mod)
        named = ", ".join(f"part {p} row {r} (key {k})" for p, r, k in bad)
        more = entry["skipped"] - len(bad)
        entry["skipped_rows"] = [{"part": p, "row": r, "key": k} for p, r, k in bad]
        console.print(f"  {mod}: skipped {entry['skipped']:,} rows with NaN/inf or zero-norm "
                      f"vectors, never indexed: {named}" + (f" and {more:,} more" if more > 0 else ""),
                      highlight=False, soft_wrap=True)
    if winner.on_disk:
        entry["ivfdata_bytes"] = ivfdata_file(index_file(tmp, mod)).stat().st_size
    if mod == "image":
        entry["query_shift"] = [round(float(v), 6) for v in shift]
    console.print(f"  -> {winner.factory} {measured['search_params']}: recall@{k} "
                  f"{measured['recall']['value']:.3f}, {measured['qps']:,.0f} q/s "
                  f"({measured['speedup']:.1f}x exact)")
    return entry
