"""Gated self-attention dense blocks grown into an open_clip VisionTransformer.

REACT (Liu et al. 2023, Fig. 2.3d) inserts new blocks between the frozen
layers of the image encoder: pre-norm self-attention and a dense feed-forward
layer, each added through ``tanh(alpha)`` with ``alpha`` initialized to 0 (as
Flamingo's gated cross-attention), so the grown model starts out computing
exactly what the base computes.

How a block is attached: it lives *inside* the host layer it precedes, as
``<host>.react_gated``, and runs from a forward pre-hook on that layer. That
keeps every original parameter under its original state-dict name (base
weights load into a grown model unchanged; a saved delta is just the
``react_gated`` entries), and it works with whatever iterates ``resblocks``:
``Transformer.forward``, ``forward_intermediates`` and open_clip's gradient
checkpointing (the hook runs inside the checkpointed call).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from customize.constants import DEFAULT_MLP_RATIO
from react.errors import ReactError

ATTR = "react_gated"  # the child-module name under each host layer
ARCHITECTURE = "react-gated"  # what exported configs name (registered in pyproject.toml, react.plugins)


class GatedBlock(nn.Module):
    """Pre-norm self-attention + dense FFN of the host's width and heads, each
    through a tanh(alpha) gate (alpha = 0 at init: an exact identity)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = DEFAULT_MLP_RATIO, batch_first: bool = True,
                 norm_layer: type[nn.Module] = nn.LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_1 = norm_layer(width, eps=norm_eps)
        # Same layout convention as the host transformer (open_clip >= 2.24
        # runs batch-first, older builds and some forks run sequence-first).
        self.attn = nn.MultiheadAttention(width, heads, batch_first=batch_first)
        self.ln_2 = norm_layer(width, eps=norm_eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)), ("gelu", act_layer()), ("c_proj", nn.Linear(hidden, width)),
        ]))
        # One scalar per branch, like Flamingo's attn/ff gates.
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + torch.tanh(self.attn_gate).to(x.dtype) * self.attn(y, y, y, need_weights=False)[0]
        return x + torch.tanh(self.mlp_gate).to(x.dtype) * self.mlp(self.ln_2(x))


