"""Checking an embedding folder (``react embed``'s output, or LAION's): every
part's three files aligned, float16 unit rows, keys unique across parts, and
embed.json consistent with the parts. Errors name the part."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from react.errors import ReactError
from react.schemas import (
    EMBEDDING_METADATA_REQUIRED,
    IMG_EMB_DIR,
    METADATA_DIR,
    TEXT_EMB_DIR,
    img_emb_path,
    metadata_path,
    text_emb_path,
    write_text,
)

EMBED_JSON = "embed.json"
# The run's identity, written (atomically) before its first part and removed once
# embed.json is: an interrupted first run leaves no embed.json, and without this
# --resume could not tell parts of another model of the same dim from its own.
EMBED_PLAN = "embed.plan.json"
RESUME_FIELDS = ("model", "model_id", "count", "part_size")
NORM_TOL = 1e-2  # float16 rows of unit vectors are within ~1e-3 of norm 1


_PART_RE = {
    IMG_EMB_DIR: re.compile(r"^img_emb_(\d+)\.npy$"),
    TEXT_EMB_DIR: re.compile(r"^text_emb_(\d+)\.npy$"),
    METADATA_DIR: re.compile(r"^metadata_(\d+)\.parquet$"),
}


def _part_indices(root: Path, sub: str) -> set[int]:
    folder = root / sub
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for p in folder.iterdir() if (m := _PART_RE[sub].match(p.name))}


def _load_emb(path: Path, part: int, what: str) -> np.ndarray:
    if not path.is_file():
        raise ReactError(f"part {part}: {what} missing ({path})")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ReactError(f"part {part}: unreadable or truncated {what} {path} ({exc.__class__.__name__})") from None
    if arr.dtype != np.float16:
        raise ReactError(f"part {part}: {what} {path} has dtype {arr.dtype}, expected float16")
    if arr.ndim != 2:
        raise ReactError(f"part {part}: {what} {path} has shape {arr.shape}, expected [rows, dim]")
    return arr


def _check_norms(arr: np.ndarray, part: int, what: str, chunk: int = 65536) -> None:
    for start in range(0, arr.shape[0], chunk):
        block = np.asarray(arr[start : start + chunk], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1)
        bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOL)
        if bad.any():
            row = start + int(np.argmax(bad))
            raise ReactError(f"part {part}: {int(bad.sum())} {what} row(s) not unit-norm "
                             f"(first: row {row}, norm {norms[row - start]:.4f})")


def check_part(root: Path, part: int, expected_keys: Sequence[str] | None = None,
               norms: bool = True) -> dict:
    """Validate one part's three files; returns ``{"rows", "dim", "keys"}``."""
    root = Path(root)
    img = _load_emb(img_emb_path(root, part), part, "img_emb")
    txt = _load_emb(text_emb_path(root, part), part, "text_emb")
    meta_file = metadata_path(root, part)
    if not meta_file.is_file():
        raise ReactError(f"part {part}: metadata missing ({meta_file})")
    try:
        meta = pq.read_table(meta_file, columns=None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReactError(f"part {part}: unreadable metadata {meta_file} ({exc.__class__.__name__})") from None
    missing = [c for c in EMBEDDING_METADATA_REQUIRED if c not in meta.column_names]
    if missing or not {"url", "image_path"} & set(meta.column_names):
        need = missing or ["url or image_path"]
        raise ReactError(f"part {part}: metadata {meta_file} lacks column(s) {', '.join(need)}")
    if not img.shape[0] == txt.shape[0] == meta.num_rows:
        raise ReactError(f"part {part}: row counts differ: img_emb {img.shape[0]}, text_emb {txt.shape[0]}, "
                         f"metadata {meta.num_rows}")
    if img.shape[1] != txt.shape[1]:
        raise ReactError(f"part {part}: img_emb dim {img.shape[1]} != text_emb dim {txt.shape[1]}")
    keys = [str(k) for k in meta.column("key").to_pylist()]
    if expected_keys is not None and keys != list(expected_keys):
        first = next((j for j, (a, b) in enumerate(zip(keys, expected_keys)) if a != b), min(len(keys), len(expected_keys)))
        raise ReactError(f"part {part}: metadata keys differ from the input at row {first}")
    if norms:
        _check_norms(img, part, "img_emb")
        _check_norms(txt, part, "text_emb")
    return {"rows": int(img.shape[0]), "dim": int(img.shape[1]), "keys": keys}


def check_embeddings(emb_dir: str | os.PathLike, norms: bool = True) -> dict:
    """Validate every part of an embedding folder; ReactError naming the part on any mismatch.

    Checks: the same part numbers 0..n-1 in all three sub-folders; per part equal
    row counts, float16, 2-D, equal dims (across parts too); unit-norm rows;
    keys unique across the folder. Returns ``{"parts", "count", "dim",
    "rows_per_part", "model", "model_id"}`` (the model fields from embed.json, if present)."""
    root = Path(emb_dir)
    if not root.is_dir():
        raise ReactError(f"embedding folder not found: {root}")
    found = {sub: _part_indices(root, sub) for sub in _PART_RE}
    every = set().union(*found.values())
    if not every:
        raise ReactError(f"no embedding parts in {root}")
    for part in range(max(every) + 1):
        for sub, indices in found.items():
            if part not in indices:
                raise ReactError(f"part {part}: {sub} file missing in {root}")
    dim = None
    rows_per_part: list[int] = []
    hashes: list[np.ndarray] = []
    for part in range(max(every) + 1):
        info = check_part(root, part, norms=norms)
        if dim is None:
            dim = info["dim"]
        elif info["dim"] != dim:
            raise ReactError(f"part {part}: dim {info['dim']} differs from part 0's {dim}")
        hashes.append(pd.util.hash_array(np.asarray(info["keys"], dtype=object), categorize=False))
        rows_per_part.append(info["rows"])
    duplicate = _duplicate_key(root, hashes)
    if duplicate:
        raise ReactError(f"part {duplicate[0]}: duplicate key {duplicate[1]!r}")
    manifest = _read_manifest(root)
    if manifest:
        if manifest.get("dim") not in (None, dim):
            raise ReactError(f"{root / EMBED_JSON}: dim {manifest['dim']} but the parts hold {dim}")
        if manifest.get("count") not in (None, sum(rows_per_part)):
            raise ReactError(f"{root / EMBED_JSON}: count {manifest['count']} but the parts hold {sum(rows_per_part)}")
    return {"parts": len(rows_per_part), "count": sum(rows_per_part), "dim": dim,
            "rows_per_part": rows_per_part, "model": (manifest or {}).get("model"),
            "model_id": (manifest or {}).get("model_id") or (manifest or {}).get("model")}


def _duplicate_key(root: Path, hashes: list[np.ndarray]) -> tuple[int, str] | None:
    """The first key held twice, as (later part, key), from 8-byte key hashes:
    a set of 400M Python strings would need tens of GB, the hashes need 3.2 GB.
    Equal hashes are confirmed on the keys themselves (64-bit collisions happen
    at that scale)."""
    if not hashes:
        return None
    flat = np.concatenate(hashes)
    order = np.argsort(flat, kind="stable")
    ties = np.flatnonzero(flat[order][1:] == flat[order][:-1])
    starts = np.cumsum([0] + [len(h) for h in hashes])
    keys: dict[int, list] = {}

    def key_at(row: int) -> tuple[int, str]:
        part = int(np.searchsorted(starts, row, side="right") - 1)
        if part not in keys:
            keys[part] = pq.read_table(metadata_path(root, part), columns=["key"]).column("key").to_pylist()
        return part, str(keys[part][row - starts[part]])

    for i in ties:
        (pa_, ka), (pb, kb) = key_at(int(order[i])), key_at(int(order[i + 1]))
        if ka == kb:
            return max(pa_, pb), ka
    return None


def check_resume(root: Path, plan: dict) -> None:
    """Refuse to resume a folder whose embed.json (a finished run) or plan (an
    interrupted one) names another model, count or part size than ``plan``."""
    for name in (EMBED_JSON, EMBED_PLAN):
        manifest = _read_manifest(root, name) or {}
        fields = RESUME_FIELDS
        if str(plan["model_id"]).startswith("sha256:") and manifest.get("model_id") == plan["model_id"]:
            fields = tuple(f for f in RESUME_FIELDS if f != "model")  # the same weights, copied or moved
        for field in fields:
            if manifest.get(field, plan[field]) != plan[field]:
                raise ReactError(f"cannot resume {root}: its {field} is {manifest.get(field)!r} ({name}), "
                                 f"this run's is {plan[field]!r} (use --overwrite)")


def write_plan(root: Path, plan: dict) -> None:
    write_text(root / EMBED_PLAN, json.dumps({**plan, "complete": False}, indent=2) + "\n")


def _read_manifest(root: Path, name: str = EMBED_JSON) -> dict | None:
    path = root / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReactError(f"unreadable {path}: {exc.__class__.__name__}") from None
