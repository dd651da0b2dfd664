"""The customization loop: ``train(TrainConfig)`` -> summary dict.

Devices, precision and distribution come from Hugging Face accelerate (one
process on CPU; ``accelerate launch`` for several GPUs or nodes). The loop is
written so that a run resumed from its newest checkpoint computes exactly what
an uninterrupted run computes: weights, optimizer and scheduler state, every
process's RNG state and the step number (which fixes the data position, see
``customize.data``) are all in the checkpoint.

``train`` reads as its steps: what is resolved before the first step comes
from ``customize.setup`` (settings, run directory, base and data, grown
model, caption cache, optimizer and RNG, loader, compile); the step loop, its
logging, evaluation and checkpoints, and the final summary are here.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from customize import checkpoint as ckpt
from customize.config import Plan, TrainConfig
from customize.data import RawBatch, ShardIndex, Skipped, fill_skipped
from customize.gated import gate_values
from customize.log import RunLog, gate_summary
from customize.loss import gather, react_loss
from customize.modes import set_train_mode, text_frozen
from customize.setup import (caption_cache, grow_model, load_base_and_data, make_accelerator, make_loader,
                             maybe_compile, optimizer_and_start, rng_state, set_rng_state, settle_config)
from react.errors import ReactError
from react.loading import check_batch
from react.models import LoadedModel

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on tau


def _outputs(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor | None):
    """Through the (possibly DDP-wrapped) model's forward, so gradients sync."""
    out = model(images, tokens)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def loss_and_backward(accelerator, model, images: torch.Tensor, tokens: torch.Tensor | None,
                       cached: torch.Tensor | None, gamma: float, accum: int, text_trains: bool) -> torch.Tensor:
    """One optimizer step's gradient. With ``accum`` > 1 the batch is run in
    micro-batches but the loss is still the full batch's: features of the
    other micro-batches come from a no-grad pass (open_clip's accumulation),
    so every micro-batch sees all its negatives and the summed gradient is
    the full-batch gradient, at the cost of one extra forward."""
    def features(sl: slice):
        img, txt, scale = _outputs(model, images[sl], None if tokens is None else tokens[sl])
        return img, (cached[sl] if cached is not None else txt), scale.clamp(max=MAX_LOGIT_SCALE)

    if len(images) % accum:  # check_split refuses such runs; never drop samples silently
        raise ReactError(f"{len(images)} samples do not split into {accum} equal micro-batches")
    size = len(images) // accum
    slices = [slice(m * size, (m + 1) * size) for m in range(accum)]
    if accum == 1:
        with accelerator.autocast():
            img, txt, scale = features(slices[0])
        loss = react_loss(gather(img, True), gather(txt, text_trains), scale, gamma)
        accelerator.backward(loss)
        return loss.detach()
    with torch.no_grad(), accelerator.autocast():
        fixed = [features(sl)[:2] for sl in slices]
    for m, sl in enumerate(slices):
        sync = contextlib.nullcontext() if m == accum - 1 else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                img, txt, scale = features(sl)
            imgs = torch.cat([img if i == m else f[0] for i, f in enumerate(fixed)])
            txts = torch.cat([txt if i == m else f[1] for i, f in enumerate(fixed)])
            loss = react_loss(gather(imgs, True), gather(txts, text_trains), scale, gamma)
            accelerator.backward(loss)
    return loss.detach()


def _evaluate(model: torch.nn.Module, base: LoadedModel, dataset, c: TrainConfig, device: torch.device
              ) -> dict[str, float]:
    """Zero-shot metrics through the same code as ``react eval zeroshot``; the
    training RNG streams and train/eval modes are left as they were."""
    from downstream.tasks.zeroshot import evaluate_zeroshot

    saved = rng_state()
    view = LoadedModel(model=model, preprocess=base.preprocess, tokenizer=base.tokenizer, name=c.out,
                       device=device, model_cfg=base.model_cfg, identity="training")
    model.eval()
    try:
        metrics = evaluate_zeroshot(view, dataset, templates=c.eval_templates)["metrics"]
    finally:
        set_train_mode(model, c.mode)
        set_rng_state(saved)
    return {k: round(float(metrics[k]), 4) for k in ("top1", "top5", "mean_per_class_recall")}


