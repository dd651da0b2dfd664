"""A cheaper training step: ``torch.compile`` of the image tower, with a clean way back.

``nn.Module.compile`` compiles in place, so parameter and state-dict names stay
what checkpoints store (``torch.compile(module)`` would prefix ``_orig_mod.``).
Compilation happens on the first call; when it fails there (no C compiler,
an unsupported op, an old GPU) the trainer calls :func:`uncompile` and runs
that step again eagerly -- nothing has been updated yet, so the run is the one
it would have been without ``--compile``.

Other pieces of the cheaper step live where they act: fused AdamW on CUDA
(customize.schedule), bf16 autocast (customize.train), attention through
``scaled_dot_product_attention`` (nn.MultiheadAttention's path with
``need_weights=False``, which both open_clip's host layers and the gated blocks
take). Layers below the first gated block already run without autograd
records: nothing there requires grad, so autograd saves no tensor for them
(tests/test_gpu_batch.py counts them).
"""
from __future__ import annotations

import torch
from torch import nn


def compile_module(module: nn.Module, **options) -> bool:
    """Compile ``module``'s forward in place (lazily, at its first call); False
    when this torch has no ``nn.Module.compile``."""
    if not hasattr(module, "compile"):
        return False
    module.compile(**options)
    return True


def uncompile(module: nn.Module) -> None:
    """Back to the eager forward."""
    if getattr(module, "_compiled_call_impl", None) is not None:
        module._compiled_call_impl = None
    torch._dynamo.reset()


def compile_failed(exc: BaseException) -> bool:
    """Whether ``exc`` came out of dynamo/inductor (not out of the model itself)."""
    mod = type(exc).__module__ or ""
    text = f"{mod} {exc}"
    return any(s in text for s in ("torch._dynamo", "torch._inductor", "BackendCompilerFailed", "InductorError",
                                   "dynamo"))
