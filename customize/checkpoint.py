"""The run directory: what a customization stores, resumes from and exports.

    RUN_DIR/react_run.json        base reference (spec + identity), mode, gated layout, config, data fingerprint
    RUN_DIR/checkpoints/step-NNNNNNNN/
        weights.safetensors       only the parameters that train (gated blocks + anything unfrozen)
        state.pt                  optimizer, scheduler, step, per-process RNG states
        meta.json                 step, loss, time
    RUN_DIR/log.jsonl, RUN_DIR/cache/, RUN_DIR/tensorboard/

A checkpoint directory is written under a temporary name and renamed when
whole, so a run killed at any moment leaves only whole checkpoints; the
newest ``keep`` are kept. A checkpoint means nothing without its base, so
the base is named by its identity (``LoadedModel.identity``: a digest of its
weights, or open_clip name + tag) and any other base is refused.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from react.errors import ReactError
from react.models import RUN_FILE, LoadedModel, file_digest, load_model
from react.schemas import atomic_dir, write_text

RUN_KIND = "react-customization"
RUN_FORMAT = 1
CHECKPOINTS = "checkpoints"
WEIGHTS = "weights.safetensors"
STATE = "state.pt"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Whole checkpoints, oldest first (temporary ``.step-*`` dirs are not listed)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name))
             and (p / WEIGHTS).is_file() and (p / STATE).is_file()]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_run(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise ReactError(f"not a customization run directory (no {RUN_FILE}): {run_dir}")
    try:
        info = json.loads(path.read_text())
    except ValueError as exc:
        raise ReactError(f"unreadable {path}: {exc}") from None
    if info.get("kind") != RUN_KIND or info.get("format") != RUN_FORMAT:
        raise ReactError(f"{path}: not a format-{RUN_FORMAT} customization run")
    return info


def write_run(run_dir: Path, info: dict[str, Any]) -> None:
    write_text(run_dir / RUN_FILE, json.dumps({"kind": RUN_KIND, "format": RUN_FORMAT} | info, indent=2) + "\n")


def trainable_state(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].detach().to("cpu", copy=True).contiguous() for name in names}


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, names: list[str], state: dict[str, Any],
                    meta: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically, then drop all but the newest ``keep``."""
    from safetensors.torch import save_file

    final = step_dir(run_dir, step)
    with atomic_dir(final) as tmp:
        save_file(trainable_state(model, names), str(tmp / WEIGHTS), metadata={"step": str(step)})
        torch.save(state, tmp / STATE)
        (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time()} | meta, indent=2))
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: Path) -> dict[str, Any]:
    # Our own file, holding optimizer tensors and RNG states (numpy/python tuples).
    return torch.load(path / STATE, map_location="cpu", weights_only=False)


def load_weights(model: nn.Module, path: Path) -> list[str]:
    """Load a checkpoint's parameters into an already-grown model; returns their names."""
    from safetensors.torch import load_file

    weights = load_file(str(path / WEIGHTS))
    own = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(own))
    if unknown:
        raise ReactError(f"checkpoint {path} has parameters this model lacks: {unknown[0]} (a different base?)")
    with torch.no_grad():
        for name, tensor in weights.items():
            if own[name].shape != tensor.shape:
                raise ReactError(f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, "
                                 f"the model {tuple(own[name].shape)} (a different base?)")
            own[name].copy_(tensor)
    return list(weights)


def check_base(info: dict[str, Any], base: LoadedModel, where: str) -> None:
    expected = info["base"]["identity"]
    if base.identity != expected:
        raise ReactError(f"{where} was customized from base {info['base']['spec']} ({expected}); "
                         f"{base.name} is a different model ({base.identity})")


def load_base(info: dict[str, Any], run_dir: Path, base: str | None = None, pretrained: str | None = None,
              device: str | torch.device | None = None) -> LoadedModel:
    """The base a run was trained on (or ``base``, which must be the same model)."""
    spec = base or info["base"]["spec"]
    tag = pretrained if base else info["base"].get("pretrained")
    if base is None and "/" in spec and not Path(spec).expanduser().exists():
        raise ReactError(f"base model of {run_dir} not found: {spec} (pass the moved base with --base)")
    loaded = load_model(spec, pretrained=tag, device=device)
    check_base(info, loaded, str(run_dir))
    return loaded


def grow(model: nn.Module, info: dict[str, Any]) -> None:
    """Rebuild a run's architecture on its base (gated blocks, if its mode has them)."""
    gated = info.get("gated")
    if gated:
        from customize.gated import insert_gated_blocks

        insert_gated_blocks(model, gated["layers"], gated["mlp_ratio"])


def load_run(run_dir: str | Path, device: str | torch.device | None = None, base: str | None = None,
             pretrained: str | None = None) -> LoadedModel:
    """A run's newest checkpoint on its base, as a LoadedModel (react.load_model's hook for run dirs)."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    newest = latest_checkpoint(run_dir)
    if newest is None:
        raise ReactError(f"customization run {run_dir} has no checkpoint yet")
    step, path = newest
    loaded = load_base(info, run_dir, base, pretrained, device)
    grow(loaded.model, info)
    load_weights(loaded.model, path)
    loaded.model.eval()
    loaded.name = str(run_dir)
    loaded.identity = f"{info['base']['identity']}+{info['mode']}:{file_digest(path / WEIGHTS)}"
    return loaded


def _model_cfg(loaded: LoadedModel) -> dict[str, Any]:
    """The base's open_clip config, as built: an OpenAI-weights model runs
    QuickGELU although its architecture config does not say so."""
    from open_clip.transformer import QuickGELU

    cfg = dict(loaded.model_cfg)
    if any(isinstance(m, QuickGELU) for m in loaded.model.modules()):
        cfg["quick_gelu"] = True
    return cfg


def export(run_dir: str | Path, out: str | Path, base: str | None = None, pretrained: str | None = None) -> Path:
    """Write a standalone open_clip model directory (config + all weights)
    that ``react.load_model`` -- and so every ``--model`` -- loads."""
    import open_clip

    from customize.gated import architecture_config
    from react.models import save_model

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    loaded = load_run(run_dir, device="cpu", base=base, pretrained=pretrained)
    step, _ = latest_checkpoint(run_dir)
    extra: dict[str, Any] = {"customized": {"base": info["base"], "mode": info["mode"], "step": step,
                                            "run": str(run_dir.resolve())}}
    if info.get("gated"):
        extra |= architecture_config(info["gated"]["layers"], info["gated"]["mlp_ratio"])
    preprocess_cfg = open_clip.get_model_preprocess_cfg(loaded.model)
    return save_model(loaded.model, _model_cfg(loaded), out, preprocess_cfg=preprocess_cfg, extra=extra)
