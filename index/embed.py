"""``react embed``: image and text embeddings of every corpus pair, in parts.

Output (the clip-retrieval / LAION layout, so LAION's published embeddings can
stand in for our own)::

    EMB_DIR/img_emb/img_emb_{i}.npy          float16 [n_i, dim], L2-normalized
    EMB_DIR/text_emb/text_emb_{i}.npy        float16 [n_i, dim], L2-normalized
    EMB_DIR/metadata/metadata_{i}.parquet    n_i rows: key, caption, url and/or image_path, extras
    EMB_DIR/embed.json                       model, dim, count, part_size, parts, input
    EMB_DIR/embed.plan.json                  the same identity, written before the first part,
                                             removed with embed.json (``--resume`` checks both)

Alignment: row ``j`` of part ``i`` is the same pair in all three files. It is
checked when a part is written (row counts, keys equal to the input's keys for
that slice, finite unit rows) and by :func:`check_embeddings` on load.

Atomic, resumable parts: the three files of a part are written under temporary
names and then renamed, metadata last, so a part either has all three final
files or is redone. ``resume=True`` skips parts whose three files exist and
validate against the input; without ``resume`` or ``overwrite`` a folder that
already holds parts is refused.

Multi-process (``accelerate launch -m react embed ...`` or any launcher that
sets ``RANK``/``WORLD_SIZE``): with N processes, process r embeds only the parts
whose index ``i % N == r``, so no two processes write the same file; each uses
``cuda:LOCAL_RANK`` unless ``--device`` is given. After a barrier (gloo on CPU,
see ``index.distributed``), rank 0 checks the whole folder and writes
``embed.json``; a part missing then is an error, never a folder without its
manifest. Tested with two CPU processes (tests/test_multiprocess.py): the
folder is identical to a one-process run's.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from index.defaults import EMBED_BATCH_CPU, EMBED_BATCH_GPU, PART_SIZE
from index.distributed import barrier, process_grid  # noqa: F401  (process_grid: re-exported)
from index.embed_check import (  # noqa: F401  (check_embeddings, EMBED_JSON: re-exported)
    _PART_RE,
    EMBED_JSON,
    EMBED_PLAN,
    _check_norms,
    check_embeddings,
    check_part,
    check_resume,
    write_plan,
)
from index.embed_images import image_batches, resolve_workers
from index.readers import Corpus, read_corpus
from react.config import DEFAULT_DECODER
from react.errors import ReactError
from react.schemas import atomic_path, img_emb_path, metadata_path, text_emb_path, write_text

# --- writing ----------------------------------------------------------------------------

def _write_part(root: Path, part: int, img: np.ndarray, txt: np.ndarray, meta: pa.Table,
                expected_keys: Sequence[str]) -> None:
    """Check alignment, then write the three files under temporary names and
    rename them into place, metadata last (its presence marks a finished part)."""
    if not img.shape[0] == txt.shape[0] == meta.num_rows == len(expected_keys):
        raise ReactError(f"part {part}: refusing to write misaligned rows: img_emb {img.shape[0]}, "
                         f"text_emb {txt.shape[0]}, metadata {meta.num_rows}, input {len(expected_keys)}")
    if [str(k) for k in meta.column("key").to_pylist()] != list(expected_keys):
        raise ReactError(f"part {part}: refusing to write: metadata keys differ from the input order")
    _check_norms(img, part, "img_emb")
    _check_norms(txt, part, "text_emb")
    finals = [img_emb_path(root, part), text_emb_path(root, part), metadata_path(root, part)]
    for final in finals:  # a stale half-part from an interrupted run must not survive
        final.unlink(missing_ok=True)
    with atomic_path(finals[2]) as t_meta, atomic_path(finals[0]) as t_img, atomic_path(finals[1]) as t_txt:
        with open(t_img, "wb") as fh:
            np.save(fh, img)
        with open(t_txt, "wb") as fh:
            np.save(fh, txt)
        pq.write_table(meta, t_meta)
    # atomic_path renames on exit in reverse order of entry: text, image, metadata.
    # Re-check the final files so a partial rename can never pass as finished.
    check_part(root, part, expected_keys, norms=False)


def _existing_outputs(root: Path) -> list[Path]:
    out = [root / EMBED_JSON] if (root / EMBED_JSON).exists() else []
    for sub in _PART_RE:
        folder = root / sub
        if folder.is_dir():
            out += [p for p in folder.iterdir() if _PART_RE[sub].match(p.name)]
    return out


def embed_corpus(
    corpus: str | os.PathLike | Corpus,
    model: Any,
    out: str | os.PathLike,
    *,
    pretrained: str | None = None,
    part_size: int = PART_SIZE,
    batch_size: int | None = None,
    workers: int | None = None,
    decoder: str = DEFAULT_DECODER,
    device: str | torch.device | None = None,
    resume: bool = False,
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> dict:
    """Embed every pair of ``corpus`` with ``model`` (a spec for ``load_model`` or a
    ``LoadedModel``) into ``out``; returns the embed.json content (with
    ``embedded``/``skipped`` part lists for this process)."""
    from react.models import LoadedModel, load_model

    if part_size < 1:
        raise ReactError(f"--part-size must be >= 1, got {part_size}")
    if batch_size is not None and batch_size < 1:
        raise ReactError(f"--batch-size must be >= 1, got {batch_size}")
    if resume and overwrite:
        raise ReactError("--resume and --overwrite exclude each other")
    env_rank, env_world = process_grid()
    rank = env_rank if rank is None else rank
    world = env_world if world_size is None else world_size
    # Processes started by a launcher wait for each other; explicit rank/world_size
    # without one (independent jobs) cannot, and leave embed.json to a last rank-0 run.
    launched = env_world > 1
    if isinstance(model, LoadedModel):
        cpu = model.device.type == "cpu"
    else:
        cpu = not torch.cuda.is_available() or (device is not None and torch.device(device).type == "cpu")

    data = corpus if isinstance(corpus, Corpus) else read_corpus(corpus)
    root = Path(out).expanduser()
    _clear_or_refuse(root, resume, overwrite, rank)
    if launched:
        barrier(world, cpu)  # nobody writes a part before rank 0 has cleared the folder

    if isinstance(model, LoadedModel):
        loaded = model
    else:
        if device is None and world > 1 and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
        loaded = load_model(model, pretrained=pretrained, device=device)
    plan = _start_plan(root, data, loaded, part_size, resume)
    keys = [str(k) for k in data.metadata.column("key").to_pylist()]
    todo, skipped = _parts_to_do(root, plan, keys, loaded.embed_dim, rank, world, resume)
    _embed_parts(root, data, loaded, keys, todo, part_size, batch_size, workers, decoder, rank)
    if launched:
        barrier(world, cpu)  # every process has written its parts (or failed, and the launch with it)
    result = dict(plan)
    if rank == 0:
        _finish_folder(root, result, launched)
    result["embedded"], result["skipped"] = todo, skipped
    return result


def _clear_or_refuse(root: Path, resume: bool, overwrite: bool, rank: int) -> None:
    """Refuse a folder that already holds embeddings unless resuming or
    overwriting; with ``overwrite``, rank 0 clears it."""
    if root.exists() and not root.is_dir():
        raise ReactError(f"--out is not a directory: {root}")
    existing = _existing_outputs(root) if root.exists() else []
    if existing and not (resume or overwrite):
        raise ReactError(f"{root} already holds embeddings; pass --resume to finish them or --overwrite to replace them")
    if existing and overwrite and rank == 0:
        for sub in _PART_RE:
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / EMBED_JSON).unlink(missing_ok=True)
        (root / EMBED_PLAN).unlink(missing_ok=True)


def _start_plan(root: Path, data: Corpus, loaded: Any, part_size: int, resume: bool) -> dict:
    """The folder's identity (what embed.json will hold), checked against the
    folder's when resuming and written as embed.plan.json."""
    n = len(data)
    plan = {"model": loaded.name, "model_id": loaded.identity or loaded.name, "dim": loaded.embed_dim,
            "count": n, "part_size": part_size, "parts": math.ceil(n / part_size), "input": str(data.path),
            "input_form": data.form}
    if resume:
        check_resume(root, plan)
    for sub in _PART_RE:
        (root / sub).mkdir(parents=True, exist_ok=True)
    # Every process writes the (identical) plan after its own check, so the first
    # writer has always seen the folder's previous identity.
    write_plan(root, plan)
    return plan


