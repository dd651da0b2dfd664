"""Dense per-patch features in the joint image-text space, the MaskCLIP way.

CLIP's image tower pools one token (the class token after the last block's
attention). MaskCLIP (Zhou et al., ECCV 2022) gets a feature per patch by
running the tower normally up to the last block and, in that block, replacing
query-key attention by the value path: each patch keeps its own value
projection, through the attention's output projection, then the final norm
and the visual projection that the pooled token goes through.

What the last block keeps (``mode``):

- ``"maskclip"`` (default): what MaskCLIP's released ViT code computes:
  ``v = out_proj(v_proj(ln_1(x))); v = x + v; v = v + mlp(ln_2(v))`` (layer
  scales included). It is the last block with attention collapsed to "each
  token attends to itself only", so when every token entering the block is
  the same, every patch gets exactly the pooled embedding (the property the
  tests pin).
- ``"value"``: the paper's 1x1-convolution reading: ``out_proj(v_proj(ln_1(x)))``
  alone, no residual and no MLP. Noisier residual stream left out; kept as an
  option because later work (ClearCLIP, SCLIP) found it sometimes localizes better.
- ``"tokens"``: the last block as it runs, attention included: the tower's own
  output patch tokens. For towers trained to make those say what they cover
  (the embedded base's mosaic loss, avg-pooled towers); in CLIP-trained towers
  attention mixes them globally, which is why MaskCLIP drops it.

Everything before the last block runs through the modules themselves
(``block(x)``), so forward pre-hooks fire: customize/gated.py runs its gated
blocks as pre-hooks on resblocks. The last block's own pre-hooks (a gated
block placed before it) are applied too, by capturing the input its hooks
produce instead of re-implementing them.

Larger or non-square inputs work: the positional embedding is resized
(bicubic over the patch grid, class position kept) to the input's grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from downstream.defaults import DENSE_MODES
from react.errors import ReactError

Mode = Literal["maskclip", "value", "tokens"]


@dataclass
class DenseOutput:
    """``features``: [B, h, w, D] L2-normalized joint-space patch features;
    ``keys``: [B, h, w, width] the last block's key projections (for
    MaskCLIP's key smoothing), or None when not asked for."""

    features: torch.Tensor
    keys: torch.Tensor | None = None


