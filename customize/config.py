"""A customization run's settings: defaults, checks, and what ``--resume`` keeps.

The paper's recipe for ViT-B/32 gated-image (REACT sec. 2.4): lr 5e-4, weight
decay 0.1, warmup 5,000 steps, global batch 4,096, 32 epochs over ~10M
retrieved pairs. Defaults keep lr, weight decay and epochs and scale the rest
to the data: the batch is the largest power of two up to a quarter of the
pairs (at most 4,096) so an epoch is at least four steps, and warmup is 10 %
of the steps (at most 5,000).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from customize.constants import (AUGMENTATIONS, DEFAULT_AUGMENT, DEFAULT_GAMMA, DEFAULT_MLP_RATIO, DEFAULT_MODE,
                                 DEFAULT_PRECISION, PRECISIONS)
from react.config import DECODERS, DEFAULT_DECODER
from react.errors import ReactError

PAPER_BATCH, PAPER_WARMUP, PAPER_EPOCHS = 4096, 5000, 32.0


@dataclass
class TrainConfig:
    base: str
    train_data: str
    out: str
    pretrained: str | None = None
    mode: str = DEFAULT_MODE
    gamma: float = DEFAULT_GAMMA
    steps: int | None = None          # optimizer steps; else from epochs
    epochs: float | None = None       # default PAPER_EPOCHS when neither is given
    batch_size: int | None = None     # global batch per optimizer step
    seed: int = 0
    lr: float = 5e-4
    gate_lr: float | None = None      # learning rate of the tanh gate scalars (default: lr)
    weight_decay: float = 0.1
    warmup: int | None = None
    gated_layers: str | None = None   # "N" (last N) or "I,J" / "I-J"; default: reference placement
    mlp_ratio: float = DEFAULT_MLP_RATIO
    train_logit_scale: bool = False
    augment: str = DEFAULT_AUGMENT
    accum_steps: int = 1              # micro-batches per step (same gradient as the full batch)
    precision: str = DEFAULT_PRECISION  # auto: bf16 on CUDA, fp32 on CPU
    grad_checkpointing: bool = False
    text_cache: bool = True           # cache caption embeddings when the text tower is frozen
    workers: int | None = None
    device: str | None = None         # "cpu" forces CPU; else accelerate decides
    threads: int | None = None        # torch CPU threads
    save_every: int | None = None     # default: every 10 % of the steps
    keep: int = 3
    log_every: int = 10
    eval_dataset: str | None = None
    eval_every: int = 0
    eval_templates: str | None = None
    stop_after: int | None = None     # stop (with a checkpoint) after this many steps in this invocation
    decoder: str = DEFAULT_DECODER    # auto|gpu|cpu|pil (react.batch_decode); auto: gpu on CUDA, else pil
    compile: bool | None = None       # torch.compile the image tower; None: on CUDA only
    resume: bool = False
    overwrite: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What a resumed run may change: where things are and how it is run, never
# what is computed.
RESUME_MUTABLE = {"base", "pretrained", "train_data", "out", "workers", "device", "threads", "keep", "log_every",
                  "save_every", "eval_dataset", "eval_every", "eval_templates", "stop_after", "resume", "overwrite",
                  "decoder", "compile"}


def merge_for_resume(stored: dict[str, Any], given: TrainConfig) -> TrainConfig:
    """The stored settings, plus the mutable ones given now; a conflicting
    explicit setting is an error rather than a silently different run."""
    defaults = TrainConfig(base="", train_data="", out="")
    merged = {}
    for f in fields(TrainConfig):
        now, then = getattr(given, f.name), stored.get(f.name, getattr(defaults, f.name))
        if f.name in RESUME_MUTABLE:
            merged[f.name] = now
        elif now != getattr(defaults, f.name) and now != then:
            flag = "--" + f.name.replace("_", "-")
            raise ReactError(f"{flag} {now} differs from the run being resumed ({then}); "
                             f"a resumed run keeps its settings")
        else:
            merged[f.name] = then
    return TrainConfig(**merged)


def validate(c: TrainConfig) -> None:
    """Cheap checks before anything loads; messages name the option."""
    from customize.modes import check_mode

    check_mode(c.mode)
    if not 0 < c.gamma <= 1:
        raise ReactError(f"--gamma must lie in (0, 1], got {c.gamma}")
    if c.steps is not None and c.epochs is not None:
        raise ReactError("give --steps or --epochs, not both")
    positive = {"steps": c.steps, "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr,
                "gate_lr": c.gate_lr, "mlp_ratio": c.mlp_ratio, "accum_steps": c.accum_steps,
                "save_every": c.save_every, "log_every": c.log_every, "stop_after": c.stop_after,
                "threads": c.threads, "keep": c.keep}
    for name, value in positive.items():
        if value is not None and not value > 0:
            raise ReactError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name, value in {"weight_decay": c.weight_decay, "warmup": c.warmup, "workers": c.workers,
                        "eval_every": c.eval_every}.items():
        if value is not None and value < 0:
            raise ReactError(f"--{name.replace('_', '-')} must not be negative, got {value}")
    if c.batch_size is not None and c.batch_size < 2:
        raise ReactError(f"--batch-size must be at least 2 (a contrastive batch needs negatives), got {c.batch_size}")
    if c.augment not in AUGMENTATIONS:
        raise ReactError(f"unknown --augment {c.augment!r} (choose from {', '.join(AUGMENTATIONS)})")
    if c.decoder not in DECODERS:
        raise ReactError(f"unknown --decoder {c.decoder!r} (choose from {', '.join(DECODERS)})")
    if c.precision not in PRECISIONS:
        raise ReactError(f"unknown --precision {c.precision!r} (choose from {', '.join(PRECISIONS)})")
    if c.gated_layers is not None and c.mode != "gated-image":
        raise ReactError(f"--gated-layers applies to --mode gated-image only (got --mode {c.mode})")
    if c.eval_every and not c.eval_dataset:
        raise ReactError("--eval-every needs --eval-dataset")
    if c.resume and c.overwrite:
        raise ReactError("give --resume or --overwrite, not both")


def default_batch(num_pairs: int) -> int:
    batch = 2
    while batch * 2 <= min(PAPER_BATCH, num_pairs // 4):
        batch *= 2
    return batch


@dataclass
class Plan:
    """The numbers a run resolves from its config and its data."""

    batch_size: int
    steps: int
    steps_per_epoch: int
    warmup: int
    save_every: int


def check_split(batch: int, accum: int, world: int) -> None:
    """Each of the ``world`` processes takes ``batch / world`` samples of a step and
    runs them as ``accum`` equal micro-batches. Anything uneven is refused before
    training: the micro-batch slicing would silently drop the remainder (batch 12
    over 2 processes with --accum-steps 4 trained on 8 of the 12 samples)."""
    if batch % world:
        raise ReactError(f"--batch-size {batch} is not divisible by the {world} processes "
                         f"(use a multiple of {world})")
    share = batch // world
    if share % accum:
        split = f" over {world} processes is {share} per process, which" if world > 1 else ""
        raise ReactError(f"--batch-size {batch}{split} is not divisible by --accum-steps {accum} "
                         f"(use a multiple of {world * accum})")


def plan(c: TrainConfig, num_pairs: int, world: int = 1) -> Plan:
    batch = c.batch_size or default_batch(num_pairs)
    if batch > num_pairs:
        raise ReactError(f"--batch-size {batch} exceeds the {num_pairs} training pairs in {Path(c.train_data)}")
    check_split(batch, c.accum_steps, world)
    per_epoch = num_pairs // batch
    steps = c.steps or max(1, round((c.epochs or PAPER_EPOCHS) * per_epoch))
    warmup = c.warmup if c.warmup is not None else min(PAPER_WARMUP, steps // 10)
    save_every = c.save_every or max(1, steps // 10)
    return Plan(batch_size=batch, steps=steps, steps_per_epoch=per_epoch, warmup=min(warmup, steps),
                save_every=save_every)
