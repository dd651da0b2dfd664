"""``react customize`` and ``react export``."""
from __future__ import annotations

import argparse
from pathlib import Path

from react.errors import ReactError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from customize.constants import AUGMENTATIONS, DEFAULT_AUGMENT, DEFAULT_GAMMA, DEFAULT_MODE, MODES

    p = sub.add_parser(
        "customize", help="customize a CLIP model on retrieved image-text shards (REACT)",
        description="Train new gated blocks in the image tower (or the towers --mode names) on the shards "
        "`react download` wrote, every other weight frozen. Checkpoints land in RUN_DIR/checkpoints; "
        "`react export RUN_DIR` writes a standalone model, and RUN_DIR itself works as any --model. "
        "Paper recipe for ViT-B/32: --lr 5e-4 --weight-decay 0.1 --warmup 5000 --batch-size 4096 --epochs 32.",
    )
    p.add_argument("--base", required=True, metavar="MODEL",
                   help="base model: open_clip name (with --pretrained) or a model directory")
    p.add_argument("--pretrained", default=None, metavar="TAG|PATH", help="pretrained tag or checkpoint for --base")
    p.add_argument("--train-data", required=True, metavar="SHARDS_DIR",
                   help="shards folder from `react download` ({00000..N}.tar + sizes.json)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, logs, caches)")
    p.add_argument("--mode", default=DEFAULT_MODE, choices=MODES,
                   help=f"what trains: gated-image = only new gated blocks (default), locked-text = the image "
                        f"tower, locked-image = the text tower, full = everything")
    p.add_argument("--gamma", type=float, default=DEFAULT_GAMMA,
                   help=f"captions with cosine >= gamma are positives of each other (default {DEFAULT_GAMMA}, "
                        f"the paper's; 1.0 = UniCL)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=float, default=None, help="passes over the data (default: 32, the paper's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch per step, split evenly over the processes of an `accelerate launch` and "
                        "each share over --accum-steps (default: largest power of two <= pairs/4, at most 4096)")
    p.add_argument("--seed", type=int, default=0, help="seed of block init, data order and augmentation (default 0)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4, the paper's)")
    p.add_argument("--gate-lr", type=float, default=None,
                   help="peak learning rate of the tanh gate scalars (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay of matrices; never on gains, biases, norms, gates (default 0.1)")
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps (default: 10%% of steps, <= 5000)")
    p.add_argument("--gated-layers", default=None, metavar="N|I,J|I-J",
                   help="host layers to put gated blocks before: N = the last N, or 0-based indices "
                        "(default: last half of <= 12 layers, last quarter of deeper towers)")
    p.add_argument("--mlp-ratio", type=float, default=4.0, help="hidden width / width of the gated FFN (default 4.0)")
    p.add_argument("--train-logit-scale", action="store_true", help="also train the temperature (default: frozen)")
    p.add_argument("--augment", default=DEFAULT_AUGMENT, choices=AUGMENTATIONS,
                   help="light = random resized crop 50-100%% + flip (default); reference = the reference runs' "
                        "crop 8-100%%, flip, RandAugment, random erasing; none = eval transform")
    p.add_argument("--accum-steps", type=int, default=1,
                   help="micro-batches per step; the loss still spans the full batch (default 1)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast precision (default auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations to save memory")
    p.add_argument("--no-text-cache", dest="text_cache", action="store_false",
                   help="encode captions every step even when the text tower is frozen")
    p.add_argument("--workers", type=int, default=None, help="image-decoding workers (default: 0 on CPU, 6 on GPU)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="force a device (default: accelerate's)")
    p.add_argument("--decoder", default="auto", choices=("auto", "gpu", "cpu", "pil"),
                   help="image decoding: gpu = nvjpeg + batched crop/flip/normalize on the GPU, cpu = libjpeg-turbo "
                        "in the workers + batched augmentation, pil = PIL per sample (today's loader); auto = gpu "
                        "on CUDA, else pil (faster on CPU). The choice is printed")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the image tower (default: on CUDA; falls back to eager if it fails)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="never torch.compile")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default: 10%% of steps)")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep (default 3)")
    p.add_argument("--log-every", type=int, default=10, help="log to RUN_DIR/log.jsonl every N steps (default 10)")
    p.add_argument("--eval-dataset", default=None, metavar="DATASET",
                   help="zero-shot evaluate on this dataset while training (as `react eval zeroshot`)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps and at the end (default: never)")
    p.add_argument("--eval-templates", default=None, metavar="NAME|FILE", help="prompt templates for --eval-dataset")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop with a checkpoint after N steps in this invocation (continue with --resume)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue RUN_DIR from its newest checkpoint, with the settings it started with")
    again.add_argument("--overwrite", action="store_true", help="delete an existing RUN_DIR and start over")
    p.set_defaults(func=run_customize)

    e = sub.add_parser(
        "export", help="write a customization run as a standalone model directory",
        description="Write open_clip_config.json + open_clip_model.safetensors (base and new weights together) "
        "that react.load_model and every --model option load.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="customization run directory (its newest checkpoint)")
    e.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write (atomically)")
    e.add_argument("--base", default=None, metavar="MODEL",
                   help="the run's base if it has moved (must be the same weights)")
    e.add_argument("--pretrained", default=None, metavar="TAG|PATH", help="pretrained tag for --base")
    e.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR")
    e.set_defaults(func=run_export)


def run_customize(args: argparse.Namespace) -> int:
    from customize.config import TrainConfig
    from customize.train import train

    config = TrainConfig(**{k: v for k, v in vars(args).items() if k not in ("func", "command")})
    summary = train(config)
    print(summary["run_dir"])
    return 0


def run_export(args: argparse.Namespace) -> int:
    from customize.checkpoint import export, read_run

    read_run(args.run_dir)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ReactError(f"output already exists: {out} (pass --overwrite to replace it)")
    if out.resolve() == Path(args.run_dir).resolve():
        raise ReactError("--out must differ from RUN_DIR")
    print(export(args.run_dir, out, base=args.base, pretrained=args.pretrained))
    return 0