def _parts_to_do(root: Path, plan: dict, keys: list[str], dim: int, rank: int, world: int, resume: bool
                 ) -> tuple[list[int], list[int]]:
    """(this process's parts to embed, its finished valid parts kept by ``resume``)."""
    n, part_size = plan["count"], plan["part_size"]
    mine = [i for i in range(plan["parts"]) if i % world == rank]
    todo, skipped = [], []
    for part in mine:
        lo, hi = part * part_size, min(n, (part + 1) * part_size)
        if resume:
            try:
                if check_part(root, part, keys[lo:hi])["dim"] == dim:
                    skipped.append(part)
                    continue
            except ReactError:
                pass
        todo.append(part)
    return todo, skipped


def _embed_parts(root: Path, data: Corpus, loaded: Any, keys: list[str], todo: list[int], part_size: int,
                 batch_size: int | None, workers: int | None, decoder: str, rank: int) -> None:
    """Embed and write the ``todo`` parts. Parts are written by a background
    thread (one at a time, waited for before the next is handed over), so
    writing a part overlaps embedding the next."""
    from concurrent.futures import ThreadPoolExecutor

    from react.batch_decode import describe, eval_spec, resolve_decoder
    from react.progress import progress

    n = len(data)
    captions = [str(c) for c in data.metadata.column("caption").to_pylist()]
    n_workers = resolve_workers(workers, loaded.device)
    spec = eval_spec(loaded.preprocess)
    chosen, why = resolve_decoder(decoder, loaded.device, spec)
    if batch_size is None:  # large batches keep a GPU busy; the CPU default is unchanged
        batch_size = EMBED_BATCH_GPU if loaded.device.type == "cuda" else EMBED_BATCH_CPU
    if rank == 0 and todo:
        print(describe(chosen, why) + f", batch {batch_size}", file=sys.stderr)
    writer, pending = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-writer"), None
    with writer, progress() as bar:
        task = bar.add_task("embedding", total=sum(min(n, (p + 1) * part_size) - p * part_size for p in todo),
                            unit="img")
        for part in todo:
            lo, hi = part * part_size, min(n, (part + 1) * part_size)
            img_chunks = []
            for batch in image_batches(data.images[lo:hi], loaded, batch_size, n_workers, chosen, spec):
                # features stay on the device (no sync per batch); fp16 as written
                img_chunks.append(loaded.encode_images(batch, cpu=False).half())
                bar.advance(task, len(batch))
            img = (torch.cat(img_chunks).cpu().numpy() if img_chunks
                   else np.zeros((0, loaded.embed_dim), np.float16))
            txt = loaded.encode_texts(captions[lo:hi], batch_size=batch_size).numpy().astype(np.float16)
            if img.shape[1] != txt.shape[1]:
                raise ReactError(f"model {loaded.name}: image dim {img.shape[1]} != text dim {txt.shape[1]}")
            if pending is not None:
                pending.result()  # the previous part is on disk (or its error raised here)
            pending = writer.submit(_write_part, root, part, img, txt, data.metadata.slice(lo, hi - lo),
                                    keys[lo:hi])
        if pending is not None:
            pending.result()


