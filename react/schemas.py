"""The project's data contracts, defined once.

Every stage reads and writes these layouts through the helpers here, so a
column rename or a new required field is a one-line change.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from react.errors import ReactError

# --- corpus (the project's standard form: parquet + images) -----------------
# A corpus directory holds one parquet per part plus the image files they name.
CORPUS_PARTS = ("pretraining", "retrieval", "downstream")
CORPUS_MANIFEST = "manifest.json"
CLASSES_FILE = "downstream_classes.txt"  # the downstream task's only instruction
TEMPLATES_FILE = "downstream_templates.txt"  # its prompt templates, "{}" for the class
CORPUS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),         # stable id, unique within the corpus
        ("url", pa.string()),         # where a web client would fetch the image
        ("caption", pa.string()),     # one line of English
        ("image_path", pa.string()),  # relative to the corpus directory
        ("source", pa.string()),      # which upstream package it came from
        ("license", pa.string()),
        ("category", pa.string()),    # upstream category path (metadata only)
        ("label", pa.string()),       # downstream class name; null outside the task
        ("sha256", pa.string()),      # of the image file, for leak checks
    ]
)
CORPUS_REQUIRED = ("key", "url", "caption")

# --- embeddings (clip-retrieval / LAION layout) ------------------------------
IMG_EMB_DIR, TEXT_EMB_DIR, METADATA_DIR = "img_emb", "text_emb", "metadata"
EMBEDDING_METADATA_REQUIRED = ("key", "caption")


def img_emb_path(root: Path, part: int) -> Path:
    return Path(root) / IMG_EMB_DIR / f"img_emb_{part}.npy"


def text_emb_path(root: Path, part: int) -> Path:
    return Path(root) / TEXT_EMB_DIR / f"text_emb_{part}.npy"


def metadata_path(root: Path, part: int) -> Path:
    return Path(root) / METADATA_DIR / f"metadata_{part}.parquet"


# --- index folder -------------------------------------------------------------
# INDEX_DIR/index.json, one faiss file per modality, the row metadata as a
# memory-mappable Arrow IPC file (global row order), and -- only when the build
# skipped bad rows -- the faiss id -> global row map.
INDEX_JSON = "index.json"
# Similarity calibration of an index folder that lacks it in index.json (built before it existed, or a
# clip-retrieval folder): computed on first load and kept beside the index (index.calibration).
INDEX_CALIBRATION = "calibration.json"
INDEX_METADATA = "metadata.arrow"
INDEX_FORMAT = 1


def index_file(root: Path, modality: str) -> Path:
    return Path(root) / f"{modality}.faiss"


def index_ids_file(root: Path, modality: str) -> Path:
    return Path(root) / f"{modality}_ids.npy"


def ivfdata_file(index_path: Path) -> Path:
    """The on-disk inverted lists of an index file built with ``--on-disk``
    (or merged from partial indices): same name, ``.ivfdata`` suffix."""
    return Path(index_path).with_suffix(".ivfdata")


# --- retrieved subset ---------------------------------------------------------
SUBSET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("similarity", pa.float32()),
        ("classes", pa.list_(pa.string())),
    ]
)
# Extra columns ``react retrieve`` appends after these (img2dataset ignores them):
# ``queries`` list<string> (the prompts that found the pair, best first),
# ``hits`` int32, ``duplicates`` int32 (near-duplicate images collapsed into
# this row, itself included), ``row`` int64 (global index row), ``image_path``
# where the corpus is local, and the SAFETY_COLUMNS the corpus metadata has.
# The task report (spec, per-class statistics, warnings) is JSON in the
# parquet's schema metadata under this key.
SUBSET_TASK_KEY = "react.task"
# LAION's safety metadata, carried as it is from the corpus metadata into the
# subset when the corpus has it: ``punsafe`` float (probability the image is
# unsafe, from LAION's CLIP-based detector), ``NSFW`` string ("UNLIKELY",
# "UNSURE", "NSFW"). ``react download --safety metadata`` filters on them.
SAFETY_COLUMNS = ("punsafe", "NSFW")
# A top-up subset (``react retrieve --top-up SHARDS_DIR``) also carries, under
# this key, JSON naming the download it extends: {"of": the digest download.json
# records for SHARDS_DIR's subset, "shards_dir": path, "round": top-up number,
# "short": {class: rows it was asked to replace}}. ``react download`` appends
# such a subset to that SHARDS_DIR instead of refusing it as another subset.
SUBSET_TOPUP_KEY = "react.topup"

# --- shards -------------------------------------------------------------------
# A shards folder (``react download``, img2dataset's webdataset output):
# ``{00000..N}.tar`` with ``.jpg``/``.txt``/``.json`` per sample, img2dataset's
# ``{shard}_stats.json`` and ``{shard}.parquet`` (every row, with status and
# error), ``sizes.json`` ({"00000.tar": successful samples}) written last, and
# the download manifest (input digest, options, rounds, summary).
SHARD_SIZES_FILE = "sizes.json"
DOWNLOAD_MANIFEST = "download.json"
# Subset columns carried into every sample's .json (those present). img2dataset
# reserves ``key`` for its own sample key, so the subset's key travels as
# ``subset_key``; a subset without keys gets its row numbers.
SHARD_KEPT_COLUMNS = ("key", "similarity", "classes")
SHARD_SUBSET_KEY = "subset_key"
# ``react download --safety``: a shard parquet row whose image the classifier
# removed from the tar carries this status (img2dataset's are "success" and
# "failed_to_*"); every row the filter dropped, and why, is listed in
# SAFETY_DROPPED_FILE (subset_key, classes, url, caption, reason, score, label).
SAFETY_DROPPED_STATUS = "dropped_unsafe"
SAFETY_DROPPED_FILE = "safety_dropped.parquet"
# Per-query survival of a download (``queries`` x status), in full, next to
# download.json when the task has more queries than the summary JSON lists.
SHARD_QUERY_SURVIVAL_FILE = "per_query.parquet"

# --- eval results ---------------------------------------------------------------
RESULT_KEYS = ("task", "model", "dataset", "metrics", "per_class")


def require_columns(table: pa.Table | pa.Schema, required: tuple[str, ...], where: str) -> None:
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    missing = [c for c in required if c not in names]
    if missing:
        raise ReactError(f"{where}: missing column(s) {', '.join(missing)}")


def read_parquet(path: str | os.PathLike, required: tuple[str, ...] = ()) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise ReactError(f"file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReactError(f"not a readable parquet file: {path} ({exc})") from None
    require_columns(table, required, str(path))
    return table


def check_pairs(keys: list, captions: list, where: str) -> None:
    """At least one pair; keys unique and non-empty; captions non-empty."""
    if not keys:
        raise ReactError(f"empty corpus: {where}")
    seen: set = set()
    for i, (key, caption) in enumerate(zip(keys, captions)):
        if not key:
            raise ReactError(f"{where}: empty key at row {i}")
        if key in seen:
            raise ReactError(f"{where}: duplicate key {key!r}")
        seen.add(key)
        if caption is None or not str(caption).strip():
            raise ReactError(f"{where}: empty caption for key {key!r}")


def validate_corpus_table(table: pa.Table, where: str) -> None:
    require_columns(table, CORPUS_REQUIRED, where)
    check_pairs(table.column("key").to_pylist(), table.column("caption").to_pylist(), where)


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def umask_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp result the mode a plain open()/mkdir() would have:
    those create 0600/0700, which would make outputs private to their writer."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def _work_prefix(final: Path, pid: int | None = None) -> str:
    """Temporary siblings of ``final`` carry their writer's host and pid, so that a
    later writer can tell the leftovers of a killed one from a live one's."""
    import socket
    import zlib

    host = zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF
    return f".{final.name}.w{host:06x}p{os.getpid() if pid is None else pid}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def sweep_stale_work(final: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``final`` (from :func:`atomic_path` and
    :func:`atomic_dir`) left by a writer on this host that no longer runs: a
    SIGKILL skips the ``finally`` that removes them. Returns what was removed."""
    import re

    final = Path(final)
    here = _work_prefix(final, pid=0)[: -len("0.")]
    pattern = re.compile(re.escape(here) + r"(\d+)\.")
    removed = []
    try:
        entries = [p for p in final.parent.iterdir() if p.name.startswith(here)]
    except OSError:
        return removed
    for path in entries:
        m = pattern.match(path.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _remove(path)
            removed.append(path)
    return removed


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_work(final)
    fd, tmp_name = tempfile.mkstemp(prefix=_work_prefix(final), suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask_mode(tmp)
    try:
        yield tmp
        tmp.replace(final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces ``final`` only on success.

    The old ``final`` is renamed aside (``.NAME.old-XXXX``) before the new one is
    renamed in, and removed only after: deleting it first would leave a crash
    between the two steps with no output, and one during the deletion with a
    half-deleted one under the final name. A crash between the two renames leaves
    the old folder aside and no ``final``; :func:`recover_dir`, run on entry here,
    puts it back (and removes asides whose ``final`` exists)."""
    import secrets

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    sweep_stale_work(final)
    tmp = Path(tempfile.mkdtemp(prefix=_work_prefix(final), dir=final.parent))
    umask_mode(tmp, directory=True)
    try:
        yield tmp
        aside = final.with_name(f"{_aside_prefix(final)}{secrets.token_hex(4)}")
        had_old = os.path.lexists(final)
        if had_old:
            os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            if had_old:
                os.rename(aside, final)
            raise
        if had_old:
            _remove(aside)
    finally:
        if tmp.exists():
            _remove(tmp)


def _aside_prefix(final: Path) -> str:
    # mkdtemp's names (atomic_dir's work folders) never hold "-": no clash with these.
    return f".{final.name}.old-"


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover_dir(final: str | os.PathLike) -> None:
    """Finish an :func:`atomic_dir` replacement cut short by a crash: with no
    ``final``, the most recently set-aside old folder becomes ``final`` again;
    every other aside folder is removed."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    prefix = _aside_prefix(final)
    asides = [p for p in final.parent.iterdir() if p.name.startswith(prefix)]
    # rename() updates the ctime: the last one set aside is the newest output.
    asides.sort(key=lambda p: p.lstat().st_ctime_ns)
    if asides and not os.path.lexists(final):
        os.rename(asides.pop(), final)
    for aside in asides:
        _remove(aside)


def write_parquet(table: pa.Table, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
