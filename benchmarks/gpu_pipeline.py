"""The GPU data path end to end, each figure against its ceiling, in one run.

    python benchmarks/gpu_pipeline.py --json out.json          # one CUDA GPU (ViT-B/32, ~3-4 min on an H200)
    python benchmarks/gpu_pipeline.py --dry-run                # CPU plumbing check (tiny model, seconds)

It writes its own img2dataset-style shards (smooth synthetic JPEGs, KEY.jpg /
.txt / .json + sizes.json) and a randomly initialized base model, then measures:

- ``train_bench``: the trainer's own step on synthetic tensors (gated-image,
  cached text) -- the ceiling of ``react customize``;
- ``customize``: ``react customize`` on the shards (decoder auto = nvjpeg,
  torch.compile on), samples/s from its log after the first window;
- ``model_only``: the image tower's forward on synthetic tensors (bf16,
  inference) -- the ceiling of ``react embed``;
- ``embed``: ``react embed`` on the shards (decoder auto), images/s end to end;
- ``decode``: nvjpeg batched decode + the batched resize of the shards' bytes
  held in memory -- the data path's own ceiling.

Each end-to-end figure is printed as a ratio to its ceiling, and all as JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["fish", "windmill", "hammer", "bird", "flower", "car", "boat", "tree", "house", "dog", "cat", "apple"]
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16,
                                        "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _shard(args: tuple[str, int, int, int]) -> tuple[str, int]:
    from PIL import Image, ImageDraw

    out, shard, per, size = args
    rng = np.random.default_rng(shard)
    name = f"{shard:05d}.tar"
    y, x = np.linspace(0, 1, size)[:, None], np.linspace(0, 1, size)[None, :]
    with tarfile.open(os.path.join(out, name + ".tmp"), "w") as tar:
        for i in range(per):
            key = f"{shard:05d}{i:04d}"
            c = rng.random(6)
            img = np.stack([(c[j] * x + c[j + 3] * y) * 127 + 40 for j in range(3)], -1).astype(np.uint8)
            im = Image.fromarray(img)
            draw = ImageDraw.Draw(im)
            for _ in range(6):
                x0, y0 = rng.integers(size), rng.integers(size)
                draw.ellipse([x0, y0, x0 + rng.integers(8, size // 2), y0 + rng.integers(8, size // 2)],
                             fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            cap = f"a photo of a {WORDS[rng.integers(len(WORDS))]} near a {WORDS[rng.integers(len(WORDS))]}"
            for ext, data in (("jpg", buf.getvalue()), ("txt", cap.encode()),
                              ("json", json.dumps({"key": key, "caption": cap, "status": "success"}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    os.rename(os.path.join(out, name + ".tmp"), os.path.join(out, name))
    return name, per


def write_shards(out: Path, shards: int, per: int, size: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        sizes = dict(pool.map(_shard, [(str(out), s, per, size) for s in range(shards)]))
    (out / "sizes.json").write_text(json.dumps(sizes))
    return out


def write_base(out: Path, tiny: bool) -> Path:
    import open_clip

    from react.models import save_model

    torch.manual_seed(0)
    cfg = TINY if tiny else open_clip.get_model_config("ViT-B-32")
    model = open_clip.CLIP(**cfg)
    pre = {"size": cfg["vision_cfg"]["image_size"], "mean": list(open_clip.OPENAI_DATASET_MEAN),
           "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic"}
    return save_model(model, cfg, out, preprocess_cfg=pre)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(base: Path, device: torch.device, batch: int, iters: int) -> float:
    from react.models import load_model

    loaded = load_model(base, device=str(device))
    size = loaded.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(batch, 3, size, size, device=device)
    loaded.encode_images(images, cpu=False)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        loaded.encode_images(images, cpu=False)
    _sync(device)
    return batch * iters / (time.perf_counter() - start)


def decode_ceiling(shards: Path, spec, device: torch.device, batch: int, limit: int) -> float:
    """Batched decode (nvjpeg on CUDA, the CPU fallback otherwise) + batched resize
    of JPEG bytes already in memory."""
    from react import batch_decode as gpu_batch

    datas: list[bytes] = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            datas += [tf.extractfile(m).read() for m in tf if m.name.endswith(".jpg")]
        if len(datas) >= limit:
            break
    datas = datas[:limit]
    w, h = gpu_batch.image_size(datas[0], "bench")
    params = torch.tensor([gpu_batch.draw_params(spec, None, w, h)] * batch)

    def run(chunk: list[bytes]) -> None:
        if device.type == "cuda":
            images, _ = gpu_batch.gpu_decode(chunk, ["bench"] * len(chunk), device)
        else:
            images = [gpu_batch.cpu_decode(d, "bench") for d in chunk]
        gpu_batch.augment(images, params[: len(chunk)], spec)

    run(datas[:batch])
    _sync(device)
    start = time.perf_counter()
    for s in range(0, len(datas), batch):
        run(datas[s : s + batch])
    _sync(device)
    return len(datas) / (time.perf_counter() - start)


def customize_e2e(base: Path, shards: Path, out: Path, batch: int, steps: int, device: torch.device,
                  compile_: bool | None) -> tuple[float, float]:
    from customize.config import TrainConfig
    from customize.train import train

    log_every = max(1, steps // 4)
    start = time.perf_counter()
    train(TrainConfig(base=str(base), train_data=str(shards), out=str(out), steps=steps, batch_size=batch,
                      warmup=1, log_every=log_every, save_every=steps, overwrite=True, compile=compile_,
                      device=device.type))
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][1:]  # first window: compile + warmup
    return (float(np.mean(rates)) if rates else batch * steps / wall), wall


def embed_e2e(base: Path, shards: Path, out: Path, batch: int | None) -> tuple[float, int]:
    from index.embed import embed_corpus
    from index.readers import read_corpus

    corpus = read_corpus(shards)
    start = time.perf_counter()
    embed_corpus(corpus, str(base), out, batch_size=batch, overwrite=True, part_size=max(1, len(corpus) // 4))
    return len(corpus) / (time.perf_counter() - start), len(corpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny model, few samples, on CPU: checks the plumbing")
    parser.add_argument("--work", type=Path, default=None, help="folder for shards/model/runs (default: a temp dir)")
    parser.add_argument("--shards", type=int, default=None, help="shards to write (default 32; dry run 2)")
    parser.add_argument("--per-shard", type=int, default=None, help="samples per shard (default 1000; dry run 16)")
    parser.add_argument("--image-size", type=int, default=256, help="synthetic JPEG side (default 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default 256; dry run 8)")
    parser.add_argument("--steps", type=int, default=None, help="customize steps (default 60; dry run 3)")
    parser.add_argument("--no-compile", action="store_true", help="customize without torch.compile")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import react  # noqa: F401  (torchvision fix, offline defaults)

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("error: gpu_pipeline.py measures the GPU data path and needs a CUDA device "
              "(use --dry-run to check its plumbing on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda and not args.dry_run else "cpu")
    dry = args.dry_run
    shards_n, per = args.shards or (2 if dry else 32), args.per_shard or (16 if dry else 1000)
    batch, steps = args.batch_size or (8 if dry else 256), args.steps or (3 if dry else 60)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_pipeline-"))
    t0 = time.perf_counter()
    shards = write_shards(work / "shards", shards_n, per, 64 if dry else args.image_size)
    base = write_base(work / "base", tiny=dry)
    print(f"wrote {shards_n * per} samples in {shards_n} shards, base {'tiny' if dry else 'ViT-B-32'} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)

    from accelerate import Accelerator

    from benchmarks.train_bench import run_mode
    from react import batch_decode as gpu_batch
    from react.models import load_model

    report: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "samples": shards_n * per, "batch": batch, "torch": torch.__version__, "dry_run": dry}
    if dry:
        report["train_bench"] = None  # ViT-B/32 on CPU takes minutes; the tiny run below checks the plumbing
    else:
        accelerator = Accelerator(mixed_precision="bf16")
        report["train_bench"] = run_mode("gated-image", batch, 20, 5, accelerator)["samples_per_s"]
    report["customize"], report["customize_wall_s"] = customize_e2e(
        base, shards, work / "run", batch, steps, device, False if (args.no_compile or dry) else None)
    report["model_only"] = model_only(base, device, 8 if dry else 1024, 3 if dry else 20)
    report["embed"], _ = embed_e2e(base, shards, work / "emb", 8 if dry else None)
    spec = gpu_batch.eval_spec(load_model(base, device="cpu").preprocess)
    report["decode"] = decode_ceiling(shards, spec, device, 8 if dry else 512, 64 if dry else 16384)
    ratios = {"customize/train_bench": report["customize"] / report["train_bench"] if report["train_bench"] else None,
              "embed/model_only": report["embed"] / report["model_only"],
              "embed/decode": report["embed"] / report["decode"]}
    report["ratios"] = {k: (round(v, 3) if v is not None else None) for k, v in ratios.items()}
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    for key in ("train_bench", "customize", "model_only", "embed", "decode"):
        value = report[key]
        print(f"  {key:<12} {'-' if value is None else f'{value:,.0f}'} img/s")
    for key, value in report["ratios"].items():
        print(f"  {key:<22} {'-' if value is None else f'{100 * value:.1f} %'}")
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
