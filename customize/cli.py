"""``react customize`` and ``react export``."""
from __future__ import annotations

import argparse
from pathlib import Path

from customize.config import PAPER_BATCH, PAPER_EPOCHS, PAPER_WARMUP
from customize.config import TrainConfig as D  # every default below is TrainConfig's: one definition each
from customize.constants import AUGMENTATIONS, GPU_WORKERS, MODES, PRECISIONS
from react.config import DECODERS
from react.errors import ReactError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_customize_parser(sub)
    _add_export_parser(sub)


def _add_customize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "customize", help="customize a CLIP model on retrieved image-text shards (REACT)",
        description="Train new gated blocks in the image tower (or the towers --mode names) on the shards "
        "`react download` wrote, every other weight frozen. Checkpoints land in RUN_DIR/checkpoints; "
        "`react export RUN_DIR` writes a standalone model, and RUN_DIR itself works as any --model. "
        "Paper recipe for ViT-B/32: --lr 5e-4 --weight-decay 0.1 --warmup 5000 --batch-size 4096 --epochs 32.",
    )
    _add_inputs(p)
    _add_recipe(p)
    _add_runtime(p)
    _add_run_control(p)
    p.set_defaults(func=run_customize)


def _add_inputs(p: argparse.ArgumentParser) -> None:
    """The base, the data, the run directory, and what trains."""
    p.add_argument("--base", required=True, metavar="MODEL",
                   help="base model: open_clip name (with --pretrained) or a model directory")
    p.add_argument("--pretrained", default=D.pretrained, metavar="TAG|PATH",
                   help="pretrained tag or checkpoint for --base")
    p.add_argument("--train-data", required=True, metavar="SHARDS_DIR",
                   help="shards folder from `react download` ({00000..N}.tar + sizes.json)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, logs, caches)")
    p.add_argument("--mode", default=D.mode, choices=MODES,
                   help=f"what trains: gated-image = only new gated blocks, locked-text = the image tower, "
                        f"locked-image = the text tower, full = everything (default {D.mode})")
    p.add_argument("--gamma", type=float, default=D.gamma,
                   help=f"captions with cosine >= gamma are positives of each other (default {D.gamma}, "
                        f"the paper's; 1.0 = UniCL)")


def _add_recipe(p: argparse.ArgumentParser) -> None:
    """Length, batch, optimizer, blocks and augmentation: what the run computes."""
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=D.steps, help="optimizer steps")
    length.add_argument("--epochs", type=float, default=D.epochs,
                        help=f"passes over the data (default: {PAPER_EPOCHS:g}, the paper's)")
    p.add_argument("--batch-size", type=int, default=D.batch_size,
                   help=f"global batch per step, split evenly over the processes of an `accelerate launch` and "
                        f"each share over --accum-steps (default: largest power of two <= pairs/4, at most "
                        f"{PAPER_BATCH})")
    p.add_argument("--seed", type=int, default=D.seed,
                   help=f"seed of block init, data order and augmentation (default {D.seed})")
    p.add_argument("--lr", type=float, default=D.lr, help=f"peak learning rate (default {D.lr:g}, the paper's)")
    p.add_argument("--gate-lr", type=float, default=D.gate_lr,
                   help="peak learning rate of the tanh gate scalars (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=D.weight_decay,
                   help=f"AdamW weight decay of matrices; never on gains, biases, norms, gates "
                        f"(default {D.weight_decay})")
    p.add_argument("--warmup", type=int, default=D.warmup,
                   help=f"linear warmup steps (default: 10%% of steps, <= {PAPER_WARMUP})")
    p.add_argument("--gated-layers", default=D.gated_layers, metavar="N|I,J|I-J",
                   help="host layers to put gated blocks before: N = the last N, or 0-based indices "
                        "(default: last half of <= 12 layers, last quarter of deeper towers)")
    p.add_argument("--mlp-ratio", type=float, default=D.mlp_ratio,
                   help=f"hidden width / width of the gated FFN (default {D.mlp_ratio})")
    p.add_argument("--train-logit-scale", action="store_true", default=D.train_logit_scale,
                   help="also train the temperature (default: frozen)")
    p.add_argument("--augment", default=D.augment, choices=AUGMENTATIONS,
                   help=f"light = random resized crop 50-100%% + flip; reference = the reference runs' "
                        f"crop 8-100%%, flip, RandAugment, random erasing; none = eval transform (default {D.augment})")
    p.add_argument("--accum-steps", type=int, default=D.accum_steps,
                   help=f"micro-batches per step; the loss still spans the full batch (default {D.accum_steps})")


def _add_runtime(p: argparse.ArgumentParser) -> None:
    """How it runs: precision, memory, decoding, devices, compile, threads (never what it computes)."""
    p.add_argument("--precision", default=D.precision, choices=PRECISIONS,
                   help=f"autocast precision (default {D.precision}: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--grad-checkpointing", action="store_true", default=D.grad_checkpointing,
                   help="recompute activations to save memory")
    p.add_argument("--no-text-cache", dest="text_cache", action="store_false", default=D.text_cache,
                   help="encode captions every step even when the text tower is frozen")
    p.add_argument("--workers", type=int, default=D.workers,
                   help=f"image-decoding workers (default: 0 on CPU, {GPU_WORKERS} on GPU)")
    p.add_argument("--device", default=D.device, choices=("cpu", "cuda"), help="force a device (default: accelerate's)")
    p.add_argument("--decoder", default=D.decoder, choices=DECODERS,
                   help=f"image decoding: gpu = nvjpeg + batched crop/flip/normalize on the GPU, cpu = libjpeg-turbo "
                        f"in the workers + batched augmentation, pil = PIL per sample (today's loader); auto = gpu "
                        f"on CUDA, else pil (faster on CPU). The choice is printed (default {D.decoder})")
    p.add_argument("--compile", dest="compile", action="store_true", default=D.compile,
                   help="torch.compile the image tower (default: on CUDA; falls back to eager if it fails)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="never torch.compile")
    p.add_argument("--threads", type=int, default=D.threads, help="torch CPU threads (default: torch's)")


def _add_run_control(p: argparse.ArgumentParser) -> None:
    """Checkpoints, logging, evaluation while training, stopping and resuming."""
    p.add_argument("--save-every", type=int, default=D.save_every,
                   help="checkpoint every N steps (default: 10%% of steps)")
    p.add_argument("--keep", type=int, default=D.keep, help=f"checkpoints to keep (default {D.keep})")
    p.add_argument("--log-every", type=int, default=D.log_every,
                   help=f"log to RUN_DIR/log.jsonl every N steps (default {D.log_every})")
    p.add_argument("--eval-dataset", default=D.eval_dataset, metavar="DATASET",
                   help="zero-shot evaluate on this dataset while training (as `react eval zeroshot`)")
    p.add_argument("--eval-every", type=int, default=D.eval_every,
                   help="evaluate every N steps and at the end (default: never)")
    p.add_argument("--eval-templates", default=D.eval_templates, metavar="NAME|FILE",
                   help="prompt templates for --eval-dataset")
    p.add_argument("--stop-after", type=int, default=D.stop_after,
                   help="stop with a checkpoint after N steps in this invocation (continue with --resume)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", default=D.resume,
                       help="continue RUN_DIR from its newest checkpoint, with the settings it started with")
    again.add_argument("--overwrite", action="store_true", default=D.overwrite,
                       help="delete an existing RUN_DIR and start over")


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
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
    from customize.train import train

    config = D(**{k: v for k, v in vars(args).items() if k not in ("func", "command")})
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
