"""Training throughput: gated-image vs full fine-tuning of ViT-B/32 at 224 px.

    .venv/bin/python benchmarks/train_bench.py                  # CPU: batch 8, a couple of minutes on 2 cores
    .venv/bin/python benchmarks/train_bench.py --batch-size 256 # a GPU (bf16 autocast)

One run, same batch, synthetic tensors (no I/O, no decoding): each mode runs
the trainer's own step (``customize.train.loss_and_backward`` + AdamW step)
on an open_clip ViT-B-32 (random init; throughput does not depend on the
weights). ``gated-image`` is what ``react customize`` runs by default: six
gated blocks before layers 6-11, only they train, and caption embeddings come
from the cache (the text tower is frozen). ``full`` trains every weight and
encodes the captions every step. On CUDA the executed FLOPs of one step are
counted (torch's FlopCounterMode) and reported as model-FLOPs utilization
against the device's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 tensor-core peaks (TFLOP/s) of common training GPUs, from the vendors' datasheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "A10G": 70.0, "L4": 121.0, "V100": 125.0}


def device_peak(name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def build(mode: str, device: torch.device):
    import open_clip

    from customize.gated import insert_gated_blocks
    from customize.modes import apply_mode, set_train_mode
    from customize.schedule import build_optimizer

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    if mode == "gated-image":
        insert_gated_blocks(model, None)
    names = apply_mode(model, mode)
    model.to(device)
    set_train_mode(model, mode)
    optimizer = build_optimizer(model, lr=5e-4, weight_decay=0.1)
    trainable = sum(p.numel() for n, p in model.named_parameters() if n in set(names))
    return model, optimizer, trainable


def run_mode(mode: str, batch: int, steps: int, warmup: int, accelerator) -> dict:
    from customize.train import loss_and_backward

    device = accelerator.device
    model, optimizer, trainable = build(mode, device)
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=gen).to(device)
    tokens = torch.randint(1, 49407, (batch, 77), generator=gen).to(device)
    cached = F.normalize(torch.randn(batch, 512, generator=gen), dim=-1).to(device)
    text_frozen = mode == "gated-image"

    def step() -> None:
        loss_and_backward(accelerator, model, images, None if text_frozen else tokens,
                          cached if text_frozen else None, 0.9, 1, not text_frozen)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    flops = None
    if device.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = counter.get_total_flops()
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    out = {"mode": mode, "trainable_params": trainable, "step_s": round(seconds, 4),
           "samples_per_s": round(batch / seconds, 2)}
    if flops is not None:
        out["tflops_per_step"] = round(flops / 1e12, 3)
        peak = device_peak(torch.cuda.get_device_name(device))
        if peak:
            out["mfu"] = round(flops / seconds / (peak * 1e12), 4)
    del model, optimizer
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 256 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (default: 3 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 CPU, 5 CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import react  # noqa: F401  (torchvision fix, offline defaults)
    from accelerate import Accelerator

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    batch = args.batch_size or (256 if cuda else 8)
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    device_name = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    results = [run_mode(mode, batch, steps, warmup, accelerator) for mode in ("gated-image", "full")]
    speedup = results[0]["samples_per_s"] / results[1]["samples_per_s"]
    report = {"model": "ViT-B-32", "image_size": 224, "batch": batch, "timed_steps": steps,
              "device": device_name, "precision": accelerator.mixed_precision, "torch": torch.__version__,
              "results": results, "gated_over_full": round(speedup, 3)}
    print(f"ViT-B/32 224 px, batch {batch}, {device_name}, precision {accelerator.mixed_precision}")
    for r in results:
        extra = f", {r['tflops_per_step']} TFLOP/step, MFU {100 * r['mfu']:.1f} %" if "mfu" in r else ""
        print(f"  {r['mode']:<12} {r['samples_per_s']:>9.2f} samples/s  ({r['step_s']} s/step, "
              f"{r['trainable_params'] / 1e6:.1f} M trainable){extra}")
    print(f"  gated-image / full: {speedup:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
