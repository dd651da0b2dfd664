"""``--local-corpus DIR``: the same img2dataset run, fed from disk.

Each row's image is found in DIR -- by url or key in the corpus parquet files
there (``url`` + ``image_path``, the project's corpus form), in webdataset
shards there (img2dataset's output of an earlier download; the ``.json``
names the url), or by the subset's own ``image_path`` -- and img2dataset
reads it through a ``file://`` url: no HTTP, the same resizer, the same
writer. img2dataset records the url it fetched, so the original url rides
along in a spare column and is put back when each shard is committed: the
shards then equal those of the HTTP path sample for sample (keys, image bytes,
captions, .json). A row whose image is not in DIR fails as "not found".
"""
from __future__ import annotations

import copy
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from react.errors import ReactError
from react.images import read_span
from react.progress import console
from react.schemas import SHARD_SUBSET_KEY
from react.shards import TarMember, is_shard, scan_tar

LOCAL_URL = "_react_url"  # the row's real url while img2dataset reads the file


class LocalCorpus:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ReactError(f"--local-corpus {self.root} is not a folder")
        self.by_url: dict[str, Path | TarMember] = {}
        self.by_key: dict[str, Path | TarMember] = {}
        for parquet in sorted(self.root.glob("*.parquet")):
            try:
                t = pq.read_table(parquet)
            except (OSError, pa.ArrowException):
                raise ReactError(f"--local-corpus: not a readable parquet file: {parquet}") from None
            if not {"url", "image_path"} <= set(t.column_names):
                continue
            keys = t.column("key").to_pylist() if "key" in t.column_names else [None] * t.num_rows
            for key, url, rel in zip(keys, t.column("url").to_pylist(), t.column("image_path").to_pylist()):
                if rel:
                    self._add(url, key, self.root / rel)
        for shard in sorted(p for p in self.root.iterdir() if is_shard(p)):
            for sample in scan_tar(shard, want=("json",)):
                if isinstance(sample.image, TarMember) and "json" in sample.files:
                    meta = json.loads(sample.files["json"])
                    self._add(meta.get("url"), meta.get(SHARD_SUBSET_KEY), sample.image)

    def _add(self, url: str | None, key: str | None, where: Path | TarMember) -> None:
        if url:
            self.by_url.setdefault(url, where)
        if key:
            self.by_key.setdefault(str(key), where)

    def prepare(self, table: pa.Table, image_paths: dict[str, str] | None, files: Path) -> pa.Table:
        """img2dataset's input for ``table``: ``url`` the image's file url,
        LOCAL_URL the real one (placed before ``caption``)."""
        files.mkdir(parents=True, exist_ok=True)
        fetch, found = [], 0
        keys = table.column(SHARD_SUBSET_KEY).to_pylist()
        for i, (key, url) in enumerate(zip(keys, table.column("url").to_pylist())):
            where = self.by_url.get(url) or self.by_key.get(key)
            if where is None and image_paths and image_paths.get(key):
                candidate = self.root / image_paths[key]
                where = candidate if candidate.is_file() else None
            if isinstance(where, TarMember):
                path = files / f"{i}{Path(where.name).suffix}"
                path.write_bytes(read_span(where.tar, where.offset, where.size))
                where = path
            if where is None:
                where = files / "not-in-local-corpus" / str(i)  # fails as a missing file
            else:
                found += 1
            fetch.append(Path(where).resolve().as_uri())
        if found == 0:
            raise ReactError(f"--local-corpus {self.root}: none of the {table.num_rows} images is there "
                             "(looked up by url and key in its parquet files and shards, and by image_path)")
        if found < table.num_rows:
            console.print(f"[yellow]warning:[/] {table.num_rows - found} of {table.num_rows} images are not in "
                          f"{self.root}; they count as not found", highlight=False)
        at = table.column_names.index("caption")
        table = table.add_column(at, LOCAL_URL, table.column("url"))
        return table.set_column(table.column_names.index("url"), "url", pa.array(fetch, pa.string()))


def restore_tar(src: Path, dst: Path) -> None:
    """Copy a shard, putting each sample's real url back into its .json."""
    with tarfile.open(src, "r:") as tin, tarfile.open(dst, "w", format=tin.format) as tout:
        for member in tin:
            data = tin.extractfile(member).read() if member.isfile() else None
            if member.isfile() and member.name.endswith(".json"):
                meta = json.loads(data)
                meta["url"] = meta.pop(LOCAL_URL)  # "url" keeps its place in the key order
                data = json.dumps(meta, indent=4).encode("utf-8")
                member = copy.copy(member)
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)


def restore_parquet(src: Path, dst: Path) -> None:
    table = pq.read_table(src)
    table = table.set_column(table.column_names.index("url"), "url", table.column(LOCAL_URL))
    pq.write_table(table.drop_columns([LOCAL_URL]), dst)


RESTORE = (restore_tar, restore_parquet)
