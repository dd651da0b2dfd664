"""Corrupt inputs through the real CLI (issue 16): each is a one-line error with
exit 2 naming the culprit, or a counted skip naming the item -- never a
traceback, never a silent wrong answer. One table; each row builds its broken
input from the small fixtures the stage tests use."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from react.cli import run
from react.schemas import img_emb_path, index_file, metadata_path, text_emb_path

DIM = 32


def _jpeg(seed: int, size=(40, 48)) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def _corrupt_jpeg() -> bytes:
    """A JPEG whose header is fine and whose entropy-coded data stops short."""
    data = _jpeg(99, (64, 64))
    return data[: len(data) // 3]


def _shards(root: Path, pairs: int = 16, per_shard: int = 8, image=None) -> Path:
    """react download's layout: {00000..}.tar (.jpg/.txt/.json) + sizes.json."""
    root.mkdir(parents=True)
    sizes: dict[str, int] = {}
    for i in range(pairs):
        name = f"{i // per_shard:05d}.tar"
        with tarfile.open(root / name, "a") as tf:
            data = image(i) if image else None
            for suffix, payload in (("jpg", _jpeg(i) if data is None else data),
                                    ("txt", ["a red square", "a blue circle"][i % 2].encode()),
                                    ("json", json.dumps({"subset_key": f"k{i}"}).encode())):
                info = tarfile.TarInfo(f"{i:09d}.{suffix}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
        sizes[name] = sizes.get(name, 0) + 1
    (root / "sizes.json").write_text(json.dumps(sizes))
    return root


def _folder_corpus(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"img{i}.jpg").write_bytes(_jpeg(i))
        (root / f"img{i}.txt").write_text(f"picture {i}\n")
    return root


def _emb(root: Path, n: int = 600, part_size: int = 200) -> Path:
    from index.embed import write_embedding_folder
    from test_index import clustered

    img, txt = clustered(n, seed=5)
    write_embedding_folder(root, img, txt, part_size=part_size, model="synthetic")
    return root


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _customize(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["customize", "--base", str(model), "--train-data", str(data), "--out", str(out), "--device", "cpu",
            "--steps", "2", "--batch-size", "4", "--workers", "0", "--no-compile", *extra]


def _embed(corpus: Path, model: Path, out: Path) -> list[str]:
    return ["embed", str(corpus), "--model", str(model), "--out", str(out), "--device", "cpu", "--part-size", "4"]


# --- the cases: each returns (argv, exit status, what the one line must name) -------------------------------

def embed_truncated_tar(tmp, model):
    shards = _shards(tmp / "shards", pairs=8, per_shard=4)
    _truncate(shards / "00001.tar", 0.6)
    return _embed(shards, model, tmp / "emb"), 2, ["00001.tar"]


def embed_corrupt_jpeg(tmp, model):
    corpus = _folder_corpus(tmp / "corpus")
    (corpus / "img3.jpg").write_bytes(_corrupt_jpeg())
    return _embed(corpus, model, tmp / "emb"), 2, ["img3.jpg"]


def embed_zero_byte_image(tmp, model):
    corpus = _folder_corpus(tmp / "corpus")
    (corpus / "img2.jpg").write_bytes(b"")
    return _embed(corpus, model, tmp / "emb"), 2, ["img2.jpg"]


def embed_zero_byte_image_in_a_shard(tmp, model):
    shards = _shards(tmp / "shards", pairs=8, per_shard=4, image=lambda i: b"" if i == 5 else None)
    return _embed(shards, model, tmp / "emb"), 2, ["000000005", "00001.tar"]


def _cut_at_member_boundary(tar: Path) -> None:
    """Drop the last sample and the end-of-archive blocks: tarfile reads what is left silently."""
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    last = [m for m in members if m.name.startswith(members[-1].name.split(".")[0] + ".")]
    data = tar.read_bytes()
    tar.write_bytes(data[: min(m.offset for m in last)])


def embed_tar_cut_at_a_member_boundary(tmp, model):
    shards = _shards(tmp / "shards", pairs=8, per_shard=4)
    (shards / "sizes.json").unlink()
    _cut_at_member_boundary(shards / "00001.tar")
    return _embed(shards, model, tmp / "emb"), 2, ["00001.tar", "truncated"]


def embed_sizes_json_says_more(tmp, model):
    shards = _shards(tmp / "shards", pairs=8, per_shard=4)
    (shards / "sizes.json").write_text(json.dumps({"00000.tar": 4, "00001.tar": 5}))
    return _embed(shards, model, tmp / "emb"), 2, ["00001.tar", "sizes.json says 5"]


def embed_sizes_json_names_a_missing_shard(tmp, model):
    shards = _shards(tmp / "shards", pairs=8, per_shard=4)
    (shards / "sizes.json").write_text(json.dumps({"00000.tar": 4, "00001.tar": 4, "00002.tar": 4}))
    return _embed(shards, model, tmp / "emb"), 2, ["00002.tar", "missing"]


def customize_tar_cut_at_a_member_boundary(tmp, model):
    shards = _shards(tmp / "shards")
    _cut_at_member_boundary(shards / "00001.tar")
    return _customize(model, shards, tmp / "run"), 2, ["00001.tar"]


def customize_truncated_tar(tmp, model):
    shards = _shards(tmp / "shards")
    _truncate(shards / "00001.tar", 0.6)
    return _customize(model, shards, tmp / "run"), 2, ["00001.tar"]


def customize_corrupt_jpeg(tmp, model):
    shards = _shards(tmp / "shards", image=lambda i: _corrupt_jpeg() if i == 3 else None)
    return _customize(model, shards, tmp / "run", "--steps", "4"), 0, ["skipped", "000000003"]  # one epoch


def customize_zero_byte_image(tmp, model):
    shards = _shards(tmp / "shards", image=lambda i: b"" if i == 6 else None)
    return _customize(model, shards, tmp / "run", "--steps", "4"), 0, ["skipped", "000000006"]


def customize_sizes_json_says_more(tmp, model):
    shards = _shards(tmp / "shards")
    (shards / "sizes.json").write_text(json.dumps({"00000.tar": 8, "00001.tar": 9}))
    return _customize(model, shards, tmp / "run"), 2, ["00001.tar", "sizes.json", "9"]


def customize_sizes_json_says_fewer(tmp, model):
    shards = _shards(tmp / "shards")
    (shards / "sizes.json").write_text(json.dumps({"00000.tar": 5, "00001.tar": 8}))
    return _customize(model, shards, tmp / "run"), 2, ["00000.tar", "sizes.json", "5"]


def customize_sizes_json_names_a_missing_shard(tmp, model):
    shards = _shards(tmp / "shards")
    (shards / "sizes.json").write_text(json.dumps({"00000.tar": 8, "00001.tar": 8, "00002.tar": 8}))
    return _customize(model, shards, tmp / "run"), 2, ["00002.tar", "missing"]


def customize_run_dir_from_another_base(tmp, model):
    import open_clip
    import torch

    from conftest import TINY_CFG
    from react.models import save_model

    shards = _shards(tmp / "shards")
    assert run(_customize(model, shards, tmp / "run")) == 0
    torch.manual_seed(1)
    other = save_model(open_clip.CLIP(**TINY_CFG), TINY_CFG, tmp / "other",
                       preprocess_cfg={"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    return _customize(other, shards, tmp / "run", "--resume"), 2, ["run", "customized from base", "other"]


def export_run_dir_from_another_base(tmp, model):
    argv, _, _ = customize_run_dir_from_another_base(tmp, model)
    return ["export", str(tmp / "run"), "--out", str(tmp / "m"), "--base", str(tmp / "other")], 2, \
        ["customized from base", "other"]


def eval_run_dir_whose_base_was_replaced(tmp, model):
    import open_clip
    import torch

    from conftest import TINY_CFG
    from react.models import save_model

    base = tmp / "base"
    shutil.copytree(model, base)
    shards = _shards(tmp / "shards")
    assert run(_customize(base, shards, tmp / "run")) == 0
    shutil.rmtree(base)
    torch.manual_seed(2)  # another model under the base's path
    save_model(open_clip.CLIP(**TINY_CFG), TINY_CFG, base,
               preprocess_cfg={"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    task = tmp / "task"
    for name in ("red", "blue"):
        (task / name).mkdir(parents=True)
        (task / name / "0.jpg").write_bytes(_jpeg(len(name)))
    return ["eval", "zeroshot", "--model", str(tmp / "run"), "--dataset", str(task), "--templates", "classname",
            "--out", str(tmp / "result.json")], 2, ["run", "customized from base", "different model"]


def index_nan_and_zero_embeddings(tmp, model):
    emb = _emb(tmp / "emb")
    part = np.load(img_emb_path(emb, 1))
    part[7] = np.nan
    part[9] = 0
    np.save(img_emb_path(emb, 1), part)
    return ["index", "build", str(emb), "--out", str(tmp / "index"), "--modality", "image", "--factory", "Flat",
            "--n-queries", "50"], 0, ["skipped 2", "part 1"]


def index_all_nan_embeddings(tmp, model):
    emb = _emb(tmp / "emb", n=40, part_size=20)
    for i in range(2):
        np.save(img_emb_path(emb, i), np.full_like(np.load(img_emb_path(emb, i)), np.nan))
    return ["index", "build", str(emb), "--out", str(tmp / "index"), "--modality", "image", "--factory", "Flat",
            "--n-queries", "10"], 2, ["no usable image embeddings"]


def index_metadata_with_fewer_rows(tmp, model):
    emb = _emb(tmp / "emb")
    meta = pq.read_table(metadata_path(emb, 2))
    pq.write_table(meta.slice(0, meta.num_rows - 3), metadata_path(emb, 2))
    return ["index", "build", str(emb), "--out", str(tmp / "index"), "--factory", "Flat"], 2, \
        ["part 2", "row counts differ"]


def index_text_vectors_with_fewer_rows(tmp, model):
    emb = _emb(tmp / "emb")
    np.save(text_emb_path(emb, 0), np.load(text_emb_path(emb, 0))[:-1])
    return ["index", "build", str(emb), "--out", str(tmp / "index"), "--factory", "Flat"], 2, \
        ["part 0", "row counts differ"]


def _index(tmp) -> Path:
    emb = _emb(tmp / "emb")
    out = tmp / "index"
    assert run(["index", "build", str(emb), "--out", str(out), "--modality", "image", "--factory", "Flat",
                "--n-queries", "50"]) == 0
    return out


def index_file_cut_short(tmp, model):
    out = _index(tmp)
    _truncate(index_file(out, "image"))
    return ["index", "eval", str(out), "--queries", str(tmp / "emb")], 2, ["image.faiss", "truncated"]


def index_file_cut_short_and_manifest_agrees(tmp, model):
    out = _index(tmp)
    _truncate(index_file(out, "image"))
    manifest = json.loads((out / "index.json").read_text())
    manifest["indices"]["image"]["bytes"] = index_file(out, "image").stat().st_size
    (out / "index.json").write_text(json.dumps(manifest))
    return ["index", "eval", str(out), "--queries", str(tmp / "emb")], 2, ["image.faiss", "unreadable index"]


def retrieve_from_an_index_file_cut_short(tmp, model):
    out = _index(tmp)
    _truncate(index_file(out, "image"))
    (tmp / "classes.txt").write_text("cat\ndog\n")
    return ["retrieve", "--index", str(out), "--classes", str(tmp / "classes.txt"), "--out",
            str(tmp / "subset.parquet")], 2, ["image.faiss", "truncated"]


CASES = [embed_truncated_tar, embed_tar_cut_at_a_member_boundary, embed_sizes_json_says_more,
         embed_sizes_json_names_a_missing_shard, customize_tar_cut_at_a_member_boundary, embed_corrupt_jpeg, embed_zero_byte_image, embed_zero_byte_image_in_a_shard,
         customize_truncated_tar, customize_corrupt_jpeg, customize_zero_byte_image,
         customize_sizes_json_says_more, customize_sizes_json_says_fewer, customize_sizes_json_names_a_missing_shard,
         customize_run_dir_from_another_base, export_run_dir_from_another_base, eval_run_dir_whose_base_was_replaced,
         index_nan_and_zero_embeddings, index_all_nan_embeddings, index_metadata_with_fewer_rows,
         index_text_vectors_with_fewer_rows, index_file_cut_short, index_file_cut_short_and_manifest_agrees,
         retrieve_from_an_index_file_cut_short]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_corrupt_input(case, tiny_model_dir, tmp_path, capsys):
    argv, status, names = case(tmp_path, tiny_model_dir)
    capsys.readouterr()
    got = run(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert got == status, (got, err[-2000:])
    if status:
        # Progress lines may precede it; the error is one line, the last.
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("error")]
        assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err[-2000:]
        line = lines[0]
        # No finished output left behind by a refused command (embed keeps its whole parts for
        # --resume, but never writes embed.json; a run directory may keep its shard-index cache).
        outputs = [Path(a) for a, flag in zip(argv[1:], argv) if flag == "--out"]
        for o in outputs:
            if case.__name__.startswith(("customize_run_dir", "export_")):
                continue
            if o.is_dir():
                assert not (o / "embed.json").exists() and not (o / "index.json").exists(), o
                assert not (o / "react_run.json").exists() and not (o / "checkpoints").exists(), o
            else:
                assert not o.exists(), o
    else:
        line = next((ln for ln in (out + err).splitlines() if all(n in ln for n in names)), None)
    assert line is not None and all(n in line for n in names), (names, out[-1500:], err[-1500:])
