"""Everything ``customize.train`` resolves before its first step, one job per
function and in the order ``train`` calls them: the settings and the run
directory, the accelerator, the base model and the shard index, the grown
model, the caption cache, the optimizer (fresh or resumed, with the RNG
streams), the data loader and the compiled image tower.

The order matters for exact resumption: the gated blocks are initialized
right after ``torch.manual_seed(seed)``, and the RNG streams are seeded (or
restored from the checkpoint) after the optimizer is built; nothing between
those points and the first step draws from them.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip import get_model_preprocess_cfg
from torch.utils.data import DataLoader

from customize import checkpoint as ckpt
from customize.config import Plan, TrainConfig, check_split, merge_for_resume, plan, validate
from customize.constants import GPU_WORKERS
from customize.data import (PairBytes, PairImages, ShardIndex, StepBatches, collate_pairs, index_shards, read_sizes,
                            train_transform)
from customize.gated import insert_gated_blocks
from customize.modes import apply_mode, text_frozen, uses_gated_blocks
from customize.schedule import build_optimizer, build_scheduler
from react.errors import ReactError
from react.models import LoadedModel, load_model

def _never_started(run_dir: Path) -> bool:
    """A run directory holding only what ``train`` writes before react_run.json."""
    return all(p.name == "cache" or p.name.startswith(".") for p in run_dir.iterdir())


def _open_run_dir(run_dir: Path, c: TrainConfig) -> tuple[dict[str, Any] | None, bool]:
    """(stored run info when resuming, whether --overwrite must clear the folder);
    refuses to clobber anything by accident. Deletes nothing: that waits until
    the run's settings have passed every check (``train``)."""
    exists = run_dir.exists() and any(run_dir.iterdir()) if run_dir.is_dir() else run_dir.exists()
    is_run = (run_dir / ckpt.RUN_FILE).is_file()
    if exists and not is_run and run_dir.is_dir() and _never_started(run_dir):
        # Killed before its run record was written: only the shard index cache and temporary
        # files exist, nothing worth keeping, so --resume, a rerun and --overwrite all start over.
        return None, True
    if c.resume:
        if not is_run:
            raise ReactError(f"nothing to resume in {run_dir} (no {ckpt.RUN_FILE})")
        return ckpt.read_run(run_dir), False
    if exists and not c.overwrite:
        raise ReactError(f"run directory already exists: {run_dir} (pass --resume to continue it "
                         f"or --overwrite to start over)")
    if exists and not is_run:
        raise ReactError(f"--overwrite refused: {run_dir} is not a customization run directory")
    return None, exists


def settle_config(c: TrainConfig) -> tuple[TrainConfig, Path, dict[str, Any] | None, bool]:
    """Checks before anything loads: (the settings to run with -- a resumed run's
    own --, the run directory, its stored record or None, whether to clear it)."""
    validate(c)
    run_dir = Path(c.out)
    stored, clear = _open_run_dir(run_dir, c)
    if stored is not None:
        c = merge_for_resume(stored["config"], c)
    read_sizes(Path(c.train_data).expanduser())  # the data's one-line errors before any model loads
    return c, run_dir, stored, clear


def make_accelerator(c: TrainConfig):
    from accelerate import Accelerator

    cpu = c.device == "cpu" or not torch.cuda.is_available()
    precision = {"auto": "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16"),
                 "fp32": "no", "bf16": "bf16", "fp16": "fp16"}[c.precision]
    if cpu and precision == "fp16":
        raise ReactError("--precision fp16 needs a CUDA device")
    return Accelerator(cpu=cpu, mixed_precision=precision)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_base_and_data(c: TrainConfig, accelerator, run_dir: Path, stored: dict[str, Any] | None, clear: bool
                       ) -> tuple[LoadedModel, ShardIndex, Plan]:
    """The base model (on the CPU), the shard index (built once by the main
    process, read by the others) and the plan resolved from both."""
    main = accelerator.is_main_process
    if c.batch_size is not None:  # the process count is known only now; refuse before anything is written
        check_split(c.batch_size, c.accum_steps, accelerator.num_processes)
    if clear and main:
        shutil.rmtree(run_dir)
    if c.threads:
        torch.set_num_threads(c.threads)
    base = load_model(c.base, pretrained=c.pretrained, device="cpu")
    if stored is not None:
        ckpt.check_base(stored, base, str(run_dir))
    cache_dir = run_dir / "cache"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        index = index_shards(c.train_data, cache=cache_dir / "index.parquet")
    accelerator.wait_for_everyone()
    if not main:
        index = index_shards(c.train_data, cache=cache_dir / "index.parquet")
    if stored is not None and stored["data"]["fingerprint"] != index.fingerprint():
        raise ReactError(f"training data in {c.train_data} changed since {run_dir} started; resume needs the same shards")
    return base, index, plan(c, len(index), accelerator.num_processes)