def _finish_folder(root: Path, result: dict, launched: bool) -> None:
    """Rank 0, after every process: check the whole folder and write embed.json
    (``result``'s dim updated from it) -- never a folder without its manifest."""
    n, n_parts = result["count"], result["parts"]
    missing = [p for p in range(n_parts) if not metadata_path(root, p).is_file()]
    if missing and launched:
        raise ReactError(f"{root}: part(s) {', '.join(map(str, missing[:5]))} missing after every process "
                         f"finished; embed.json not written (run again with --resume)")
    if not missing:
        info = check_embeddings(root, norms=False)
        if info["count"] != n or info["parts"] != n_parts:
            raise ReactError(f"{root}: holds {info['count']} rows in {info['parts']} parts, "
                             f"expected {n} in {n_parts} (stale parts from another run? use --overwrite)")
        result["dim"] = info["dim"]
        write_text(root / EMBED_JSON, json.dumps(result, indent=2) + "\n")
        (root / EMBED_PLAN).unlink(missing_ok=True)  # embed.json now holds the identity


def write_embedding_folder(out: str | os.PathLike, img: np.ndarray, txt: np.ndarray, metadata: pa.Table | None = None,
                           *, part_size: int = PART_SIZE, model: str = "external",
                           chunk: int = 65536) -> dict:
    """Write vectors computed elsewhere (another embedder, a simulation) in the same
    checked layout ``react embed`` writes: float16 unit rows, aligned metadata
    (default: synthetic keys/urls/captions), embed.json. Returns embed.json."""
    root = Path(out)
    n = int(img.shape[0])
    if txt.shape != img.shape or img.ndim != 2:
        raise ReactError(f"image and text arrays must share one [n, dim] shape, got {img.shape} and {txt.shape}")
    if metadata is None:
        metadata = pa.table({"key": [f"{i:09d}" for i in range(n)], "caption": [f"row {i}" for i in range(n)],
                             "url": [f"http://synthetic.invalid/{i}" for i in range(n)]})
    if metadata.num_rows != n:
        raise ReactError(f"metadata has {metadata.num_rows} rows for {n} vectors")
    for sub in _PART_RE:
        (root / sub).mkdir(parents=True, exist_ok=True)
    keys = [str(k) for k in metadata.column("key").to_pylist()]

    def unit16(x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape, np.float16)
        for s in range(0, len(x), chunk):
            block = np.asarray(x[s : s + chunk], np.float32)
            out[s : s + chunk] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out

    n_parts = max(1, math.ceil(n / part_size))
    for part in range(n_parts):
        lo, hi = part * part_size, min(n, (part + 1) * part_size)
        _write_part(root, part, unit16(img[lo:hi]), unit16(txt[lo:hi]), metadata.slice(lo, hi - lo), keys[lo:hi])
    manifest = {"model": model, "model_id": model, "dim": int(img.shape[1]), "count": n, "part_size": part_size,
                "parts": n_parts, "input": "vectors", "input_form": "vectors"}
    write_text(root / EMBED_JSON, json.dumps(manifest, indent=2) + "\n")
    return manifest
