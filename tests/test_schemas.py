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
