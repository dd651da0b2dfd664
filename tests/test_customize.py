"""Customization trainer (customize/): gated blocks, modes, loss, resume,
export round trip and CLI errors, on the tiny fixture model (conftest)."""
from __future__ import annotations

import copy
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from react.cli import run as cli
from react.errors import ReactError

# Captions repeat so that gamma = 0.9 positives exist inside a batch.
CAPTIONS = ["a red square", "a blue circle", "a green triangle", "a yellow star"]
NUM_PAIRS = 16


def _write_shards(root: Path, pairs: int = NUM_PAIRS, per_shard: int = 8, reverse: bool = False) -> Path:
    """The `react download` layout: {00000..}.tar with .jpg/.txt/.json per
    sample and sizes.json, written with webdataset's ShardWriter (``reverse``:
    each shard's samples in the opposite order, as a download finishing them
    in another order writes them)."""
    import webdataset as wds
    from PIL import Image

    root.mkdir(parents=True)
    sizes: dict[str, int] = {}
    order = list(range(pairs))
    if reverse:
        order = [i for s in range(0, pairs, per_shard) for i in reversed(range(s, min(s + per_shard, pairs)))]
    with wds.ShardWriter(str(root / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in order:
            rng = np.random.default_rng(i)
            pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG")
            sink.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": CAPTIONS[i % len(CAPTIONS)],
                        "json": json.dumps({"subset_key": f"k{i}", "similarity": 0.5}).encode()})
            name = f"{i // per_shard:05d}.tar"
            sizes[name] = sizes.get(name, 0) + 1
    (root / "sizes.json").write_text(json.dumps(sizes))
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return _write_shards(tmp_path_factory.mktemp("shards") / "shards")


def _config(base: Path, data: Path, out: Path, **kw):
    from customize.config import TrainConfig

    defaults = dict(steps=4, batch_size=4, lr=1e-2, gate_lr=5e-2, warmup=1, save_every=2, log_every=1,
                    workers=0, device="cpu", augment="light")
    return TrainConfig(base=str(base), train_data=str(data), out=str(out), **(defaults | kw))


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- gated blocks ----------------------------------------------------------------

def test_gated_blocks_start_as_identity(tiny_model_dir):
    from customize.gated import gate_values, gated_blocks, insert_gated_blocks, parse_layers
    from react.models import load_model

    base = load_model(tiny_model_dir, device="cpu")
    grown = load_model(tiny_model_dir, device="cpu")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # same grad mode on both sides: MHA takes a different (fused) path without grad
        before = base.model.encode_image(images)
    layers = insert_gated_blocks(grown.model, "1")
    assert layers == [0] and list(gated_blocks(grown.model)) == [0]
    assert gate_values(grown.model) == {"0": [0.0, 0.0]}
    with torch.no_grad():
        assert torch.equal(grown.model.encode_image(images), before)
        # the branch is live: opened gates change the output
        gated_blocks(grown.model)[0].attn_gate.fill_(0.5)
        assert not torch.equal(grown.model.encode_image(images), before)
    # original parameters keep their state-dict names
    assert set(base.model.state_dict()) < set(grown.model.state_dict())
    assert parse_layers(None, 12) == list(range(6, 12)) and parse_layers(None, 24) == list(range(18, 24))
    assert parse_layers(None, 48) == list(range(36, 48)) and parse_layers(None, 4) == [2, 3]
    assert parse_layers("3", 12) == [9, 10, 11] and parse_layers("0,2-3,-1", 12) == [0, 2, 3, 11]
    with pytest.raises(ReactError, match="gated-layers"):
        parse_layers("13", 12)


