"""``react embed``: three input forms, alignment, resume, checks, errors, CLI."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from index.embed import check_embeddings, embed_corpus
from index.embed_images import load_source
from index.readers import read_corpus
from react.errors import ReactError
from react.schemas import img_emb_path, metadata_path, text_emb_path

N = 7


def _png(i: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12 + i, 10), ((37 * i) % 256, (91 * i) % 256, (53 * i + 20) % 256)).save(buf, format=fmt)
    return buf.getvalue()


def _captions() -> list[str]:
    return [f"a picture number {i} of a thing" for i in range(N)]


def _parquet_corpus(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i, caption in enumerate(_captions()):
        rel = f"images/{i}.png"
        (root / rel).write_bytes(_png(i))
        rows.append({"key": f"k{i:02d}", "url": f"http://x/{i}.png", "caption": caption, "image_path": rel,
                     "source": "test"})
    # Deliberately not in key order: output must follow the input order.
    rows = rows[3:] + rows[:3]
    pq.write_table(pa.Table.from_pylist(rows), root / "retrieval.parquet")
    return root


def _wds_corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    caps = _captions()
    for shard, idx in (("00000.tar", range(0, 4)), ("00001.tar", range(4, N))):
        with tarfile.open(root / shard, "w") as tf:
            for i in idx:
                key = f"{i:09d}"
                ext, fmt = ("jpg", "JPEG") if i % 2 else ("png", "PNG")
                for suffix, data in ((ext, _png(i, fmt)), ("txt", caps[i].encode()),
                                     ("json", json.dumps({"url": f"http://x/{i}", "key": key}).encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return root


def _folder_corpus(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    for i, caption in enumerate(_captions()):
        base = root / ("sub" if i >= 5 else "") / f"img{i}"
        base.with_suffix(".png").write_bytes(_png(i))
        base.with_suffix(".txt").write_text(caption + "\n")
    return root


FORMS = {"parquet": _parquet_corpus, "webdataset": _wds_corpus, "imagefolder": _folder_corpus}


@pytest.mark.parametrize("form", list(FORMS))
def test_forms_aligned_and_equal_to_model(form, tiny_model, tmp_path):
    root = FORMS[form](tmp_path / "corpus")
    corpus = read_corpus(root)
    assert corpus.form == form and len(corpus) == N
    out = tmp_path / "emb"
    result = embed_corpus(root, tiny_model, out, part_size=3, batch_size=2)
    assert result["parts"] == 3 and result["count"] == N and result["embedded"] == [0, 1, 2]
    info = check_embeddings(out)
    assert info["rows_per_part"] == [3, 3, 1] and info["dim"] == 32
    assert json.loads((out / "embed.json").read_text())["count"] == N

    img = np.concatenate([np.load(img_emb_path(out, i)) for i in range(3)])
    txt = np.concatenate([np.load(text_emb_path(out, i)) for i in range(3)])
    meta = pa.concat_tables([pq.read_table(metadata_path(out, i)) for i in range(3)])
    assert img.dtype == txt.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=2e-3)
    assert meta.column("key").to_pylist() == corpus.metadata.column("key").to_pylist()
    captions = meta.column("caption").to_pylist()
    assert sorted(captions) == sorted(_captions())
    # Same pair in every row: the embeddings equal the model's on the same inputs.
    images = torch.stack([tiny_model.preprocess(load_source(s)) for s in corpus.images])
    np.testing.assert_allclose(img.astype(np.float32), tiny_model.encode_images(images).numpy(), atol=2e-3)
    np.testing.assert_allclose(txt.astype(np.float32), tiny_model.encode_texts(captions).numpy(), atol=2e-3)
    if form == "parquet":
        assert meta.column("key").to_pylist()[:2] == ["k03", "k04"]
        assert {"url", "image_path", "source"} <= set(meta.column_names)
    elif form == "webdataset":
        assert meta.column("key").to_pylist() == [f"{i:09d}" for i in range(N)]
        assert meta.column("url").to_pylist()[0] == "http://x/0"
        assert captions == _captions()
    else:
        assert meta.column("key").to_pylist() == [f"img{i}" for i in range(5)] + ["sub/img5", "sub/img6"]


def test_parquet_path_directly(tiny_model, tmp_path):
    root = _parquet_corpus(tmp_path / "corpus")
    (root / "retrieval.parquet").rename(root / "other.parquet")
    assert len(read_corpus(root / "other.parquet")) == N


def test_resume_redoes_only_missing_part(tiny_model, tmp_path):
    root = _folder_corpus(tmp_path / "corpus")
    out = tmp_path / "emb"
    embed_corpus(root, tiny_model, out, part_size=3, batch_size=4)
    for p in (img_emb_path(out, 1), text_emb_path(out, 1), metadata_path(out, 1)):
        p.unlink()
    kept = {p: p.stat().st_mtime_ns for i in (0, 2)
            for p in (img_emb_path(out, i), text_emb_path(out, i), metadata_path(out, i))}
    with pytest.raises(ReactError, match="--resume"):
        embed_corpus(root, tiny_model, out, part_size=3)
    result = embed_corpus(root, tiny_model, out, part_size=3, resume=True)
    assert result["embedded"] == [1] and result["skipped"] == [0, 2]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert check_embeddings(out)["count"] == N
    # A truncated part is redone on resume too.
    img_emb_path(out, 2).write_bytes(img_emb_path(out, 2).read_bytes()[:100])
    assert embed_corpus(root, tiny_model, out, part_size=3, resume=True)["embedded"] == [2]
    # --overwrite redoes everything.
    assert embed_corpus(root, tiny_model, out, part_size=3, overwrite=True)["embedded"] == [0, 1, 2]


def test_check_embeddings_catches_mismatches(tiny_model, tmp_path):
    root = _folder_corpus(tmp_path / "corpus")
    out = tmp_path / "emb"
    embed_corpus(root, tiny_model, out, part_size=3)
    good = img_emb_path(out, 1).read_bytes()
    img_emb_path(out, 1).write_bytes(good[: len(good) - 40])
    with pytest.raises(ReactError, match="part 1"):
        check_embeddings(out)
    img_emb_path(out, 1).write_bytes(good)
    meta = pq.read_table(metadata_path(out, 2))
    pq.write_table(pa.concat_tables([meta, meta]).combine_chunks(), metadata_path(out, 2))
    with pytest.raises(ReactError, match=r"part 2: row counts differ"):
        check_embeddings(out)
    pq.write_table(meta, metadata_path(out, 2))
    np.save(img_emb_path(out, 0), np.load(img_emb_path(out, 0)).astype(np.float32))
    with pytest.raises(ReactError, match="part 0.*float16"):
        check_embeddings(out)


def test_corrupt_image_names_the_file(tiny_model, tmp_path):
    root = _folder_corpus(tmp_path / "corpus")
    (root / "img3.png").write_bytes(b"not an image")
    for workers in (0, 1):
        with pytest.raises(ReactError, match=r"img3\.png"):
            embed_corpus(root, tiny_model, tmp_path / f"emb{workers}", part_size=3, workers=workers,
                         overwrite=True)
        assert not metadata_path(tmp_path / f"emb{workers}", 1).exists()


def test_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReactError, match="no corpus found"):
        read_corpus(tmp_path / "empty")
    root = _folder_corpus(tmp_path / "f")
    (root / "img2.txt").unlink()
    with pytest.raises(ReactError, match="no caption for image .*img2.png"):
        read_corpus(root)


def test_cli(tiny_model_dir, tmp_path, capsys):
    from react.cli import run

    root = _wds_corpus(tmp_path / "shards")
    out = tmp_path / "emb"
    argv = ["embed", str(root), "--model", str(tiny_model_dir), "--out", str(out), "--part-size", "3",
            "--device", "cpu"]
    assert run(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert check_embeddings(out)["parts"] == 3
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--resume" in err and "\n" not in err
    assert run(argv + ["--resume"]) == 0


def test_check_embeddings_finds_keys_repeated_across_parts(tmp_path):
    """Duplicate keys are found from key hashes across parts; the error names the later part and the key."""
    from index.embed import write_embedding_folder

    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 8)).astype(np.float32)
    keys = [f"k{i}" for i in range(10)]
    keys[7] = "k2"  # part 0 holds rows 0-3, part 2 rows 8-9: row 7 is in part 1
    meta = pa.table({"key": keys, "caption": ["c"] * 10, "url": ["http://x.invalid/"] * 10})
    write_embedding_folder(tmp_path / "dup", x, x, meta, part_size=4)
    with pytest.raises(ReactError, match=r"part 1: duplicate key 'k2'"):
        check_embeddings(tmp_path / "dup")
    meta = meta.set_column(0, "key", pa.array([f"k{i}" for i in range(10)]))
    write_embedding_folder(tmp_path / "ok", x, x, meta, part_size=4)
    assert check_embeddings(tmp_path / "ok")["count"] == 10


def test_resume_after_interrupted_first_run_refuses_another_models_parts(tiny_model_dir, tmp_path, capsys):
    """A first run that dies after part 0 leaves no embed.json; --resume with another
    model of the same dim must not keep part 0 and name the new model (issue 16)."""
    import open_clip

    from react.cli import run
    from react.models import save_model
    from tests.conftest import TINY_CFG

    torch.manual_seed(1)
    other = tmp_path / "other"  # same architecture and dim, other weights
    save_model(open_clip.CLIP(**TINY_CFG), TINY_CFG, other,
               preprocess_cfg={"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    root = _folder_corpus(tmp_path / "corpus")
    good = (root / "img4.png").read_bytes()
    (root / "img4.png").write_bytes(b"not an image")  # part 1 fails: a real interruption after part 0
    out = tmp_path / "emb"
    argv = ["embed", str(root), "--out", str(out), "--part-size", "3", "--device", "cpu"]
    assert run(argv + ["--model", str(tiny_model_dir)]) == 2
    capsys.readouterr()
    assert metadata_path(out, 0).is_file() and not (out / "embed.json").exists()
    (root / "img4.png").write_bytes(good)
    assert run(argv + ["--model", str(other), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume" in err and "model" in err and "\n" not in err
    assert not (out / "embed.json").exists()
    # The same model resumes, keeps part 0, and the final manifest replaces the plan -- also from
    # another path (a copied model folder: same weights, same identity).
    import shutil

    copied = shutil.copytree(tiny_model_dir, tmp_path / "copied")
    assert run(argv + ["--model", str(copied), "--resume"]) == 0
    assert check_embeddings(out)["count"] == N
    assert not any(p.name.startswith("embed.") and p.name != "embed.json" for p in out.iterdir())
