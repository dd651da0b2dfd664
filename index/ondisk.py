"""Bounded-memory builds of inverted-file indices: train once, add in chunks,
merge the inverted lists on disk.

An in-memory build holds every code at once (10M x 512 SQ8 codes: 5.2 GB;
LAION-400M: 200 GB). Here the trained, empty index is cloned per chunk of
rows, each clone receives one chunk and is written as a *partial* index, and
the partial indices' lists are merged into one ``<modality>.ivfdata`` file
with faiss' :class:`~faiss.OnDiskInvertedLists` (``merge_from_multiple`` reads
the partial lists memory-mapped). Resident memory is then the training sample,
one chunk and the coarse quantizer, whatever N is; the codes only ever exist in
files, which searches memory-map.

Faiss ids are global rows of the embedding folder (``add_with_ids``), so
partial indices built anywhere -- this process, or Spark executors
(:mod:`index.spark_build`) -- merge without renumbering and need no id map.

A partial index whose file is complete is kept across a crash: a resumed
build (same trained quantizer, same chunking) re-adds only the missing chunks.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from index.factory import Candidate, new_index, train_rows
from index.vectors import EmbeddingFolder, clean_rows
from react.errors import ReactError
from react.progress import console, progress
from react.schemas import atomic_path, ivfdata_file

MIN_CHUNK, MAX_CHUNK = 10_000, 1_000_000
CHUNK_SHARE = 0.15  # of the budget: one chunk as float32 plus its codes and ids
TRAIN_SHARE = 0.35  # of the budget: the training sample as float32 (k-means keeps it resident)
TRAINED = "trained.index"


def chunk_rows(budget: int, dim: int, code_size: int) -> int:
    """Rows added per partial index so that one chunk stays within its share of the budget."""
    per_row = 4 * dim + code_size + 8 + 8  # float32 input, code, id, assignment
    return int(min(MAX_CHUNK, max(MIN_CHUNK, CHUNK_SHARE * budget // per_row)))


def training_rows(candidate: Candidate, n: int, dim: int, budget: int) -> int:
    """Rows to train on: what the factory wants, capped by the budget's training share."""
    want = train_rows(candidate, n)
    cap = int(TRAIN_SHARE * budget // (4 * dim))
    if want > cap:
        console.print(f"[yellow]training {candidate.factory} on {cap:,} rows (wants {want:,}) "
                      f"to stay within the memory budget")
    return min(want, cap)


def train_empty(candidate: Candidate, folder: EmbeddingFolder, modality: str, n: int, budget: int,
                seed: int = 0) -> faiss.Index:
    """The trained, empty index every partial index is cloned from."""
    from index.build import use_gpu_clustering

    index = new_index(candidate, folder.dim)
    if faiss.try_extract_index_ivf(index) is None:
        raise ReactError(f"--factory {candidate.factory}: on-disk builds need an inverted file (IVF...)")
    need = training_rows(candidate, n, folder.dim, budget)
    if need and not index.is_trained:
        use_gpu_clustering(index, folder.dim)
        _, sample = folder.gather(modality, folder.sample_rows(need, seed=seed + 3))
        with console.status(f"training {candidate.factory} on {len(sample):,} vectors"):
            index.train(sample)
        del sample
    return index


Unit = tuple[int, int, int]  # (embedding part, first row, end row) of one partial index


def units(folder: EmbeddingFolder, chunk: int) -> list[Unit]:
    """The folder cut into slices of at most ``chunk`` rows, never across parts."""
    return [(part, start, min(start + chunk, rows)) for part, rows in enumerate(folder.rows_per_part)
            for start in range(0, rows, chunk)]


def unit_vectors(folder: EmbeddingFolder, modality: str, unit: Unit) -> tuple[np.ndarray, np.ndarray]:
    """``(global rows, float32 unit vectors)`` of one slice, bad rows dropped."""
    part, start, stop = unit
    vecs, keep = clean_rows(folder.array(modality, part)[start:stop])
    return (folder.offsets[part] + start + np.flatnonzero(keep)).astype(np.int64), vecs


def add_partial(trained: faiss.Index, rows: np.ndarray, vecs: np.ndarray, path: Path) -> int:
    """Add one slice to a clone of ``trained`` and write it to ``path`` (atomically); returns its count."""
    index = faiss.clone_index(trained)
    if len(rows):
        index.add_with_ids(vecs, rows)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return int(index.ntotal)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """faiss' on-disk lists print their progress with C printf on stdout, which
    scripts read for the command's answer: send it to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def merge_partials(trained: faiss.Index, partials: list[Path], out: Path) -> faiss.Index:
    """One index at ``out`` whose lists (``out`` with ``.ivfdata``) hold every partial's codes."""
    index = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(index)
    sources, keep = faiss.InvertedListsPtrVector(), []
    for path in partials:
        part = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        part_ivf = faiss.extract_index_ivf(part)
        keep.append(part)  # the lists live as long as their index object
        sources.push_back(part_ivf.invlists)
    data = ivfdata_file(out)
    with stdout_to_stderr():
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data))
        ntotal = lists.merge_from_multiple(sources.data(), sources.size(), False)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # owned by the index from here
    index.ntotal = ivf.ntotal = ntotal
    faiss.write_index(index, str(out))
    del keep
    return index


