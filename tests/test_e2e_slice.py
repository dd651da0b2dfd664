"""The first vertical slice end to end, on a shrunk real corpus:
fetch -> train the base (a few steps) -> zero-shot eval, through the CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from react.cli import run
from react.models import load_model

pytestmark = pytest.mark.slow


def react(*argv: str) -> subprocess.CompletedProcess:
    """The installed entry point, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "react", *argv], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def small_corpus() -> Path:
    proc = react("corpus", "fetch-embedded", "--fraction", "0.25")
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert (path / "manifest.json").is_file()
    return path


@pytest.fixture(scope="session")
def small_base(small_corpus: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "model"
    code = run(["base", "train-embedded", "--corpus", str(small_corpus), "--out", str(out),
                "--steps", "4", "--batch-size", "16"])
    assert code == 0
    return out


def test_corpus_parts_are_disjoint_and_complete(small_corpus: Path):
    import pyarrow.parquet as pq

    manifest = json.loads((small_corpus / "manifest.json").read_text())
    parts = {p: pq.read_table(small_corpus / f"{p}.parquet").to_pylist() for p in ("pretraining", "retrieval", "downstream")}
    for name, rows in parts.items():
        assert len(rows) == manifest["counts"][name] > 0
        assert all((small_corpus / r["image_path"]).is_file() for r in rows)
        assert all(r["caption"].strip() and r["url"] and r["license"] for r in rows)
    test_keys = {r["key"] for r in parts["downstream"]}
    test_shas = {r["sha256"] for r in parts["downstream"]}
    for other in ("pretraining", "retrieval"):
        assert not test_keys & {r["key"] for r in parts[other]}
        assert not test_shas & {r["sha256"] for r in parts[other]}
    classes = (small_corpus / "downstream_classes.txt").read_text().split()
    assert {r["label"] for r in parts["downstream"]} <= set((small_corpus / "downstream_classes.txt").read_text().splitlines())
    assert len(classes) >= 2
    assert {s["package"] for s in manifest["sources"]} == {"tuxpaint-stamps-default", "emoji-datasource-google"}


def test_second_fetch_is_cached(small_corpus: Path):
    proc = react("corpus", "fetch-embedded", "--fraction", "0.25")
    assert proc.returncode == 0
    assert Path(proc.stdout.strip()) == small_corpus
    assert "converting" not in proc.stderr


def test_base_checkpoint_is_open_clip_loadable_and_text_is_locked(small_base: Path):
    import open_clip
    from transformers import AutoModel, AutoTokenizer

    config = json.loads((small_base / "open_clip_config.json").read_text())
    assert config["react"]["base"]["recipe"]["steps"] == 4
    # plain open_clip, no react code in the way
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(small_base))
    assert type(model.visual).__name__ == "VisionTransformer"

    loaded = load_model(small_base, device="cpu")
    texts = ["a photo of a bird.", "a red apple"]
    ours = loaded.encode_texts(texts)
    # locked MiniLM with identity projection == sentence-transformers' mean pooling
    path = config["model_cfg"]["text_cfg"]["hf_model_name"]
    tok, bert = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(ours, ref, atol=1e-4)

    again = load_model(small_base, device="cpu")
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded.encode_images(x), again.encode_images(x))


def test_base_training_is_deterministic_for_a_seed(small_corpus: Path, small_base: Path, tmp_path: Path):
    from safetensors.torch import load_file

    again = tmp_path / "again"
    assert run(["base", "train-embedded", "--corpus", str(small_corpus), "--out", str(again),
                "--steps", "4", "--batch-size", "16"]) == 0
    a = load_file(str(small_base / "open_clip_model.safetensors"))
    b = load_file(str(again / "open_clip_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_empty_caption_in_a_corpus_is_named(small_corpus: Path, tmp_path: Path):
    import pyarrow.parquet as pq

    bad = tmp_path / "corpus"
    shutil.copytree(small_corpus, bad)
    table = pq.read_table(bad / "pretraining.parquet")
    captions = table.column("caption").to_pylist()
    captions[1] = " "
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions))
    pq.write_table(table, bad / "pretraining.parquet")
    proc = react("base", "train-embedded", "--corpus", str(bad), "--out", str(tmp_path / "m"))
    assert proc.returncode == 2
    key = table.column("key")[1].as_py()
    assert proc.stderr.strip().splitlines()[-1] == f"error: {bad / 'pretraining.parquet'}: empty caption for key {key!r}"
    assert not (tmp_path / "m").exists()


