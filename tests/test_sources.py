"""Fetching upstream packages by name through the real registry clients."""
import shutil
from dataclasses import replace

import pytest

from react.embedded.sources import EMOJI, fetch, sha256_file
from react.errors import ReactError

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")

# A tiny npm package stands in for the 74 MB emoji tarball: same client, same code.
TINY = replace(EMOJI, name="tiny", package="is-number", version="7.0.0", filename="is-number-7.0.0.tgz",
               sha256="")


def test_fetch_verifies_checksum_and_caches(tmp_path):
    with pytest.raises(ReactError, match="checksum mismatch for is-number-7.0.0.tgz"):
        fetch(replace(TINY, sha256="0" * 64), tmp_path)
    assert not (tmp_path / TINY.filename).exists()  # a bad download is never kept
    assert list(tmp_path.iterdir()) == []


def test_fetch_keeps_a_verified_file(tmp_path):
    import subprocess

    # learn the real digest through the same client, then fetch for real
    subprocess.run(["npm", "pack", "is-number@7.0.0", "--silent"], cwd=tmp_path, check=True, capture_output=True)
    digest = sha256_file(tmp_path / TINY.filename)
    cache = tmp_path / "cache"
    got = fetch(replace(TINY, sha256=digest), cache)
    assert got == cache / TINY.filename and sha256_file(got) == digest
    assert fetch(replace(TINY, sha256=digest), cache) == got  # cached: no second download


def test_unreachable_source_is_named(tmp_path):
    missing = replace(TINY, package="react-clip-no-such-package-xyz", version="0.0.1",
                      filename="react-clip-no-such-package-xyz-0.0.1.tgz")
    with pytest.raises(ReactError, match="cannot fetch react-clip-no-such-package-xyz 0.0.1 from the npm registry"):
        fetch(missing, tmp_path)