def trained_checkpoint(candidate: Candidate, folder: EmbeddingFolder, modality: str, budget: int, work: Path,
                       seed: int = 0) -> faiss.Index:
    """The trained, empty index of this build plan, from ``work`` when an earlier
    run of the same plan left it there (training is the longest single step)."""
    work.mkdir(parents=True, exist_ok=True)
    plan = {"factory": candidate.factory, "modality": modality, "rows_per_part": folder.rows_per_part,
            "dim": folder.dim, "budget": budget, "seed": seed}
    plan_file, trained_file = work / "plan.json", work / TRAINED
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        shutil.rmtree(work)  # another factory, folder or budget: nothing there is reusable
        work.mkdir(parents=True)
    plan_file.write_text(json.dumps(plan))
    if trained_file.is_file():
        console.print(f"resuming the {modality} build in {work}")
        return faiss.read_index(str(trained_file))
    trained = train_empty(candidate, folder, modality, folder.count, budget, seed)
    with atomic_path(trained_file) as tmp:
        faiss.write_index(trained, str(tmp))
    return trained


def build_ondisk(candidate: Candidate, folder: EmbeddingFolder, modality: str, out: Path, budget: int,
                 work: Path, seed: int = 0, spark_master: str | None = None) -> tuple[faiss.Index, float]:
    """Build ``out`` (an index file with its ``.ivfdata``) in bounded memory.

    ``work`` holds the trained quantizer and the partial indices; it survives a
    failed build so that a rerun with the same plan resumes (training and
    finished partials kept), and is removed once the lists are merged. With
    ``spark_master`` the partial indices are built on Spark executors, which
    must see ``work`` and the embedding folder at the same paths.
    Returns ``(index, seconds)``."""
    import time

    t0 = time.perf_counter()
    trained = trained_checkpoint(candidate, folder, modality, budget, work, seed)
    trained_file = work / TRAINED
    chunk = chunk_rows(budget, folder.dim, faiss.extract_index_ivf(trained).code_size)
    if spark_master:
        from index.spark_build import spark_partials

        partials = spark_partials(spark_master, trained_file, folder, modality, work, chunk)
    else:
        partials = local_partials(trained, folder, modality, work, chunk)
    with console.status(f"merging {len(partials)} partial {modality} indices on disk"):
        index = merge_partials(trained, partials, out)
    shutil.rmtree(work)
    return index, time.perf_counter() - t0


def partial_path(work: Path, number: int) -> Path:
    return work / f"partial_{number:06d}.index"


def local_partials(trained: faiss.Index, folder: EmbeddingFolder, modality: str, work: Path, chunk: int
                   ) -> list[Path]:
    """The partial indices, built in this process (finished ones from an earlier run kept)."""
    paths, reused = [], 0
    with progress() as bar:
        task = bar.add_task(f"adding to {modality} partial indices", total=folder.count, unit="vec")
        for number, unit in enumerate(units(folder, chunk)):
            path = partial_path(work, number)
            if path.is_file():
                reused += 1
            else:
                add_partial(trained, *unit_vectors(folder, modality, unit), path)
            paths.append(path)
            bar.advance(task, unit[2] - unit[1])
    if reused:
        console.print(f"reused {reused} of {len(paths)} partial {modality} indices from the interrupted build")
    return paths
