"""Batched decode + augmentation (react/batch_decode.py) on CPU: same pixels as
the per-sample loader within a stated tolerance, resume still bit-identical,
corrupt images counted and skipped by name, compile falling back cleanly.

Tolerance (8-bit levels, after undoing the normalization): the batched resize
is PIL's resampling (same kernel, support, clipping, normalization, 8-bit
rounding between the passes) done in float32 matmuls, but Pillow 13 runs its
two passes in an order of its own choosing, and the clamp to 0..255 between
them differs with the order where bicubic overshoots. On photo-like JPEGs
that stays within ``MAX_LEVELS`` per pixel and ``MEAN_LEVELS`` on average
(measured: 5 and ~0.1); the eval transform (one resize + center crop) within
1 level. nvjpeg's IDCT adds its own +-1-2 levels on a GPU (not measurable here).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from react.errors import ReactError

MAX_LEVELS, MEAN_LEVELS, EVAL_MAX_LEVELS = 8.0, 0.5, 1.0
CAPTIONS = ["a red square", "a blue circle", "a green triangle", "a yellow star"]
SHAPES = [(40, 48), (64, 50), (36, 36), (70, 90)]


def _photo(i: int, fmt: str = "JPEG") -> bytes:
    """Smooth gradient + shapes + mild noise: decode/resample behave as on photos."""
    rng = np.random.default_rng(i)
    h, w = SHAPES[i % len(SHAPES)]
    y, x = np.linspace(0, 1, h)[:, None, None], np.linspace(0, 1, w)[None, :, None]
    img = rng.random(3) * x * 180 + rng.random(3) * y * 60 + 20
    img[h // 4 : h // 2, w // 3 : w // 2] = rng.random(3) * 255
    img = (img + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write(root: Path, images: list[tuple[str, bytes]], per_shard: int = 8) -> Path:
    root.mkdir(parents=True)
    sizes: dict[str, int] = {}
    for s in range(0, len(images), per_shard):
        name = f"{s // per_shard:05d}.tar"
        with tarfile.open(root / name, "w") as tf:
            for i in range(s, min(len(images), s + per_shard)):
                ext, data = images[i]
                for suffix, payload in ((ext, data), ("txt", CAPTIONS[i % 4].encode()), ("json", b"{}")):
                    info = tarfile.TarInfo(f"{i:09d}.{suffix}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
        sizes[name] = min(len(images), s + per_shard) - s
    (root / "sizes.json").write_text(json.dumps(sizes))
    return root


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory) -> Path:
    images = [("png" if i == 5 else "jpg", _photo(i, "PNG" if i == 5 else "JPEG")) for i in range(16)]
    return _write(tmp_path_factory.mktemp("photo") / "shards", images)


def _levels(a: torch.Tensor, b: torch.Tensor, std: list[float]) -> torch.Tensor:
    return (a - b).abs() * torch.tensor(std).view(3, 1, 1) * 255


@pytest.mark.parametrize("recipe", ["light", "none"])
def test_batched_matches_per_sample_loader(photo_shards, tiny_model, recipe):
    from open_clip import image_transform

    from react import batch_decode as gpu_batch
    from customize.data import PairBytes, PairImages, collate_pairs, index_shards, train_transform

    cfg = {"size": 32, "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28], "interpolation": "bicubic"}
    eval_tf = image_transform(32, False, mean=cfg["mean"], std=cfg["std"])
    index = index_shards(photo_shards)
    spec = gpu_batch.train_spec(cfg, recipe, eval_tf)
    assert spec is not None and spec.mode == ("random-crop" if recipe == "light" else "center")
    old = PairImages(index, train_transform(cfg, recipe, eval_tf), seed=3)
    items = [(i, e) for e in (0, 1) for i in range(len(index))]
    want = torch.stack([old[it][0] for it in items])
    for decode in (True, False):  # cpu decoder (workers decode) / gpu decoder's code path run on the CPU
        raw, skipped = collate_pairs([PairBytes(index, spec, seed=3, decode=decode)[it] for it in items])
        names = [index.keys[i] for i in raw.indices.tolist()]
        got, keep, failed = gpu_batch.to_device_batch(raw.datas, raw.images, raw.params, names, spec,
                                                      torch.device("cpu"))
        assert not skipped and not failed and keep == list(range(len(items)))
        diff = torch.stack([_levels(g, w, cfg["std"]) for g, w in zip(got, want)])
        if recipe == "light":
            assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())
        else:
            assert diff.max() <= EVAL_MAX_LEVELS, diff.max()
    # the flip is the per-sample loader's: a flipped sample matches only flipped
    flips = raw.params[:, 8]
    if recipe == "light":
        assert 0 < flips.sum() < len(items)


def test_eval_spec_of_embed_preprocess(tiny_model):
    from react import batch_decode as gpu_batch

    spec = gpu_batch.eval_spec(tiny_model.preprocess)
    assert spec is not None and spec.size == (32, 32) and spec.mode == "center"
    pixels = torch.stack([gpu_batch.pil_decode(_photo(i), "x") for i in range(1)])
    img = Image.open(io.BytesIO(_photo(0)))
    want = tiny_model.preprocess(img.convert("RGB"))
    params = torch.tensor([gpu_batch.draw_params(spec, None, img.width, img.height)])
    got = gpu_batch.augment([pixels[0]], params, spec)[0]
    assert _levels(got, want, list(spec.std)).max() <= EVAL_MAX_LEVELS


def test_decoder_choice():
    from react.batch_decode import ResizeSpec, resolve_decoder

    spec = ResizeSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    cpu = torch.device("cpu")
    assert resolve_decoder("auto", cpu, spec)[0] == "pil"  # the faster one on CPU
    assert resolve_decoder("cpu", cpu, spec) == ("cpu", "forced")
    with pytest.raises(ReactError, match="needs a CUDA device"):
        resolve_decoder("gpu", cpu, spec)
    with pytest.raises(ReactError, match="no batched form"):
        resolve_decoder("cpu", cpu, None)


def _config(base: Path, data: Path, out: Path, **kw):
    from customize.config import TrainConfig

    defaults = dict(steps=4, batch_size=4, lr=1e-2, gate_lr=5e-2, warmup=1, save_every=2, log_every=1,
                    workers=0, device="cpu", augment="light", decoder="cpu")
    return TrainConfig(base=str(base), train_data=str(data), out=str(out), **(defaults | kw))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from customize.checkpoint import load_run

    return {k: v.detach().clone() for k, v in load_run(run, device="cpu").model.state_dict().items()}


def test_resume_bit_identical_with_batched_decoder(tiny_model_dir, photo_shards, tmp_path):
    from customize.train import train

    straight = tmp_path / "straight"
    first = train(_config(tiny_model_dir, photo_shards, straight, steps=6))
    assert first["decoder"] == "cpu" and not first["skipped"]
    split = tmp_path / "split"
    assert train(_config(tiny_model_dir, photo_shards, split, steps=6, stop_after=3))["step"] == 3
    # with a worker process on the way back: the data position is the step, whatever the workers
    assert train(_config(tiny_model_dir, photo_shards, split, steps=6, resume=True, workers=1))["finished"]
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("decoder", ["pil", "cpu"])
def test_corrupt_jpeg_is_counted_skipped_and_named(tiny_model_dir, tmp_path, decoder, capsys):
    from customize.train import train

    good = _photo(1)
    images = [("jpg", _photo(i)) for i in range(16)]
    images[3] = ("jpg", b"\xff\xd8\xff\xe0 this is not a jpeg")     # header unreadable
    images[9] = ("jpg", good[: len(good) // 2])                       # valid header, truncated data
    shards = _write(tmp_path / "shards", images)
    run = tmp_path / "run"
    summary = train(_config(tiny_model_dir, shards, run, decoder=decoder, steps=4, batch_size=8))
    assert summary["finished"]
    expected = {"00000.tar/000000003", "00001.tar/000000009"}
    assert set(summary["skipped"]) == expected and len(summary["skipped"]) == 4  # 2 epochs x 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "000000003" in text and "000000009" in text and "4 unreadable image(s) skipped" in text
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["skipped"] == 4


def test_gpu_path_skips_what_no_decoder_reads():
    """The nvjpeg path's per-member fallback, run on the CPU: a JPEG with a valid
    header and garbage after it goes to PIL, and is reported when PIL refuses it."""
    from react import batch_decode as gpu_batch

    spec = gpu_batch.ResizeSpec(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    good = _photo(0)
    datas = [good, good[: len(good) // 2], _photo(2, "PNG")]
    params = torch.tensor([gpu_batch.draw_params(spec, s, 48, 40) for s in range(3)])
    params[2] = torch.tensor(gpu_batch.draw_params(spec, 2, 36, 36))
    batch, keep, failed = gpu_batch.to_device_batch(datas, [None] * 3, params, ["a", "b", "c"], spec,
                                                    torch.device("cpu"))
    assert keep == [0, 2] and [i for i, _ in failed] == [1] and "b" in failed[0][1]
    assert batch.shape == (2, 3, 16, 16)


def test_nothing_saved_for_backward_below_first_gated_block(tiny_model_dir):
    """Autograd records nothing below the first gated block (nothing there needs a
    gradient): every saved tensor of the step belongs to the gated layers on."""
    import open_clip

    from customize.gated import insert_gated_blocks
    from customize.modes import apply_mode, set_train_mode

    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=32, vision_cfg={"image_size": 32, "layers": 4, "width": 32, "patch_size": 16,
                                                      "head_width": 16},
                           text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1})
    insert_gated_blocks(model, "2")
    apply_mode(model, "gated-image")
    set_train_mode(model, "gated-image")
    below = [True]
    model.visual.transformer.resblocks[2].register_forward_pre_hook(lambda *_: below.__setitem__(0, False),
                                                                     prepend=True)
    saved = {True: 0, False: 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[below[0]] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.encode_image(torch.randn(2, 3, 32, 32)).sum().backward()
    assert saved[True] == 0 and saved[False] > 0


def test_compile_failure_falls_back_to_eager(tiny_model_dir, photo_shards, tmp_path, monkeypatch, capsys):
    import customize.speed as speed
    from customize.train import train

    def broken_compile(module, **_):
        def fail(*a, **k):
            raise RuntimeError("torch._dynamo: backend compiler failed (simulated)")

        module._compiled_call_impl = fail
        return True

    monkeypatch.setattr(speed, "compile_module", broken_compile)
    a = train(_config(tiny_model_dir, photo_shards, tmp_path / "a", decoder="pil", compile=True))
    assert a["finished"] and not a["compiled"]
    captured = capsys.readouterr()
    assert "running eagerly" in " ".join((captured.out + captured.err).split())
    b = train(_config(tiny_model_dir, photo_shards, tmp_path / "b", decoder="pil", compile=False))
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_embed_batched_decoder_and_background_writer(tiny_model, tmp_path):
    """react embed: the pil decoder with parts written from a background thread
    gives the rows of a part-by-part reference; the batched (cpu) decoder gives
    the same rows within the resize tolerance (fp16 output); a corrupt image is
    still an error naming it (an embedding row cannot be skipped: rows align)."""
    from index.embed import check_embeddings, embed_corpus
    from index.embed_images import load_source
    from index.readers import read_corpus
    from react.schemas import img_emb_path

    images = [("png" if i == 2 else "jpg", _photo(i, "PNG" if i == 2 else "JPEG")) for i in range(7)]
    shards = _write(tmp_path / "shards", images, per_shard=4)
    (shards / "sizes.json").unlink()
    corpus = read_corpus(shards)
    ref = torch.stack([tiny_model.preprocess(load_source(s)) for s in corpus.images])
    chunks = [ref[lo : min(lo + 2, part + 3)] for part in range(0, 7, 3) for lo in range(part, min(7, part + 3), 2)]
    want = np.concatenate([tiny_model.encode_images(c).numpy() for c in chunks])
    want = want.astype(np.float16)  # batches of 2 within parts of 3, as react embed runs them
    rows = {}
    for decoder in ("pil", "cpu"):
        out = tmp_path / decoder
        embed_corpus(corpus, tiny_model, out, part_size=3, batch_size=2, decoder=decoder)
        assert check_embeddings(out)["rows_per_part"] == [3, 3, 1]
        rows[decoder] = np.concatenate([np.load(img_emb_path(out, i)) for i in range(3)])
    assert np.array_equal(rows["pil"], want)
    np.testing.assert_allclose(rows["cpu"].astype(np.float32), want.astype(np.float32), atol=2e-2)
    bad = _write(tmp_path / "bad", images[:3] + [("jpg", b"\xff\xd8\xff garbage")], per_shard=4)
    (bad / "sizes.json").unlink()
    for decoder in ("pil", "cpu"):
        with pytest.raises(ReactError, match=r"00000\.tar:000000003\.jpg"):
            embed_corpus(bad, tiny_model, tmp_path / f"bad-{decoder}", part_size=3, decoder=decoder)


def test_gpu_pipeline_benchmark_plumbing(tmp_path, capsys):
    """benchmarks/gpu_pipeline.py: refuses without CUDA in one line; --dry-run runs
    every measurement on a tiny model and writes the JSON."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.gpu_pipeline import main

    if not torch.cuda.is_available():
        assert main([]) == 2 and "needs a CUDA device" in capsys.readouterr().err
    out = tmp_path / "report.json"
    assert main(["--dry-run", "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["samples"] == 32 and all(report[k] > 0 for k in ("customize", "model_only", "embed", "decode"))
    assert set(report["ratios"]) == {"customize/train_bench", "embed/model_only", "embed/decode"}
