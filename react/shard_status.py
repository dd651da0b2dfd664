"""What a finished ``react download`` got, row by row, read from its SHARDS_DIR.

``react retrieve --top-up`` (a lower layer than ``download``) needs which
subset rows were requested and which of them failed; both are plain files of
the shards folder's contract (react.schemas): ``download.json`` names the
subset(s) it downloaded and the committed shards, and each shard's parquet
holds every attempted row with its status. The latest attempt of a row wins
(a ``--retry-failed`` round writes later shards).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from react.errors import ReactError
from react.schemas import DOWNLOAD_MANIFEST, SHARD_SUBSET_KEY


@dataclass
class DownloadState:
    root: Path
    manifest: dict
    subsets: list[Path]                                 # the original subset first, then the top-ups, in order
    status: dict[str, bool] = field(default_factory=dict)  # subset key -> downloaded?

    @property
    def digest(self) -> str:
        return self.manifest["input"]["digest"]

    @property
    def topups(self) -> list[dict]:
        return list(self.manifest.get("topups") or [])


def read_download_state(shards_dir: str | Path) -> DownloadState:
    """The finished download in ``shards_dir``; ReactError (one line) when it is
    not one: no folder, no manifest, an unfinished download, a subset file gone."""
    root = Path(shards_dir)
    if not root.is_dir():
        raise ReactError(f"--top-up: {root} is not a folder of shards")
    try:
        manifest = json.loads((root / DOWNLOAD_MANIFEST).read_text())
    except FileNotFoundError:
        raise ReactError(f"--top-up: {root} holds no {DOWNLOAD_MANIFEST} (not written by react download)") from None
    except (OSError, ValueError):
        raise ReactError(f"--top-up: {root / DOWNLOAD_MANIFEST} is unreadable") from None
    if not isinstance(manifest, dict) or not manifest.get("complete") or "summary" not in manifest \
            or not isinstance(manifest.get("shards"), dict) or "digest" not in manifest.get("input", {}):
        raise ReactError(f"--top-up: {root} holds no finished download summary; "
                         "finish it first (react download ... --resume)")
    paths = [Path(manifest["input"]["path"])] + [Path(t["path"]) for t in manifest.get("topups") or []]
    for path in paths:
        if not path.is_file():
            raise ReactError(f"--top-up: {path}, a subset {root} was downloaded from, is gone "
                             "(the top-up needs its rows to know what was requested)")
    state = DownloadState(root, manifest, paths)
    # Later shards hold later attempts (retry rounds, top-up rounds): read them first, first answer wins.
    for name in sorted(manifest["shards"], reverse=True):
        parquet = root / name.replace(".tar", ".parquet")
        try:
            table = pq.read_table(parquet, columns=[SHARD_SUBSET_KEY, "status"])
        except (OSError, ValueError) as exc:
            raise ReactError(f"--top-up: cannot read {parquet} ({exc.__class__.__name__}); "
                             "run react download ... --resume to check the shards") from None
        for key, status in zip(table.column(SHARD_SUBSET_KEY).to_pylist(), table.column("status").to_pylist()):
            state.status.setdefault(key, status == "success")
    return state