def train(c: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a customization; returns a summary of where it ended."""
    c, run_dir, stored, clear = settle_config(c)
    accelerator = make_accelerator(c)
    main = accelerator.is_main_process
    base, index, p = load_base_and_data(c, accelerator, run_dir, stored, clear)
    model, layers, names = grow_model(c, base, index, p, run_dir, stored, main)
    # On the training device from here on: the caption cache and evaluation run through ``base`` too.
    base.device = accelerator.device
    model.to(accelerator.device)
    cached = caption_cache(c, base, index, run_dir, accelerator)
    model, optimizer, scheduler, start = optimizer_and_start(c, model, p, run_dir, stored, accelerator)
    stop = p.steps if c.stop_after is None else min(p.steps, start + c.stop_after)
    loader, spec, decoder, why = make_loader(c, model, base, index, p, start, stop, accelerator)
    visual_tower, compiled = maybe_compile(c, model, accelerator)
    eval_set = None
    if c.eval_dataset:
        from react.datasets import build_classification_dataset

        try:  # curves watched during training are for choosing things: the validation split when there is one
            eval_set = build_classification_dataset(c.eval_dataset, "val")
        except ReactError:
            eval_set = build_classification_dataset(c.eval_dataset)

    r = _Loop(c=c, accelerator=accelerator, run_dir=run_dir, base=base, index=index, plan=p, model=model,
              unwrapped=accelerator.unwrap_model(model), names=names, optimizer=optimizer, scheduler=scheduler,
              cached=cached, spec=spec, visual_tower=visual_tower, compiled=compiled, eval_set=eval_set,
              log=RunLog(run_dir, enabled=main), start=start, stop=stop, step=start)
    _announce(r, layers, decoder, why)
    _run_steps(r, loader)
    return _finish(r, decoder)


@dataclass
class _Loop:
    """What the step loop works with, and where it has got to."""

    c: TrainConfig
    accelerator: Any
    run_dir: Path
    base: LoadedModel
    index: ShardIndex
    plan: Plan
    model: torch.nn.Module          # as accelerate prepared it (DDP-wrapped under a launcher)
    unwrapped: torch.nn.Module
    names: list[str]
    optimizer: Any
    scheduler: Any
    cached: Any                     # caption cache, or None: captions encoded per step
    spec: Any                       # the batched decoders' augmentation spec
    visual_tower: torch.nn.Module | None
    compiled: bool
    eval_set: Any
    log: RunLog
    start: int
    stop: int
    step: int
    losses: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    window_start: float = 0.0
    window_steps: int = 0


def _announce(r: _Loop, layers: list[int] | None, decoder: str, why: str) -> None:
    """Train mode on, and the run's one-line description (after the loader and compile)."""
    from react import batch_decode as gpu_batch

    c, p = r.c, r.plan
    set_train_mode(r.unwrapped, c.mode)
    r.log.print(f"customizing {c.base} ({c.mode}{', gated layers ' + str(layers) if layers else ''}): "
                f"{sum(r.unwrapped.get_parameter(n).numel() for n in r.names):,} trainable parameters, "
                f"{len(r.index):,} pairs, batch {p.batch_size}, steps {r.start}->{r.stop} of {p.steps}, "
                f"text {'cached' if r.cached is not None else 'encoded per step'}, {r.accelerator.device}, "
                f"precision {r.accelerator.mixed_precision}")
    r.log.print(gpu_batch.describe(decoder, why) + (", image tower compiled" if r.compiled else ""))


def _run_steps(r: _Loop, loader) -> None:
    """Steps start..stop: one optimizer step per batch, then logging, evaluation and checkpoints as due."""
    from react.progress import progress

    main = r.accelerator.is_main_process
    bar = progress() if main else None
    task = bar.add_task("customizing", total=r.plan.steps, completed=r.start, unit="step") if bar else None
    text_trains = not text_frozen(r.c.mode)
    r.window_start, r.window_steps = time.perf_counter(), 0
    with bar or contextlib.nullcontext():
        for batch in loader:
            images, tokens, text = _step_inputs(r, batch)
            loss = _optimizer_step(r, images, tokens, text, text_trains)
            r.step += 1
            r.window_steps += 1
            r.losses.append(float(loss))
            if bar:
                bar.update(task, advance=1, description=f"customizing (loss {np.mean(r.losses[-20:]):.3f})")
            if r.step % r.c.log_every == 0 or r.step == r.stop:
                _log_window(r)
            if r.eval_set is not None and r.c.eval_every and (r.step % r.c.eval_every == 0 or r.step == r.stop) \
                    and main:
                _evaluate_now(r, bar)
            if r.step % r.plan.save_every == 0 or r.step == r.stop:
                _save(r.accelerator, r.run_dir, r.step, r.unwrapped, r.names, r.optimizer, r.scheduler, r.c.keep,
                      {"loss": round(float(np.mean(r.losses[-20:])), 5), "stopped_early": r.step < r.plan.steps})


def _step_inputs(r: _Loop, batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(images on the device, caption tokens or None, cached caption embeddings or None);
    unreadable images are logged and their places refilled (``fill_skipped``)."""
    from react import batch_decode as gpu_batch

    device, index = r.accelerator.device, r.index
    payload, skipped = check_batch(batch)
    if isinstance(payload, RawBatch):
        keys = [index.keys[i] for i in payload.indices.tolist()]
        where = [str(index.root / k) for k in keys]
        images, keep, failed = gpu_batch.to_device_batch(payload.datas, payload.images, payload.params,
                                                         where, r.spec, device)
        skipped += [Skipped(int(payload.indices[i]), keys[i], reason) for i, reason in failed]
        idx = payload.indices[keep]
    else:
        images, idx = payload if payload is not None else (None, None)
    for s in skipped:
        r.log.print(f"skipped unreadable image {s.key} (step {r.step + 1}): {s.reason}")
        r.skipped.append(s.key)
    images, idx = fill_skipped(images, idx, skipped, r.plan.batch_size // r.accelerator.num_processes)
    images = images.to(device, non_blocking=True)
    tokens = None if r.cached is not None else r.base.tokenizer([index.captions[i] for i in idx.tolist()])
    if tokens is not None:
        tokens = tokens.to(device)
    text = r.cached.lookup(idx, device) if r.cached is not None else None
    return images, tokens, text


def _optimizer_step(r: _Loop, images: torch.Tensor, tokens: torch.Tensor | None, text: torch.Tensor | None,
                    text_trains: bool) -> torch.Tensor:
    """Gradient and update; a torch.compile failing on its first call falls back to eager."""
    c = r.c
    try:
        loss = loss_and_backward(r.accelerator, r.model, images, tokens, text, c.gamma, c.accum_steps, text_trains)
    except Exception as exc:  # torch.compile failing on its first call: run eager from here on
        from customize.speed import compile_failed, uncompile

        if not (r.compiled and r.step == r.start and compile_failed(exc)):
            raise
        uncompile(r.visual_tower)
        r.compiled = False
        r.optimizer.zero_grad(set_to_none=True)
        r.log.print(f"torch.compile failed ({exc.__class__.__name__}); running eagerly")
        loss = loss_and_backward(r.accelerator, r.model, images, tokens, text, c.gamma, c.accum_steps, text_trains)
    r.optimizer.step()
    r.scheduler.step()
    r.optimizer.zero_grad(set_to_none=True)
    if c.train_logit_scale:
        with torch.no_grad():
            r.unwrapped.logit_scale.clamp_(0, float(np.log(MAX_LOGIT_SCALE)))
    return loss


def _log_window(r: _Loop) -> None:
    """One log.jsonl record for the steps since the last one."""
    elapsed = time.perf_counter() - r.window_start
    record = {"step": r.step, "epoch": round(r.step / r.plan.steps_per_epoch, 3),
              "loss": round(float(np.mean(r.losses[-r.window_steps:])), 5),
              "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(r.optimizer.param_groups)},
              "samples_per_s": round(r.window_steps * r.plan.batch_size / max(elapsed, 1e-9), 2),
              "logit_scale": round(float(r.unwrapped.logit_scale.exp()), 4),
              "gates": gate_values(r.unwrapped)}
    if r.skipped:
        record["skipped"] = len(r.skipped)
    r.log.write(record)
    r.window_start, r.window_steps = time.perf_counter(), 0


def _evaluate_now(r: _Loop, bar) -> None:
    if bar:
        bar.stop()
    metrics = _evaluate(r.unwrapped, r.base, r.eval_set, r.c, r.accelerator.device)
    r.log.write({"step": r.step, "eval": metrics})
    r.log.print(f"step {r.step}: zero-shot top-1 {100 * metrics['top1']:.2f} %, "
                f"mean recall {100 * metrics['mean_per_class_recall']:.2f} %")
    if bar:
        bar.start()


def _finish(r: _Loop, decoder: str) -> dict[str, Any]:
    """Close the log, report gates and skipped images; the summary ``train`` returns."""
    main = r.accelerator.is_main_process
    r.log.close()
    gates = gate_values(r.unwrapped)
    if main and gates:
        r.log.print(f"gates tanh(alpha) attn/mlp: {gate_summary(gates)}")
    if main and r.skipped:
        r.log.print(f"{len(r.skipped)} unreadable image(s) skipped: {', '.join(r.skipped[:10])}"
                    + (" ..." if len(r.skipped) > 10 else ""))
    return {"run_dir": str(r.run_dir), "step": r.step, "steps": r.plan.steps, "finished": r.step >= r.plan.steps,
            "skipped": r.skipped, "decoder": decoder, "compiled": r.compiled,
            "loss": round(float(np.mean(r.losses[-20:])), 5) if r.losses else None, "gates": gates}


def _save(accelerator, run_dir: Path, step: int, model: torch.nn.Module, names: list[str], optimizer, scheduler,
          keep: int, meta: dict[str, Any]) -> None:
    from accelerate.utils import gather_object

    rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
    if accelerator.is_main_process:
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rngs, "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None}
        ckpt.save_checkpoint(run_dir, step, model, names, state, meta, keep)
    accelerator.wait_for_everyone()
