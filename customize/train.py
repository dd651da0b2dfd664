"""The customization loop: ``train(TrainConfig)`` -> summary dict.

Devices, precision and distribution come from Hugging Face accelerate (one
process on CPU; ``accelerate launch`` for several GPUs or nodes). The loop is
written so that a run resumed from its newest checkpoint computes exactly what
an uninterrupted run computes: weights, optimizer and scheduler state, every
process's RNG state and the step number (which fixes the data position, see
``customize.data``) are all in the checkpoint.
"""
from __future__ import annotations

import contextlib
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip import get_model_preprocess_cfg
from torch.utils.data import DataLoader

from customize import checkpoint as ckpt
from customize.config import Plan, TrainConfig, check_split, merge_for_resume, plan, validate
from customize.data import (PairBytes, PairImages, RawBatch, Skipped, StepBatches, collate_pairs, fill_skipped,
                            index_shards, read_sizes, train_transform)
from customize.gated import gate_values, insert_gated_blocks
from customize.log import RunLog, gate_summary
from customize.loss import gather, react_loss
from customize.modes import apply_mode, set_train_mode, text_frozen, uses_gated_blocks
from customize.schedule import build_optimizer, build_scheduler
from react.errors import ReactError
from react.loading import check_batch
from react.models import LoadedModel, load_model

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on tau


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


def _accelerator(c: TrainConfig):
    from accelerate import Accelerator

    cpu = c.device == "cpu" or not torch.cuda.is_available()
    precision = {"auto": "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16"),
                 "fp32": "no", "bf16": "bf16", "fp16": "fp16"}[c.precision]
    if cpu and precision == "fp16":
        raise ReactError("--precision fp16 needs a CUDA device")
    return Accelerator(cpu=cpu, mixed_precision=precision)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    from downstream.zeroshot import evaluate_zeroshot

    saved = _rng_state()
    view = LoadedModel(model=model, preprocess=base.preprocess, tokenizer=base.tokenizer, name=c.out,
                       device=device, model_cfg=base.model_cfg, identity="training")
    model.eval()
    try:
        metrics = evaluate_zeroshot(view, dataset, templates=c.eval_templates)["metrics"]
    finally:
        set_train_mode(model, c.mode)
        _set_rng_state(saved)
    return {k: round(float(metrics[k]), 4) for k in ("top1", "top5", "mean_per_class_recall")}


