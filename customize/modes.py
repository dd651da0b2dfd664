"""Which parameters train in each customization mode (REACT Table 2.6).

- ``gated-image`` (default): only the new gated blocks; every base weight frozen.
- ``locked-text``: the whole image tower (no new blocks), text frozen.
- ``locked-image``: the text tower (LiT's mirror image), image frozen.
- ``full``: everything.

``logit_scale`` (and SigLIP's ``logit_bias``) train only when asked: the base's
temperature is part of what it learned, and a tiny retrieved set can drive it
to the clamp.
"""
from __future__ import annotations

from torch import nn

from customize.constants import MODES
from customize.gated import is_gated_name
from react.errors import ReactError

TEMPERATURE_PARAMS = ("logit_scale", "logit_bias")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ReactError(f"unknown --mode {mode!r} (choose from {', '.join(MODES)})")
    return mode


def uses_gated_blocks(mode: str) -> bool:
    return check_mode(mode) == "gated-image"


def text_frozen(mode: str) -> bool:
    """Text embeddings of the captions never change: they can be cached."""
    return check_mode(mode) in ("gated-image", "locked-text")


def image_frozen(mode: str) -> bool:
    return check_mode(mode) == "locked-image"


def _trains(name: str, mode: str, train_logit_scale: bool) -> bool:
    if name in TEMPERATURE_PARAMS:
        return train_logit_scale
    is_image = name.startswith("visual.")
    if mode == "gated-image":
        return is_gated_name(name)
    if mode == "locked-text":
        return is_image
    if mode == "locked-image":
        return not is_image
    return True  # full


def apply_mode(model: nn.Module, mode: str, train_logit_scale: bool = False) -> list[str]:
    """Set ``requires_grad`` per the mode; returns the trainable parameter
    names (state-dict names, what a checkpoint stores)."""
    check_mode(mode)
    trainable = []
    for name, param in model.named_parameters():
        on = _trains(name, mode, train_logit_scale)
        param.requires_grad_(on)
        if on:
            trainable.append(name)
    if not trainable:
        raise ReactError(f"mode {mode} leaves nothing to train in this model"
                         + (" (no gated blocks inserted)" if mode == "gated-image" else ""))
    return trainable


def set_train_mode(model: nn.Module, mode: str) -> None:
    """Train mode for towers that learn, eval for frozen ones: a frozen HF
    text tower must not run its dropout (its embeddings are cached once)."""
    model.eval()
    visual = getattr(model, "visual", None)
    if not image_frozen(mode) and visual is not None:
        visual.train()
    if not text_frozen(mode):
        for name, child in model.named_children():
            if name != "visual":
                child.train()
