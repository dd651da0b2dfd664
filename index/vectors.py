"""Reading an embedding folder for indexing: validated, streamed, sampled.

An index never sees a row the folder cannot vouch for. Opening checks the
layout (the same parts in ``img_emb/``, ``text_emb/``, ``metadata/``, equal
row counts per part, one dimension) and refuses a mismatch naming the part.
Streaming then drops rows that are NaN/inf or have (near) zero norm -- LAION's
published parts hold a few -- counts them, and re-normalizes the rest in
float32 so float16 rounding never reaches the index.

Rows are numbered globally in part order (part 0's rows, then part 1's, ...):
that number is what every index stores and what :class:`index.Searcher`
returns, so metadata lookups are one offset away.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from index.defaults import MODALITIES
from react.errors import ReactError
from react.schemas import img_emb_path, metadata_path, text_emb_path

MIN_NORM = 1e-3  # below this a row carries no direction worth indexing


def emb_path(root: Path, modality: str, part: int) -> Path:
    if modality not in MODALITIES:
        raise ReactError(f"unknown modality {modality!r} (choose image or text)")
    return img_emb_path(root, part) if modality == "image" else text_emb_path(root, part)


def clean_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows of ``block`` and the mask of rows kept (finite, non-zero)."""
    block = np.asarray(block, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(block, axis=1)
    keep = np.isfinite(norms) & (norms > MIN_NORM)
    out = block[keep]
    out /= norms[keep, None]
    return out, keep


@dataclass
class EmbeddingFolder:
    """An embedding folder, checked for alignment; arrays are memory-mapped."""

    root: Path
    rows_per_part: list[int]
    dim: int
    model: str | None
    model_id: str | None
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.rows_per_part)]).astype(np.int64)

    @classmethod
    def open(cls, emb_dir: str | os.PathLike) -> "EmbeddingFolder":
        from index.embed import check_embeddings

        info = check_embeddings(emb_dir, norms=False)
        return cls(Path(emb_dir), info["rows_per_part"], info["dim"], info["model"], info["model_id"])

    @property
    def count(self) -> int:
        return int(self.offsets[-1])

    @property
    def parts(self) -> int:
        return len(self.rows_per_part)

    def array(self, modality: str, part: int) -> np.ndarray:
        path = emb_path(self.root, modality, part)
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:  # a part removed or rewritten while a long job reads the folder
            raise ReactError(f"{path}: embedding part missing or unreadable ({exc.__class__.__name__}); "
                             f"the folder changed after it was checked") from None
        if arr.shape != (self.rows_per_part[part], self.dim):
            raise ReactError(f"{path}: shape {arr.shape}, expected ({self.rows_per_part[part]}, {self.dim}); "
                             f"the folder changed after it was checked")
        return arr

    def stream(self, modality: str, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(rows, vectors)`` in global row order: int64 row numbers of the
        kept rows and their float32 unit vectors, ``chunk`` rows at a time."""
        for part in range(self.parts):
            arr = self.array(modality, part)
            for start in range(0, arr.shape[0], chunk):
                vecs, keep = clean_rows(arr[start : start + chunk])
                rows = self.offsets[part] + start + np.flatnonzero(keep)
                yield rows.astype(np.int64), vecs

    def unusable_rows(self, modality: str, limit: int = 5, chunk: int = 65536) -> list[tuple[int, int, str]]:
        """The first ``limit`` rows streaming drops: ``(part, row in part, key)``.
        One more pass over the vectors: call it only when rows were dropped."""
        import pyarrow.parquet as pq

        found: list[tuple[int, int]] = []
        for part in range(self.parts):
            arr = self.array(modality, part)
            for start in range(0, arr.shape[0], chunk):
                _, keep = clean_rows(arr[start : start + chunk])
                found += [(part, start + int(i)) for i in np.flatnonzero(~keep)[: limit - len(found)]]
                if len(found) >= limit:
                    break
            if len(found) >= limit:
                break
        named = []
        for part, row in found:
            try:
                key = str(pq.read_table(metadata_path(self.root, part), columns=["key"]).column("key")[row])
            except Exception:  # noqa: BLE001 - the key only decorates the message
                key = "?"
            named.append((part, row, key))
        return named

    def gather(self, modality: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of the given global rows (sorted, unique): ``(kept_rows, vectors)``."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows[0] < 0 or rows[-1] >= self.count):
            raise ReactError(f"row {int(rows[-1])} is outside the folder's {self.count} rows")
        parts = np.searchsorted(self.offsets, rows, side="right") - 1
        out_rows, out_vecs = [], []
        for part in np.unique(parts):
            mine = rows[parts == part]
            vecs, keep = clean_rows(self.array(modality, int(part))[mine - self.offsets[part]])
            out_rows.append(mine[keep])
            out_vecs.append(vecs)
        if not out_rows:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(out_rows), np.concatenate(out_vecs)

    def take(self, modality: str, rows: np.ndarray) -> np.ndarray:
        """float32 unit vectors of ``rows`` in the order given (rows known to be valid).

        Re-ranking calls this with ~10^5 rows per batch, so it is one fancy
        index per part straight into the output (no unique/inverse copies) and
        norms by einsum (np.linalg.norm took a third of the time)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if self.parts == 1:
            out[:] = self.array(modality, 0)[rows]
        else:
            parts = np.searchsorted(self.offsets, rows, side="right") - 1
            for part in np.unique(parts):
                sel = np.flatnonzero(parts == part)
                out[sel] = self.array(modality, int(part))[rows[sel] - self.offsets[part]]
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))
        out /= np.maximum(norms, MIN_NORM)[:, None]
        return out

    def sample_rows(self, n: int, seed: int = 0, exclude: np.ndarray | None = None) -> np.ndarray:
        """``n`` distinct global rows drawn uniformly (sorted), avoiding ``exclude``."""
        rng = np.random.default_rng(seed)
        pool = self.count - (0 if exclude is None else len(exclude))
        n = min(n, max(pool, 0))
        if exclude is None or len(exclude) == 0:
            return np.sort(rng.choice(self.count, size=n, replace=False))
        mask = np.ones(self.count, dtype=bool)
        mask[exclude] = False
        return np.sort(rng.choice(np.flatnonzero(mask), size=n, replace=False))

    def metadata_files(self) -> list[Path]:
        return [metadata_path(self.root, p) for p in range(self.parts)]

    def checksum(self) -> str:
        """SHA-256 over every part file's name, size and content (threads: hashlib
        releases the GIL), so an index can name exactly what it was built from."""
        files = []
        for part in range(self.parts):
            files += [emb_path(self.root, m, part) for m in MODALITIES] + [metadata_path(self.root, part)]

        def one(path: Path) -> str:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(1 << 24):
                    digest.update(block)
            return f"{path.relative_to(self.root)}\t{path.stat().st_size}\t{digest.hexdigest()}\n"

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            lines = list(pool.map(one, files))
        return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()