def test_gated_blocks_on_embedded_style_vit_and_checkpointing():
    """The embedded base's tower (CustomTextCLIP's VisionTransformer) in both
    layouts open_clip can run, and under gradient checkpointing."""
    from open_clip.transformer import VisionTransformer

    from customize.gated import insert_gated_blocks

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=16, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=4.0, output_dim=8)
    x = torch.randn(2, 3, 16, 16)
    ref = vit(x)
    # open_clip 3.3 runs batch-first; older builds ran sequence-first (LND). The
    # block follows the host transformer's convention either way.
    seq_first = copy.deepcopy(vit)
    seq_first.transformer.batch_first = False
    for blk in seq_first.transformer.resblocks:
        blk.attn.batch_first = False
    assert torch.allclose(seq_first(x), ref, atol=1e-5)
    for model in (vit, seq_first):
        before = model(x)
        torch.manual_seed(1)  # the same new blocks in both
        insert_gated_blocks(model, None)
        assert model.transformer.resblocks[1].react_gated.attn.batch_first == model.transformer.batch_first
        assert torch.equal(model(x), before)
        for blk in model.transformer.resblocks:
            if hasattr(blk, "react_gated"):
                torch.nn.init.constant_(blk.react_gated.attn_gate, 0.3)
    assert torch.allclose(seq_first(x), vit(x), atol=1e-5)  # same computation in both layouts
    vit.set_grad_checkpointing(True)
    out = vit(x)
    out.sum().backward()
    assert vit.transformer.resblocks[1].react_gated.mlp.c_fc.weight.grad is not None


# --- loss ------------------------------------------------------------------------

def test_loss_is_clip_loss_with_one_to_one_positives():
    from open_clip.loss import ClipLoss

    from customize.loss import react_loss

    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    expected = ClipLoss()(img, txt, scale)
    assert torch.allclose(react_loss(img, txt, scale, gamma=0.9), expected, atol=1e-6)
    assert torch.allclose(react_loss(img, txt, scale, gamma=1.0), expected, atol=1e-6)


def test_loss_by_hand_with_shared_texts():
    from customize.loss import positives, react_loss

    # Pairs 0 and 1 share a caption; pair 2 differs. 2-d unit vectors keep the arithmetic checkable.
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    s = 2.0
    logits = s * img @ txt.T  # rows: [2, 2, 0], [1.2, 1.2, 1.6], [0, 0, 2]
    pos = positives(txt, 0.9)
    assert pos.tolist() == [[True, True, False], [True, True, False], [False, False, True]]

    def nll(row: list[float], k: int) -> float:
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))

    rows = logits.tolist()
    cols = logits.T.tolist()
    i2t = (0.5 * (nll(rows[0], 0) + nll(rows[0], 1)) + 0.5 * (nll(rows[1], 0) + nll(rows[1], 1)) + nll(rows[2], 2)) / 3
    t2i = (0.5 * (nll(cols[0], 0) + nll(cols[0], 1)) + 0.5 * (nll(cols[1], 0) + nll(cols[1], 1)) + nll(cols[2], 2)) / 3
    got = react_loss(img, txt, torch.tensor(s), gamma=0.9)
    assert got.item() == pytest.approx(0.5 * (i2t + t2i), abs=1e-6)
    # gamma = 1 (UniCL): identical captions are still positives; one-to-one CLIP would differ
    assert react_loss(img, txt, torch.tensor(s), gamma=1.0).item() == pytest.approx(got.item(), abs=1e-6)


# --- training --------------------------------------------------------------------

def test_gated_image_trains_only_gated_blocks(tiny_model_dir, shards, tmp_path):
    from customize.checkpoint import list_checkpoints, load_run, read_run
    from customize.train import train
    from react.models import load_model

    base = _params(load_model(tiny_model_dir, device="cpu").model)
    run = tmp_path / "run"
    summary = train(_config(tiny_model_dir, shards, run))
    assert summary["finished"] and summary["step"] == 4
    trained = load_run(run, device="cpu")
    after = _params(trained.model)
    gated = [k for k in after if ".react_gated." in k]
    assert gated
    for name, value in base.items():
        assert torch.equal(after[name], value), f"original parameter changed: {name}"
    fresh = load_model(tiny_model_dir, device="cpu").model
    torch.manual_seed(0)
    from customize.gated import insert_gated_blocks

    insert_gated_blocks(fresh, None)
    init = _params(fresh)
    for name in gated:
        assert not torch.equal(after[name], init[name]), f"gated parameter did not train: {name}"
    # only what trains is stored, plus the base reference
    from safetensors.torch import load_file

    step, path = list_checkpoints(run)[-1]
    assert step == 4 and set(load_file(str(path / "weights.safetensors"))) == set(gated)
    info = read_run(run)
    assert info["base"]["identity"] == load_model(tiny_model_dir, device="cpu").identity
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"loss", "lr", "samples_per_s", "gates"} <= set(log[-1]) and log[-1]["gates"]["0"][0] != 0
    assert list((run / "cache").glob("text-*.npy")), "frozen text tower: captions cached once"
    # TensorBoard (installed with the dev extra) holds the same scalars, read back by its own loader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in log])
    assert "gates/0/0" in events.Tags()["scalars"]


