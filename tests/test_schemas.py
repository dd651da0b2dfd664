"""Data contracts: validation, atomic writes, parquet reading errors."""
import pyarrow as pa
import pytest

from react.errors import ReactError
from react.schemas import (
    CORPUS_SCHEMA,
    atomic_path,
    img_emb_path,
    metadata_path,
    read_parquet,
    text_emb_path,
    validate_corpus_table,
    write_parquet,
)


def _table(rows):
    return pa.Table.from_pylist(rows, schema=CORPUS_SCHEMA)


def _row(key, caption="a cat."):
    return {"key": key, "url": f"http://x.invalid/{key}.jpg", "caption": caption, "image_path": f"{key}.jpg",
            "source": "t", "license": "x", "category": "c", "label": None, "sha256": key}


def test_valid_corpus_table_passes():
    validate_corpus_table(_table([_row("a"), _row("b")]), "t")


@pytest.mark.parametrize(
    "rows, message",
    [
        ([_row("a"), _row("a")], "duplicate key 'a'"),
        ([_row("a", caption="  ")], "empty caption for key 'a'"),
        ([_row("")], "empty key"),
    ],
)
def test_bad_corpus_tables_name_the_culprit(rows, message):
    with pytest.raises(ReactError, match=message):
        validate_corpus_table(_table(rows), "t")


def test_missing_columns_are_named(tmp_path):
    path = write_parquet(pa.table({"key": ["a"], "caption": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(ReactError, match="missing column\\(s\\) url"):
        read_parquet(path, required=("key", "url", "caption"))


def test_unreadable_and_missing_parquet(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ReactError, match="not a readable parquet"):
        read_parquet(bad)
    with pytest.raises(ReactError, match="file not found"):
        read_parquet(tmp_path / "nope.parquet")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        tmp.write_text("whole")
    assert final.read_text() == "whole"


def test_atomic_outputs_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    import os
    import stat

    from react.schemas import atomic_dir

    from react import schemas

    with atomic_path(tmp_path / "f.json") as tmp:
        tmp.write_text("{}")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("x")
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~schemas._UMASK
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~schemas._UMASK
    assert schemas._UMASK == (lambda m: (os.umask(m), m)[1])(os.umask(0))


def test_embedding_layout_names(tmp_path):
    assert img_emb_path(tmp_path, 3).relative_to(tmp_path).as_posix() == "img_emb/img_emb_3.npy"
    assert text_emb_path(tmp_path, 0).relative_to(tmp_path).as_posix() == "text_emb/text_emb_0.npy"
    assert metadata_path(tmp_path, 1).relative_to(tmp_path).as_posix() == "metadata/metadata_1.parquet"


# --- atomic_dir under SIGKILL (issue 16) --------------------------------------------------------

_REPLACER = """
import itertools, sys
from pathlib import Path
from react.schemas import atomic_dir
final, files = Path(sys.argv[1]), int(sys.argv[2])
for gen in itertools.count():
    with atomic_dir(final) as tmp:
        for i in range(files):
            (tmp / f"{i:05d}").write_text(str(gen))
        (tmp / "DONE").write_text(str(gen))
    print(gen, flush=True)
"""


def _complete(folder, files: int) -> bool:
    """Every file of one generation, the DONE marker last written."""
    done = folder / "DONE"
    if not done.is_file():
        return False
    gen = done.read_text()
    parts = [folder / f"{i:05d}" for i in range(files)]
    return all(p.is_file() and p.read_text() == gen for p in parts) and len(list(folder.iterdir())) == files + 1


def _asides(final):
    return [p for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.old-")]


def test_atomic_dir_killed_while_replacing_leaves_a_whole_folder(tmp_path):
    """A process replacing a 1500-file folder in a loop is SIGKILLed at random moments:
    after each kill, ``final`` is a whole generation, or absent with one whole aside folder
    (never half-deleted); the next run puts the aside back."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from react.schemas import recover_dir

    files, final = 1500, tmp_path / "out"
    rng = random.Random(0)
    for round_ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _REPLACER, str(final), str(files)],
                                stdout=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()  # one whole replacement done: inside the loop now
            assert first, "the replacing process died"
            started = time.monotonic()
            proc.stdout.readline()
            cycle = time.monotonic() - started
            time.sleep(rng.uniform(0, cycle))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if final.exists():
            assert _complete(final, files), f"round {round_}: {final} holds a partial folder"
        else:
            asides = _asides(final)
            assert len(asides) == 1 and _complete(asides[0], files), f"round {round_}: no whole folder left"
    recover_dir(final)
    assert _complete(final, files) and not _asides(final)


_KILLED_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from react.schemas import atomic_dir
real = os.rename
def rename(src, dst, *a, **k):  # the process dies right after the old folder is set aside
    real(src, dst, *a, **k)
    if ".old-" in os.fspath(dst):
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "v").write_text("new")
"""


def test_atomic_dir_restores_the_old_folder_after_a_crash_between_renames(tmp_path):
    import signal
    import subprocess
    import sys

    from react.schemas import atomic_dir

    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "v").write_text("old")
    proc = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_RENAMES, str(final)])
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists() and [(p / "v").read_text() for p in _asides(final)] == ["old"]
    # The next run (here one that fails) first puts the old folder back.
    with pytest.raises(RuntimeError):
        with atomic_dir(final):
            raise RuntimeError("boom")
    assert (final / "v").read_text() == "old" and not _asides(final)
    # (the killed process's own work folder stays: it could as well be a live writer's)
    # A leftover aside beside a present final (killed while deleting it) is removed.
    (tmp_path / ".out.old-dead").mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "v").write_text("new")
    assert (final / "v").read_text() == "new" and not _asides(final)