class _Captured(Exception):
    """Raised by a temporary pre-hook to stop a block once its input is known."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.x = x


def vision_tower(model: nn.Module) -> nn.Module:
    """The open_clip VisionTransformer of a LoadedModel / CLIP / the tower itself,
    or ReactError for towers the value path is not defined for."""
    from open_clip.transformer import VisionTransformer

    module = getattr(model, "model", model)  # LoadedModel -> nn.Module
    visual = getattr(module, "visual", module)
    if not isinstance(visual, VisionTransformer):
        raise ReactError(f"dense features need an open_clip VisionTransformer image tower, "
                         f"this model has {type(visual).__name__}")
    if getattr(visual, "attn_pool", None) is not None:
        # CoCa-style attentional pooling: the pooled embedding is a learned
        # query over the tokens, so no per-token path lands in the joint space.
        raise ReactError("dense features: image towers with attentional pooling (attn_pool, e.g. CoCa) "
                         "are not supported")
    last = visual.transformer.resblocks[-1]
    attn = getattr(last, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
        raise ReactError(f"dense features: the last image block has no packed nn.MultiheadAttention "
                         f"({type(attn).__name__})")
    if hasattr(last, "ln_1_kv"):
        raise ReactError("dense features: cross-attention image blocks are not supported")
    return visual


def _positional(visual: nn.Module, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """The positional embedding for a ``grid`` of patches (class position first)."""
    pos = visual.positional_embedding.to(dtype)
    trained = tuple(int(g) for g in visual.grid_size)
    if grid == trained:
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    if patch_pos.shape[0] != trained[0] * trained[1]:
        raise ReactError(f"dense features: positional embedding has {patch_pos.shape[0]} patch positions, "
                         f"not the {trained[0]}x{trained[1]} grid")
    # Interpolate in float32: bicubic in half precision is not available everywhere.
    grid_pos = patch_pos.float().reshape(1, trained[0], trained[1], -1).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos, size=grid, mode="bicubic", align_corners=False)
    patch_pos = grid_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(dtype)
    return torch.cat([cls_pos, patch_pos])


def _block_input(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` after ``block``'s forward pre-hooks (its gated block, if any),
    without running the block itself."""
    def capture(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _Captured(args[0] if args else kwargs.get("q_x", kwargs.get("x")))

    # Appended last, so every existing pre-hook has already rewritten the input.
    handle = block.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        block(x, attn_mask=None)
    except _Captured as captured:
        return captured.x
    finally:
        handle.remove()
    raise AssertionError("forward pre-hook did not fire")


def check_dense_mode(mode: str) -> None:
    """One line naming the valid readouts, before any work is done."""
    if mode not in DENSE_MODES:
        raise ReactError(f"unknown --dense-mode {mode!r} (choose from {', '.join(DENSE_MODES)})")


def _projection(block: nn.Module, x: torch.Tensor, part: int) -> torch.Tensor:
    """The last block's key (part 1) or value (part 2) projection of ``x``."""
    attn: nn.MultiheadAttention = block.attn
    width = x.shape[-1]
    rows = slice(part * width, (part + 1) * width)
    bias = attn.in_proj_bias[rows] if attn.in_proj_bias is not None else None
    return F.linear(block.ln_1(x), attn.in_proj_weight[rows], bias)


def _value_path(block: nn.Module, x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token output of the last block without q-k attention, its keys)."""
    keys = _projection(block, x, 1)
    v = block.attn.out_proj(_projection(block, x, 2))
    if mode == "value":
        return v, keys
    ls_1 = getattr(block, "ls_1", nn.Identity())
    ls_2 = getattr(block, "ls_2", nn.Identity())
    out = x + ls_1(v)
    return out + ls_2(block.mlp(block.ln_2(out))), keys


@torch.inference_mode()
def dense_outputs(model: nn.Module, images: torch.Tensor, mode: Mode = "maskclip",
                  with_keys: bool = False) -> DenseOutput:
    """Preprocessed images [B, 3, H, W] -> per-patch joint-space features
    (and optionally the last block's keys), on CPU in float32.

    ``model``: a LoadedModel, an open_clip CLIP, or its VisionTransformer.
    H and W need not match the model's image size; a border smaller than a
    patch is dropped (conv1's stride)."""
    if mode not in DENSE_MODES:  # (the library's own wording; the CLIs check first with check_dense_mode)
        raise ReactError(f"dense features: unknown mode {mode!r} (choose from {', '.join(DENSE_MODES)})")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ReactError(f"dense features: expected images [B, 3, H, W], got {tuple(images.shape)}")
    visual = vision_tower(model)
    ref = visual.conv1.weight
    patch = visual.conv1.kernel_size
    if images.shape[2] < patch[0] or images.shape[3] < patch[1]:
        raise ReactError(f"dense features: images {images.shape[2]}x{images.shape[3]} are smaller "
                         f"than one {patch[0]}x{patch[1]} patch")
    x = visual.conv1(images.to(ref.device, ref.dtype))  # [B, width, h, w]
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + _positional(visual, grid, x.dtype)
    # No patch dropout (even in train mode): every patch needs its feature.
    x = visual.ln_pre(x)

    transformer = visual.transformer
    batch_first = bool(getattr(transformer, "batch_first", True))
    if not batch_first:
        x = x.transpose(0, 1)
    blocks = transformer.resblocks
    for block in blocks[:-1]:
        x = block(x, attn_mask=None)
    x = _block_input(blocks[-1], x)
    # forward(), not the module call: the block's pre-hooks (a gated block) have already run
    full = blocks[-1].forward(x, attn_mask=None) if mode == "tokens" else None
    if not batch_first:
        x = x.transpose(0, 1)
        full = full.transpose(0, 1) if full is not None else None
    # The value path is per token; the class token is dropped afterwards.
    if full is not None:
        tokens, keys = full, _projection(blocks[-1], x, 1)
    else:
        tokens, keys = _value_path(blocks[-1], x, mode)
    tokens = visual.ln_post(tokens[:, 1:])
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    feats = F.normalize(tokens.float(), dim=-1).reshape(x.shape[0], grid[0], grid[1], -1).cpu()
    key_grid = keys[:, 1:].float().reshape(x.shape[0], grid[0], grid[1], -1).cpu() if with_keys else None
    return DenseOutput(feats, key_grid)


def dense_features(model: nn.Module, images: torch.Tensor, mode: Mode = "maskclip") -> torch.Tensor:
    """[B, 3, H, W] preprocessed images -> [B, h, w, D] L2-normalized patch
    features in the joint embedding space (h, w = the patch grid), on CPU."""
    return dense_outputs(model, images, mode=mode).features


def patch_grid(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The (h, w) patch grid an H x W input gives."""
    ph, pw = vision_tower(model).conv1.kernel_size
    return height // ph, width // pw


def round_to_patches(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The nearest size (at least one patch) that is a whole number of patches."""
    ph, pw = vision_tower(model).conv1.kernel_size
    return max(ph, ph * round(height / ph)), max(pw, pw * round(width / pw))


def tower_size(model: nn.Module) -> int:
    """The square image size the tower was trained at."""
    size = vision_tower(model).image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