def _run_gated_first(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: the host layer's input goes through its gated block.

    Module-level (not a closure) so grown models stay picklable/deep-copyable.
    open_clip calls blocks as ``blk(x, attn_mask=...)`` or, under gradient
    checkpointing, ``checkpoint(blk, x, None, None, attn_mask)``."""
    block = getattr(module, ATTR)
    if args:
        return (block(args[0]),) + tuple(args[1:]), kwargs
    for name in ("q_x", "x"):
        if name in kwargs:
            return args, kwargs | {name: block(kwargs[name])}
    raise TypeError("gated host layer called without its input tensor")


def vision_transformer(model: nn.Module) -> nn.Module:
    """The open_clip VisionTransformer of a CLIP/CustomTextCLIP (or the ViT itself)."""
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", model)
    if not isinstance(visual, VisionTransformer):
        raise ReactError(f"gated blocks need an open_clip VisionTransformer image tower, "
                         f"this model has {type(visual).__name__}")
    return visual


def default_layers(num_layers: int) -> list[int]:
    """The reference placement: the last half of a ViT-B (6 of 12), the last
    quarter of deeper towers (6 of 24 for L/14, 12 of 48 for bigG); small
    towers (the embedded base's 4) get the last half, at least one."""
    count = num_layers // 2 if num_layers <= 12 else num_layers // 4
    count = max(1, count)
    return list(range(num_layers - count, num_layers))


def parse_layers(spec: str | int | Sequence[int] | None, num_layers: int) -> list[int]:
    """``None`` -> default; ``N`` -> the last N host layers; ``"I,J"`` or
    ``"I-J"`` (0-based, negatives count from the end) -> those layers."""
    if spec is None:
        return default_layers(num_layers)
    if isinstance(spec, int):
        spec = str(spec)
    if not isinstance(spec, str):
        layers = [int(i) for i in spec]
    else:
        text = spec.strip()
        if re.fullmatch(r"\d+", text):
            count = int(text)
            if not 1 <= count <= num_layers:
                raise ReactError(f"--gated-layers {text}: the image tower has {num_layers} layers")
            return list(range(num_layers - count, num_layers))
        layers = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            if re.fullmatch(r"-?\d+", part):
                layers.append(int(part))
            elif match := re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part):
                layers.extend(range(int(match.group(1)), int(match.group(2)) + 1))
            else:
                raise ReactError(f"--gated-layers: cannot read {part!r} (use N, I,J,K or I-J)")
    resolved = sorted({i + num_layers if i < 0 else i for i in layers})
    bad = [i for i in resolved if not 0 <= i < num_layers]
    if bad or not resolved:
        raise ReactError(f"--gated-layers {spec}: layer indices must lie in 0..{num_layers - 1}")
    return resolved


def _host_details(host: nn.Module, transformer: nn.Module) -> dict[str, Any]:
    """Width, heads, norm and activation of a host layer, so a block matches it
    (QuickGELU for OpenAI weights, LayerNormFp32 for fp16 builds, ...)."""
    width = int(getattr(transformer, "width", 0) or host.ln_1.normalized_shape[0])
    heads = getattr(host.attn, "num_heads", None)
    if heads is None:
        raise ReactError(f"cannot tell the attention heads of host layer {type(host).__name__}")
    act = type(host.mlp.gelu) if hasattr(host, "mlp") and hasattr(host.mlp, "gelu") else nn.GELU
    norm = type(host.ln_1) if isinstance(host.ln_1, nn.LayerNorm) else nn.LayerNorm
    eps = getattr(host.ln_1, "eps", 1e-5)
    return {"width": width, "heads": int(heads), "norm_layer": norm, "act_layer": act, "norm_eps": eps,
            "batch_first": bool(getattr(transformer, "batch_first", True))}


def insert_gated_blocks(model: nn.Module, layers: str | int | Sequence[int] | None = None,
                        mlp_ratio: float = DEFAULT_MLP_RATIO) -> list[int]:
    """Grow ``model``'s image tower in place: one gated block before each of
    ``layers``; returns the resolved layer indices. New blocks are created on
    the tower's device and dtype; their init draws from torch's global RNG."""
    if not mlp_ratio > 0:
        raise ReactError(f"--mlp-ratio must be positive, got {mlp_ratio}")
    visual = vision_transformer(model)
    transformer = visual.transformer
    resblocks = transformer.resblocks
    chosen = parse_layers(layers, len(resblocks))
    ref = next(visual.parameters())
    for i in chosen:
        host = resblocks[i]
        if hasattr(host, ATTR):
            raise ReactError(f"layer {i} of the image tower already has a gated block")
        block = GatedBlock(mlp_ratio=mlp_ratio, **_host_details(host, transformer)).to(ref.device, ref.dtype)
        host.add_module(ATTR, block)
        host.register_forward_pre_hook(_run_gated_first, with_kwargs=True)
    return chosen


def gated_blocks(model: nn.Module) -> dict[int, GatedBlock]:
    """Host layer index -> its gated block (empty for an ungrown model)."""
    visual = getattr(model, "visual", model)
    transformer = getattr(visual, "transformer", None)
    if transformer is None:
        return {}
    return {i: getattr(blk, ATTR) for i, blk in enumerate(transformer.resblocks) if hasattr(blk, ATTR)}


def is_gated_name(name: str) -> bool:
    return f".{ATTR}." in f".{name}"


def gate_values(model: nn.Module) -> dict[str, list[float]]:
    """``{"layer": [tanh(alpha_attn), tanh(alpha_mlp)]}``: how far each block has opened."""
    return {str(i): [round(float(torch.tanh(b.attn_gate.detach().float()).item()), 6),
                     round(float(torch.tanh(b.mlp_gate.detach().float()).item()), 6)]
            for i, b in gated_blocks(model).items()}


def architecture_config(layers: Iterable[int], mlp_ratio: float) -> dict[str, Any]:
    """What an exported config records so a loader can regrow the blocks."""
    return {"architecture": ARCHITECTURE, "gated": {"layers": sorted(int(i) for i in layers),
                                                    "mlp_ratio": float(mlp_ratio)}}


def apply_architecture(model: nn.Module, react_cfg: dict) -> None:
    """Hook for ``react.models.load_model``: regrow the blocks an exported
    config names, before its weights are loaded (strictly)."""
    gated = react_cfg.get("gated") or {}
    if not gated.get("layers"):
        raise ReactError("customized model config names no gated layers")
    insert_gated_blocks(model, list(gated["layers"]), float(gated.get("mlp_ratio", DEFAULT_MLP_RATIO)))