def train(c: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a customization; returns a summary of where it ended."""
    validate(c)
    run_dir = Path(c.out)
    stored, clear = _open_run_dir(run_dir, c)
    if stored is not None:
        c = merge_for_resume(stored["config"], c)
    read_sizes(Path(c.train_data).expanduser())  # the data's one-line errors before any model loads
    accelerator = _accelerator(c)
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
    p: Plan = plan(c, len(index), accelerator.num_processes)

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

    # On the training device from here on: the caption cache and evaluation run through ``base`` too.
    base.device = accelerator.device
    model.to(accelerator.device)
    cached = None
    if text_frozen(c.mode) and c.text_cache:
        from customize.textcache import load_or_encode

        if main:
            cached = load_or_encode(base, index, cache_dir)
        accelerator.wait_for_everyone()
        if not main:
            cached = load_or_encode(base, index, cache_dir, compute=False)

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
            _set_rng_state(rngs[accelerator.process_index])
        else:  # a different process count: the data order is the same, per-process RNG cannot be
            torch.manual_seed(c.seed * 7919 + accelerator.process_index + start)
    else:
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed)

    stop = p.steps if c.stop_after is None else min(p.steps, start + c.stop_after)
    from react import batch_decode as gpu_batch

    preprocess_cfg = get_model_preprocess_cfg(accelerator.unwrap_model(model))
    spec = gpu_batch.train_spec(preprocess_cfg, c.augment, base.preprocess)
    decoder, why = gpu_batch.resolve_decoder(c.decoder, accelerator.device, spec)
    if decoder == "pil":
        dataset = PairImages(index, train_transform(preprocess_cfg, c.augment, base.preprocess), c.seed)
    else:
        dataset = PairBytes(index, spec, c.seed, decode=decoder == "cpu")
    workers = c.workers if c.workers is not None else (0 if accelerator.device.type == "cpu" else 6)
    sampler = StepBatches(len(index), p.batch_size, c.seed, start, stop, accelerator.process_index,
                          accelerator.num_processes)
    # Its own generator: creating the iterator must not draw from the global RNG.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_pairs,
                        pin_memory=accelerator.device.type == "cuda" and decoder == "pil",
                        prefetch_factor=4 if workers else None, persistent_workers=False,
                        generator=torch.Generator().manual_seed(c.seed))
    visual_tower = getattr(accelerator.unwrap_model(model), "visual", None)
    compiled = False
    if visual_tower is not None and (c.compile if c.compile is not None else accelerator.device.type == "cuda"):
        from customize.speed import compile_module

        compiled = compile_module(visual_tower)
    eval_set = None
    if c.eval_dataset:
        from downstream.datasets import build_classification_dataset

        eval_set = build_classification_dataset(c.eval_dataset)

    log = RunLog(run_dir, enabled=main)
    unwrapped = accelerator.unwrap_model(model)
    set_train_mode(unwrapped, c.mode)
    text_trains = not text_frozen(c.mode)
    log.print(f"customizing {c.base} ({c.mode}{', gated layers ' + str(layers) if layers else ''}): "
              f"{sum(unwrapped.get_parameter(n).numel() for n in names):,} trainable parameters, "
              f"{len(index):,} pairs, batch {p.batch_size}, steps {start}->{stop} of {p.steps}, "
              f"text {'cached' if cached is not None else 'encoded per step'}, {accelerator.device}, "
              f"precision {accelerator.mixed_precision}")
    log.print(gpu_batch.describe(decoder, why) + (", image tower compiled" if compiled else ""))
    from react.progress import progress

    bar = progress() if main else None
    task = bar.add_task("customizing", total=p.steps, completed=start, unit="step") if bar else None
    losses: list[float] = []
    skipped_total: list[str] = []
    share = p.batch_size // accelerator.num_processes
    window_start, window_steps, loss = time.perf_counter(), 0, None
    step = start
    with bar or contextlib.nullcontext():
        for batch in loader:
            payload, skipped = check_batch(batch)
            if isinstance(payload, RawBatch):
                keys = [index.keys[i] for i in payload.indices.tolist()]
                where = [str(index.root / k) for k in keys]
                images, keep, failed = gpu_batch.to_device_batch(payload.datas, payload.images, payload.params,
                                                                 where, spec, accelerator.device)
                skipped += [Skipped(int(payload.indices[i]), keys[i], reason) for i, reason in failed]
                idx = payload.indices[keep]
            else:
                images, idx = payload if payload is not None else (None, None)
            for s in skipped:
                log.print(f"skipped unreadable image {s.key} (step {step + 1}): {s.reason}")
                skipped_total.append(s.key)
            images, idx = fill_skipped(images, idx, skipped, share)
            images = images.to(accelerator.device, non_blocking=True)
            tokens = None if cached is not None else base.tokenizer([index.captions[i] for i in idx.tolist()])
            if tokens is not None:
                tokens = tokens.to(accelerator.device)
            text = cached.lookup(idx, accelerator.device) if cached is not None else None
            try:
                loss = loss_and_backward(accelerator, model, images, tokens, text, c.gamma, c.accum_steps,
                                         text_trains)
            except Exception as exc:  # torch.compile failing on its first call: run eager from here on
                from customize.speed import compile_failed, uncompile

                if not (compiled and step == start and compile_failed(exc)):
                    raise
                uncompile(visual_tower)
                compiled = False
                optimizer.zero_grad(set_to_none=True)
                log.print(f"torch.compile failed ({exc.__class__.__name__}); running eagerly")
                loss = loss_and_backward(accelerator, model, images, tokens, text, c.gamma, c.accum_steps,
                                         text_trains)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if c.train_logit_scale:
                with torch.no_grad():
                    unwrapped.logit_scale.clamp_(0, float(np.log(MAX_LOGIT_SCALE)))
            step += 1
            window_steps += 1
            losses.append(float(loss))
            if bar:
                bar.update(task, advance=1, description=f"customizing (loss {np.mean(losses[-20:]):.3f})")
            if step % c.log_every == 0 or step == stop:
                elapsed = time.perf_counter() - window_start
                record = {"step": step, "epoch": round(step / p.steps_per_epoch, 3),
                          "loss": round(float(np.mean(losses[-window_steps:])), 5),
                          "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)},
                          "samples_per_s": round(window_steps * p.batch_size / max(elapsed, 1e-9), 2),
                          "logit_scale": round(float(unwrapped.logit_scale.exp()), 4),
                          "gates": gate_values(unwrapped)}
                if skipped_total:
                    record["skipped"] = len(skipped_total)
                log.write(record)
                window_start, window_steps = time.perf_counter(), 0
            if eval_set is not None and c.eval_every and (step % c.eval_every == 0 or step == stop) and main:
                if bar:
                    bar.stop()
                metrics = _evaluate(unwrapped, base, eval_set, c, accelerator.device)
                log.write({"step": step, "eval": metrics})
                log.print(f"step {step}: zero-shot top-1 {100 * metrics['top1']:.2f} %, "
                          f"mean recall {100 * metrics['mean_per_class_recall']:.2f} %")
                if bar:
                    bar.start()
            if step % p.save_every == 0 or step == stop:
                _save(accelerator, run_dir, step, unwrapped, names, optimizer, scheduler, c.keep,
                      {"loss": round(float(np.mean(losses[-20:])), 5), "stopped_early": step < p.steps})
    log.close()
    gates = gate_values(unwrapped)
    if main and gates:
        log.print(f"gates tanh(alpha) attn/mlp: {gate_summary(gates)}")
    if main and skipped_total:
        log.print(f"{len(skipped_total)} unreadable image(s) skipped: {', '.join(skipped_total[:10])}"
                  + (" ..." if len(skipped_total) > 10 else ""))
    return {"run_dir": str(run_dir), "step": step, "steps": p.steps, "finished": step >= p.steps,
            "skipped": skipped_total, "decoder": decoder, "compiled": compiled,
            "loss": round(float(np.mean(losses[-20:])), 5) if losses else None, "gates": gates}


def _save(accelerator, run_dir: Path, step: int, model: torch.nn.Module, names: list[str], optimizer, scheduler,
          keep: int, meta: dict[str, Any]) -> None:
    from accelerate.utils import gather_object

    rngs = gather_object([_rng_state()]) if accelerator.num_processes > 1 else [_rng_state()]
    if accelerator.is_main_process:
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rngs, "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None}
        ckpt.save_checkpoint(run_dir, step, model, names, state, meta, keep)
    accelerator.wait_for_everyone()
