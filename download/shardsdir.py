"""The output folder of a download: which shards in it are complete, atomic
commits of new ones, the manifest and ``sizes.json``.

A shard is ``NNNNN.tar`` + ``NNNNN.parquet`` + ``NNNNN_stats.json``, committed
in that order (the stats file last, so its presence means the other two are
whole) and each under a temporary name first. On a resume every shard is
checked against its stats -- parquet rows, successes, the tar's samples one by
one and its end-of-archive marker -- and a shard that fails any check is
deleted and redone: img2dataset's own incremental mode trusts the stats file
alone and would keep a truncated tar.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from react.errors import ReactError
from react.schemas import DOWNLOAD_MANIFEST, SAFETY_DROPPED_FILE, SHARD_QUERY_SURVIVAL_FILE, SHARD_SIZES_FILE, umask_mode, write_text
from react.shards import TarMember, scan_tar

MANIFEST_FORMAT = 1
WORK_DIR = ".react-download"  # staging folders, round inputs, img2dataset's log
SHARD_FILE = re.compile(r"^(\d{5,})(\.tar|\.parquet|_stats\.json)$")
END_OF_ARCHIVE = 1024  # two zero blocks close every tar


def shard_name(shard_id: int) -> str:
    return f"{shard_id:05d}"


def shard_files(folder: Path, shard_id: int) -> tuple[Path, Path, Path]:
    name = shard_name(shard_id)
    return folder / f"{name}.tar", folder / f"{name}.parquet", folder / f"{name}_stats.json"


@dataclass(frozen=True)
class ShardInfo:
    count: int      # rows img2dataset attempted
    successes: int  # samples in the tar


class BrokenShard(Exception):
    pass


def check_shard(folder: Path, shard_id: int) -> ShardInfo:
    """The shard's counts if its three files agree with each other; else BrokenShard."""
    tar, parquet, stats_path = shard_files(folder, shard_id)
    try:
        stats = json.loads(stats_path.read_text())
        count, successes = int(stats["count"]), int(stats["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BrokenShard("no readable stats file") from None
    try:
        table = pq.read_table(parquet, columns=["key", "status"])
    except (OSError, pa.ArrowException):
        raise BrokenShard("no readable parquet") from None
    if table.num_rows != count:
        raise BrokenShard(f"parquet has {table.num_rows} rows, stats say {count}")
    ok = sorted(k for k, s in zip(table.column("key").to_pylist(), table.column("status").to_pylist())
                if s == "success")
    if len(ok) != successes:
        raise BrokenShard(f"parquet has {len(ok)} successes, stats say {successes}")
    try:
        size = tar.stat().st_size
        with open(tar, "rb") as fh:
            fh.seek(max(0, size - END_OF_ARCHIVE))
            tail = fh.read()
    except OSError:
        raise BrokenShard("no tar") from None
    if size % 512 or size < END_OF_ARCHIVE or tail.strip(b"\0"):
        raise BrokenShard("tar has no end-of-archive marker (truncated)")
    try:
        samples = scan_tar(tar, want=("txt", "json"))
    except ReactError as exc:
        raise BrokenShard(str(exc)) from None
    for s in samples:
        whole = isinstance(s.image, TarMember) and s.image.offset + s.image.size <= size
        if not whole or "txt" not in s.files or "json" not in s.files:
            raise BrokenShard(f"sample {s.key} incomplete")
    if sorted(s.key for s in samples) != ok:
        raise BrokenShard(f"tar has {len(samples)} samples, stats say {successes}")
    return ShardInfo(count, successes)


def _remove_shard(folder: Path, shard_id: int) -> None:
    tar, parquet, stats = shard_files(folder, shard_id)
    for path in (stats, tar, parquet):  # the completion marker first
        path.unlink(missing_ok=True)


def _place(src: Path, dst: Path, rewrite: Callable[[Path, Path], None] | None) -> None:
    """``src`` appears at ``dst`` whole or not at all: a hard link (same
    filesystem), a copy, or ``rewrite(src, tmp)``, then a rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask_mode(tmp)
    try:
        if rewrite is not None:
            rewrite(src, tmp)
        else:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


class ShardsDir:
    """SHARDS_DIR as one download of one subset."""

    def __init__(self, root: Path, manifest: dict) -> None:
        self.root = root
        self.work = root / WORK_DIR
        self.manifest = manifest
        self.shards: dict[int, ShardInfo] = {}

    # --- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, input_record: dict, layout: dict, *, resume: bool, retry_failed: bool,
             overwrite: bool) -> "ShardsDir":
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise ReactError(f"--out {root} is a file, not a folder")
        if overwrite:
            clear(root)
        manifest = _read_manifest(root)
        has_shards = root.is_dir() and any(SHARD_FILE.match(p.name) for p in root.iterdir())
        if manifest is None and has_shards:
            raise ReactError(f"{root} holds shards that react download did not write; "
                             "pass --overwrite to replace them or choose another --out")
        elif manifest is not None:
            previous = manifest.get("input", {})
            if previous.get("digest") != input_record["digest"]:
                raise ReactError(f"{root} holds the shards of another subset ({previous.get('path')}); "
                                 "pass --overwrite to replace them or choose another --out")
            if not (resume or retry_failed):
                state = "a complete" if manifest.get("complete") else "an unfinished"
                raise ReactError(f"{root} already holds {state} download of this subset; pass --resume to continue, "
                                 "--retry-failed to re-attempt its failures, or --overwrite to start again")
            changed = {k: (manifest.get("layout", {}).get(k), v) for k, v in layout.items()
                       if manifest.get("layout", {}).get(k) != v}
            if changed:
                what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
                raise ReactError(f"{root} was written with other settings ({what}); "
                                 "pass the same ones or --overwrite")
        if retry_failed and manifest is None:
            raise ReactError(f"--retry-failed: {root} holds no download of this subset to retry")
        if manifest is None:
            first = {"round": 0, "first_shard": 0, "shards": -(-input_record["rows"] // layout["shard_size"]),
                     "rows": input_record["rows"]}
            manifest = {"format": MANIFEST_FORMAT, "tool": "react download", "input": input_record,
                        "layout": layout, "rounds": [first], "complete": False}
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / WORK_DIR, ignore_errors=True)  # staging left by a killed run
        folder = cls(root, manifest)
        folder.save_manifest()
        return folder

    @classmethod
    def open_topup(cls, root: Path, subset_path: Path, topup: dict, layout: dict) -> "ShardsDir":
        """The finished download a top-up subset (``react retrieve --top-up``) extends."""
        root = Path(root)
        manifest = _read_manifest(root) if root.is_dir() else None
        if manifest is None:
            raise ReactError(f"{subset_path} is a top-up subset; {root} holds no download for it to extend")
        if manifest.get("input", {}).get("digest") != topup["of"]:
            raise ReactError(f"{subset_path} tops up another download, not the one in {root} "
                             f"({manifest.get('input', {}).get('path')})")
        if not manifest.get("complete"):
            raise ReactError(f"{root} holds an unfinished download; finish it (react download "
                             f"{manifest['input'].get('path')} --out {root} --resume) before a top-up")
        changed = [k for k, v in layout.items() if manifest.get("layout", {}).get(k) != v]
        if changed:
            raise ReactError(f"{root} was written with other settings ({', '.join(changed)}); "
                             "pass the same ones to download its top-up")
        shutil.rmtree(root / WORK_DIR, ignore_errors=True)
        return cls(root, manifest)

    @property
    def topups(self) -> list[dict]:
        """The top-up subsets appended so far: {path, rows, digest, round}."""
        return self.manifest.get("topups", [])

    def add_topup(self, path: Path, rows: int, digest: str) -> None:
        """Record the round just added as the top-up of ``path``."""
        self.manifest.setdefault("topups", []).append({"path": str(path), "rows": rows, "digest": digest, "round": len(self.rounds) - 1})
        self.save_manifest()

    # --- state -------------------------------------------------------------------------
    @property
    def rounds(self) -> list[dict]:
        return self.manifest["rounds"]

    def next_shard(self) -> int:
        last = self.rounds[-1]
        return last["first_shard"] + last["shards"]

    def verify(self, report: Callable[[int, int], None] | None = None) -> list[int]:
        """Keep the whole shards of committed rounds; delete the rest. A broken
        or missing shard of a retry round (or any retry round, once a first-round
        shard must be redone: its rows would come back twice) drops the round
        and those after it; their rows count as failed again. Returns the
        first round's shard ids still to download."""
        on_disk = sorted({int(m.group(1)) for p in self.root.iterdir() if (m := SHARD_FILE.match(p.name))})
        owner = {s: r["round"] for r in self.rounds for s in range(r["first_shard"], r["first_shard"] + r["shards"])}
        self.shards, broken_rounds = {}, set()
        for done, shard_id in enumerate(on_disk, 1):
            if shard_id not in owner:  # from a retry round that never committed
                _remove_shard(self.root, shard_id)
                continue
            try:
                self.shards[shard_id] = check_shard(self.root, shard_id)
            except BrokenShard:
                _remove_shard(self.root, shard_id)
                broken_rounds.add(owner[shard_id])
            if report:
                report(done, len(on_disk))
        broken_rounds |= {r["round"] for r in self.rounds[1:]
                          if any(s not in self.shards for s in range(r["first_shard"], r["first_shard"] + r["shards"]))}
        first = self.rounds[0]
        todo = [s for s in range(first["shards"]) if s not in self.shards]
        cut = 1 if todo else min(broken_rounds, default=len(self.rounds))
        if cut < len(self.rounds):
            for r in self.rounds[cut:]:
                for s in range(r["first_shard"], r["first_shard"] + r["shards"]):
                    _remove_shard(self.root, s)
                    self.shards.pop(s, None)
            del self.rounds[cut:]
            if self.manifest.get("topups"):  # a top-up whose round went is no longer appended
                self.manifest["topups"] = [t for t in self.manifest["topups"] if t["round"] < cut]
            self.save_manifest()
        return todo

    def new_staging(self) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="staging-", dir=self.work))

    def seed(self, staging: Path) -> None:
        """Copy the committed shards' stats into ``staging``: img2dataset then
        skips them (incremental) or numbers new shards after them (extend)."""
        for shard_id in self.shards:
            shutil.copyfile(shard_files(self.root, shard_id)[2], shard_files(staging, shard_id)[2])

    def commit(self, staging: Path, shard_id: int, info: ShardInfo,
               rewrite: tuple[Callable, Callable] | None = None) -> None:
        """Move a finished shard from ``staging`` into the folder, stats last."""
        src, dst = shard_files(staging, shard_id), shard_files(self.root, shard_id)
        _place(src[0], dst[0], rewrite[0] if rewrite else None)
        _place(src[1], dst[1], rewrite[1] if rewrite else None)
        _place(src[2], dst[2], None)
        self.shards[shard_id] = info

    def add_round(self, first_shard: int, shards: int, rows: int) -> None:
        self.rounds.append({"round": len(self.rounds), "first_shard": first_shard, "shards": shards, "rows": rows})
        self.save_manifest()

    # --- reading back ------------------------------------------------------------------
    def attempts(self, columns: list[str]) -> pa.Table:
        """The latest attempt of every subset row: the committed shards' parquet
        rows (``columns`` + status, error_message, shard), later shards first."""
        parts = []
        for shard_id in sorted(self.shards, reverse=True):
            t = pq.read_table(shard_files(self.root, shard_id)[1], columns=[*columns, "status", "error_message"])
            parts.append(t.append_column("shard", pa.array([shard_id] * t.num_rows, pa.int32())))
        if not parts:
            return pa.table({})
        table = pa.concat_tables(parts, promote_options="permissive")
        return _first_per_key(table, columns[0])

    # --- writing the manifest ----------------------------------------------------------
    def save_manifest(self) -> None:
        write_text(self.root / DOWNLOAD_MANIFEST, json.dumps(self.manifest, indent=2) + "\n")

    def finish(self, summary: dict, options: dict) -> None:
        """``sizes.json`` and the completed manifest, once every shard is in."""
        sizes = {f"{shard_name(s)}.tar": self.shards[s].successes for s in sorted(self.shards)}
        write_text(self.root / SHARD_SIZES_FILE, json.dumps(sizes, indent=2) + "\n")
        round_of = {s: r["round"] for r in self.rounds for s in range(r["first_shard"], r["first_shard"] + r["shards"])}
        self.manifest.update(
            options=options, complete=True, summary=summary,
            shards={f"{shard_name(s)}.tar": {"count": i.count, "successes": i.successes, "round": round_of.get(s)}
                    for s, i in sorted(self.shards.items())})
        self.save_manifest()
        shutil.rmtree(self.work / "inputs", ignore_errors=True)


def _first_per_key(table: pa.Table, key: str) -> pa.Table:
    seen: set = set()
    keep = []
    for i, k in enumerate(table.column(key).to_pylist()):
        if k not in seen:
            seen.add(k)
            keep.append(i)
    return table.take(pa.array(keep, pa.int64()))


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / DOWNLOAD_MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise ReactError(f"{root / DOWNLOAD_MANIFEST} is unreadable; pass --overwrite to start again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not manifest.get("rounds"):
        raise ReactError(f"{root / DOWNLOAD_MANIFEST} is not a react download manifest of this version; "
                         "pass --overwrite to start again")
    return manifest


def clear(root: Path) -> None:
    """What --overwrite removes: the shards, the manifest, sizes.json, the safety record, staging;
    nothing else in the folder."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if SHARD_FILE.match(p.name) or p.name in (DOWNLOAD_MANIFEST, SHARD_SIZES_FILE, SAFETY_DROPPED_FILE,
                                                              SHARD_QUERY_SURVIVAL_FILE):
            p.unlink()
    shutil.rmtree(root / WORK_DIR, ignore_errors=True)
