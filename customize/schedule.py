"""Optimizer and learning-rate schedule of the REACT recipe.

AdamW with beta = (0.9, 0.98), eps = 1e-6 (CLIP's); no weight decay on
gains, biases, norms, gate scalars and the temperature -- decaying a gate
would pull it back towards closed. The gate scalars may get their own
(larger) learning rate: they start at 0 and at the block lr barely open in a
short run (|tanh alpha| ~ 0.1 after 200 steps at 1e-3).
"""
from __future__ import annotations

import math

import torch
from torch import nn

BETAS = (0.9, 0.98)
EPS = 1e-6
GATE_PARAMS = ("attn_gate", "mlp_gate")


def is_gate(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in GATE_PARAMS


def decays(name: str, param: torch.Tensor) -> bool:
    """Matrices decay; gains, biases, norms, gates, embeddings' scalars do not."""
    return param.ndim >= 2 and "ln_" not in name and "norm" not in name and not name.endswith(("logit_scale",
                                                                                               "logit_bias"))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, gate_lr: float | None = None
                    ) -> torch.optim.AdamW:
    """Param groups: decay / no decay / gates (own lr when ``gate_lr``).
    Group order and membership follow ``named_parameters`` order, so a resumed
    optimizer state lines up with the same parameters."""
    groups: dict[str, list[torch.Tensor]] = {"decay": [], "no_decay": [], "gates": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_gate(name):
            groups["gates"].append(param)
        elif decays(name, param):
            groups["decay"].append(param)
        else:
            groups["no_decay"].append(param)
    spec = [
        {"params": groups["decay"], "weight_decay": weight_decay, "lr": lr, "name": "decay"},
        {"params": groups["no_decay"], "weight_decay": 0.0, "lr": lr, "name": "no_decay"},
        {"params": groups["gates"], "weight_decay": 0.0, "lr": gate_lr or lr, "name": "gates"},
    ]
    kept = [g for g in spec if g["params"]]
    # One fused kernel per step on CUDA (same update within float rounding); torch's default elsewhere.
    fused = all(p.is_cuda for g in kept for p in g["params"]) or None
    return torch.optim.AdamW(kept, lr=lr, betas=BETAS, eps=EPS, fused=fused)


def warmup_cosine(warmup: int, total: int):
    """Linear warmup over ``warmup`` steps to the peak, then cosine to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total))