def test_training_order_does_not_depend_on_the_order_samples_sit_in_a_shard(tmp_path):
    """Two downloads of one subset hold the same samples in different orders within a shard;
    the index orders them by key, so a run (and its text cache) sees one order."""
    from customize.data import index_shards

    a = index_shards(_write_shards(tmp_path / "a"))
    b = index_shards(_write_shards(tmp_path / "b", reverse=True))
    assert a.keys == b.keys == sorted(a.keys) and a.captions == b.captions and a.digest() == b.digest()
    assert list(a.sizes) == list(b.sizes)


def test_resume_is_bit_identical(tiny_model_dir, shards, tmp_path):
    from customize.checkpoint import load_run
    from customize.train import train

    straight = tmp_path / "straight"
    train(_config(tiny_model_dir, shards, straight, steps=6, save_every=2, keep=2))
    split = tmp_path / "split"
    first = train(_config(tiny_model_dir, shards, split, steps=6, save_every=2, stop_after=3))
    assert first["step"] == 3 and not first["finished"]
    # Make it a kill during step 4: step 3's checkpoint never happened and a
    # half-written one is left behind under its temporary name.
    shutil.rmtree(split / "checkpoints" / "step-00000003")
    (split / "checkpoints" / ".step-00000004.tmp").mkdir()
    (split / "checkpoints" / ".step-00000004.tmp" / "weights.safetensors").write_bytes(b"partial")
    second = train(_config(tiny_model_dir, shards, split, steps=6, save_every=2, resume=True))
    assert second["step"] == 6 and second["finished"]
    a, b = _params(load_run(straight, device="cpu").model), _params(load_run(split, device="cpu").model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((straight / "checkpoints").iterdir())) == 2  # keep=2
    with pytest.raises(ReactError, match="differs from the run being resumed"):
        train(_config(tiny_model_dir, shards, split, steps=6, lr=3e-3, resume=True))