def grow_model(c: TrainConfig, base: LoadedModel, index: ShardIndex, p: Plan, run_dir: Path,
               stored: dict[str, Any] | None, main: bool) -> tuple[torch.nn.Module, list[int] | None, list[str]]:
    """The base with its new blocks (seeded by --seed) and the mode's trainable
    parameters; a new run's record (react_run.json) is written here."""
    model = base.model
    torch.manual_seed(c.seed)  # the new blocks' initialization
    layers = insert_gated_blocks(model, c.gated_layers, c.mlp_ratio) if uses_gated_blocks(c.mode) else None
    names = apply_mode(model, c.mode, c.train_logit_scale)
    if c.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if stored is None and main:
        ckpt.write_run(run_dir, {
            "base": {"spec": c.base, "pretrained": c.pretrained, "identity": base.identity},
            "mode": c.mode, "gated": {"layers": layers, "mlp_ratio": c.mlp_ratio} if layers else None,
            "trainable": names, "config": c.to_dict(), "plan": vars(p),
            "data": {"root": str(index.root), "pairs": len(index), "fingerprint": index.fingerprint()}})
    return model, layers, names


def caption_cache(c: TrainConfig, base: LoadedModel, index: ShardIndex, run_dir: Path, accelerator):
    """The frozen text tower's caption embeddings (encoded once by the main
    process), or None when captions are encoded every step."""
    if not (text_frozen(c.mode) and c.text_cache):
        return None
    from customize.textcache import load_or_encode

    cache_dir = run_dir / "cache"
    cached = None
    if accelerator.is_main_process:
        cached = load_or_encode(base, index, cache_dir)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        cached = load_or_encode(base, index, cache_dir, compute=False)
    return cached


def optimizer_and_start(c: TrainConfig, model: torch.nn.Module, p: Plan, run_dir: Path,
                        stored: dict[str, Any] | None, accelerator) -> tuple[Any, Any, Any, int]:
    """(prepared model, optimizer, scheduler, first step): fresh and seeded, or
    restored with every RNG stream from the newest checkpoint."""
    start = 0
    resume_from = ckpt.latest_checkpoint(run_dir) if stored is not None else None
    if resume_from is not None:
        start, path = resume_from
        ckpt.load_weights(model, path)
    optimizer = build_optimizer(model, c.lr, c.weight_decay, c.gate_lr)
    scheduler = build_scheduler(optimizer, p.warmup, p.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if resume_from is not None:
        state = ckpt.load_state(resume_from[1])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == accelerator.num_processes:
            set_rng_state(rngs[accelerator.process_index])
        else:  # a different process count: the data order is the same, per-process RNG cannot be
            torch.manual_seed(c.seed * 7919 + accelerator.process_index + start)
    else:
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed)
    return model, optimizer, scheduler, start


def make_loader(c: TrainConfig, model: torch.nn.Module, base: LoadedModel, index: ShardIndex, p: Plan,
                start: int, stop: int, accelerator) -> tuple[DataLoader, Any, str, str]:
    """(loader of this process's batches for steps start..stop, the batched
    augmentation spec, the decoder chosen, why)."""
    from react import batch_decode as gpu_batch

    preprocess_cfg = get_model_preprocess_cfg(accelerator.unwrap_model(model))
    spec = gpu_batch.train_spec(preprocess_cfg, c.augment, base.preprocess)
    decoder, why = gpu_batch.resolve_decoder(c.decoder, accelerator.device, spec)
    if decoder == "pil":
        dataset = PairImages(index, train_transform(preprocess_cfg, c.augment, base.preprocess), c.seed)
    else:
        dataset = PairBytes(index, spec, c.seed, decode=decoder == "cpu")
    workers = c.workers if c.workers is not None else (0 if accelerator.device.type == "cpu" else GPU_WORKERS)
    sampler = StepBatches(len(index), p.batch_size, c.seed, start, stop, accelerator.process_index,
                          accelerator.num_processes)
    # Its own generator: creating the iterator must not draw from the global RNG.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_pairs,
                        pin_memory=accelerator.device.type == "cuda" and decoder == "pil",
                        prefetch_factor=4 if workers else None, persistent_workers=False,
                        generator=torch.Generator().manual_seed(c.seed))
    return loader, spec, decoder, why


def maybe_compile(c: TrainConfig, model: torch.nn.Module, accelerator) -> tuple[torch.nn.Module | None, bool]:
    """(the image tower, whether it was torch.compiled): by default on CUDA only."""
    visual_tower = getattr(accelerator.unwrap_model(model), "visual", None)
    compiled = False
    if visual_tower is not None and (c.compile if c.compile is not None else accelerator.device.type == "cuda"):
        from customize.speed import compile_module

        compiled = compile_module(visual_tower)
    return visual_tower, compiled