def test_zeroshot_cli_writes_result(small_base: Path, small_corpus: Path, tmp_path: Path):
    out = tmp_path / "results" / "base.json"
    proc = react("eval", "zeroshot", "--model", str(small_base), "--dataset", str(small_corpus),
                 "--templates", "simple", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"task", "model", "dataset", "metrics", "per_class"}
    assert result["task"] == "zeroshot"
    for key in ("top1", "top5", "mean_per_class_recall"):
        assert 0.0 <= result["metrics"][key] <= 1.0
    assert result["metrics"]["top5"] >= result["metrics"]["top1"]
    assert [p.name for p in out.parent.iterdir()] == ["base.json"]  # no temp files left


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["eval", "zeroshot", "--model", "ViT-Nope-99", "--dataset", "{corpus}", "--out", "{tmp}/r.json"], "ViT-Nope-99"),
        (["eval", "zeroshot", "--model", "{tmp}/no/such/ckpt", "--dataset", "{corpus}", "--out", "{tmp}/r.json"], "no/such/ckpt"),
        (["eval", "zeroshot", "--model", "{base}", "--dataset", "{tmp}/empty", "--out", "{tmp}/r.json"], "empty"),
        (["base", "train-embedded", "--corpus", "{tmp}/empty", "--out", "{tmp}/b"], "empty"),
        (["base", "train-embedded", "--corpus", "{corpus}", "--out", "{tmp}/b", "--photo-weight", "0"], "--photo-weight"),
        (["base", "train-embedded", "--corpus", "{corpus}", "--out", "{tmp}/b", "--lr", "-1"], "--lr"),
        (["base", "train-embedded", "--corpus", "{corpus}", "--out", "{tmp}/b", "--mosaic-weight", "-1"],
         "--mosaic-weight"),
        (["base", "train-embedded", "--corpus", "{corpus}", "--out", "{tmp}/b", "--mosaic-weight", "1",
          "--image-size", "72"], "even patch grid"),
    ],
)
def test_bad_input_is_one_line_naming_the_culprit(argv, culprit, small_corpus, small_base, tmp_path):
    (tmp_path / "empty").mkdir()
    argv = [a.format(corpus=small_corpus, base=small_base, tmp=tmp_path) for a in argv]
    proc = react(*argv)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and culprit in lines[-1], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "b").exists()


def test_mosaic_loss_trains_a_base_whose_patch_tokens_are_read_by_the_evaluators(small_corpus: Path, tmp_path: Path):
    """--mosaic-weight (the recipe's default): the recipe records it, the weights differ from a
    run with it off (same seed), and the output tokens it trains are what `--dense-mode tokens` reads."""
    from safetensors.torch import load_file

    from downstream.tasks.dense import dense_features
    from react.models import load_model

    out = tmp_path / "mosaic"
    assert run(["base", "train-embedded", "--corpus", str(small_corpus), "--out", str(out), "--steps", "4",
                "--batch-size", "16", "--mosaic-weight", "1"]) == 0
    recipe = json.loads((out / "open_clip_config.json").read_text())["react"]["base"]["recipe"]
    assert recipe["mosaic_weight"] == 1.0
    plain = tmp_path / "plain"
    assert run(["base", "train-embedded", "--corpus", str(small_corpus), "--out", str(plain), "--steps", "4",
                "--batch-size", "16", "--mosaic-weight", "0"]) == 0
    a, b = load_file(str(out / "open_clip_model.safetensors")), load_file(str(plain / "open_clip_model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("visual."))
    model = load_model(str(out), device="cpu")
    visual = model.model.visual
    assert not visual.output_tokens  # saved as an ordinary tower
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(images)
    finally:
        visual.output_tokens = False
    own = torch.nn.functional.normalize(tokens @ visual.proj, dim=-1).reshape(2, 8, 8, -1)
    assert torch.allclose(dense_features(model, images, mode="tokens"), own, atol=1e-5)