def test_wrong_base_is_refused(tiny_model_dir, shards, tmp_path):
    import open_clip

    from conftest import TINY_CFG
    from customize.checkpoint import load_run
    from customize.train import train
    from react.models import save_model

    run = tmp_path / "run"
    train(_config(tiny_model_dir, shards, run, steps=2))
    torch.manual_seed(1)
    other = save_model(open_clip.CLIP(**TINY_CFG), TINY_CFG, tmp_path / "other",
                       preprocess_cfg={"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    with pytest.raises(ReactError, match="customized from base") as err:
        load_run(run, device="cpu", base=str(other))
    assert "\n" not in str(err.value)
    with pytest.raises(ReactError, match="customized from base"):
        train(_config(other, shards, run, steps=2, resume=True))


def test_export_round_trip_through_load_model(tiny_model_dir, shards, tmp_path):
    from customize.train import train
    from react.models import load_model

    run = tmp_path / "run"
    train(_config(tiny_model_dir, shards, run, steps=2, grad_checkpointing=True))
    assert cli(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    from_run = load_model(run, device="cpu")
    exported = load_model(tmp_path / "model", device="cpu")
    images = torch.randn(2, 3, 32, 32)
    texts = ["a red square", "a photo of a star"]
    assert torch.equal(from_run.encode_images(images), exported.encode_images(images))
    assert torch.equal(from_run.encode_texts(texts), exported.encode_texts(texts))
    assert not torch.equal(load_model(tiny_model_dir, device="cpu").encode_images(images),
                           exported.encode_images(images))
    cfg = json.loads((tmp_path / "model" / "open_clip_config.json").read_text())
    assert cfg["react"]["architecture"] == "react-gated" and cfg["react"]["gated"]["layers"] == [0]


def test_other_modes_train_their_towers(tiny_model_dir, shards, tmp_path):
    from customize.modes import apply_mode
    from customize.train import train
    from react.models import load_model

    model = load_model(tiny_model_dir, device="cpu").model
    text = apply_mode(model, "locked-image")
    assert text and not any(n.startswith("visual.") for n in text) and "logit_scale" not in text
    assert all(n.startswith("visual.") for n in apply_mode(model, "locked-text"))
    assert "logit_scale" in apply_mode(model, "full", train_logit_scale=True)
    # locked-image encodes captions every step (the text tower learns), with accumulation
    run = tmp_path / "li"
    summary = train(_config(tiny_model_dir, shards, run, mode="locked-image", steps=2, accum_steps=2))
    assert summary["finished"] and not list((run / "cache").glob("text-*.npy"))


# --- CLI -------------------------------------------------------------------------

def test_cli_customize_with_periodic_eval_and_run_dir_as_model(tiny_model_dir, shards, tmp_path, capsys):
    from PIL import Image

    for name, colour in (("red_square", (220, 20, 20)), ("blue_circle", (20, 20, 220))):
        (tmp_path / "task" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), colour).save(tmp_path / "task" / name / f"{i}.jpg")
    run = tmp_path / "run"
    argv = ["customize", "--base", str(tiny_model_dir), "--train-data", str(shards), "--out", str(run),
            "--device", "cpu", "--steps", "2", "--batch-size", "8", "--eval-dataset", str(tmp_path / "task"),
            "--eval-every", "1", "--eval-templates", "classname", "--augment", "reference"]
    assert cli(argv) == 0
    assert capsys.readouterr().out.strip() == str(run)
    evals = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "eval" in r]
    assert [r["step"] for r in evals] == [1, 2] and 0 <= evals[-1]["eval"]["top1"] <= 1
    out = tmp_path / "result.json"
    assert cli(["eval", "zeroshot", "--model", str(run), "--dataset", str(tmp_path / "task"),
                "--templates", "classname", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["model"] == str(run)


def test_cli_bad_inputs(tiny_model_dir, shards, tmp_path, capsys):
    def error(argv: list[str]) -> str:
        assert cli(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    base = ["customize", "--base", str(tiny_model_dir), "--device", "cpu", "--steps", "2", "--batch-size", "4"]
    assert "training data not found" in error(base + ["--train-data", str(tmp_path / "nope"),
                                                      "--out", str(tmp_path / "r1")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no sizes.json" in error(base + ["--train-data", str(empty), "--out", str(tmp_path / "r2")])
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "x").write_text("")
    assert "already exists" in error(base + ["--train-data", str(shards), "--out", str(existing)])
    assert "nothing to resume" in error(base + ["--train-data", str(shards), "--out", str(tmp_path / "r3"),
                                                "--resume"])
    assert "--gamma" in error(base + ["--train-data", str(shards), "--out", str(tmp_path / "r4"), "--gamma", "0"])
    assert "exceeds" in error(["customize", "--base", str(tiny_model_dir), "--device", "cpu", "--batch-size", "64",
                               "--train-data", str(shards), "--out", str(tmp_path / "r5")])
    assert "model directory does not exist" in error(["customize", "--base", str(tmp_path / "nobase"),
                                                      "--train-data", str(shards), "--out", str(tmp_path / "r6")])
    assert "not a customization run" in error(["export", str(tmp_path), "--out", str(tmp_path / "m")])


def test_cli_defaults_are_train_config_defaults():
    """`react customize` reads every default from TrainConfig (one definition each), without loading torch."""
    import argparse
    import dataclasses
    import subprocess
    import sys

    from customize import cli
    from customize.config import TrainConfig

    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    args = vars(parser.parse_args(["customize", "--base", "b", "--train-data", "t", "--out", "o"]))
    assert {k: v for k, v in args.items() if k != "func"} == dataclasses.asdict(TrainConfig("b", "t", "o"))
    probe = ("import argparse, sys; from customize import cli; p = argparse.ArgumentParser(); "
             "cli.add_parsers(p.add_subparsers()); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", probe], check=True)
