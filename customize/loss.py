"""REACT's bidirectional contrastive loss (paper eq. 2.4-2.6).

Within a batch, pair ``k`` is a positive of pair ``i`` when their caption
embeddings agree, ``v_k . v_i >= gamma``: retrieved pairs for one class often
carry (nearly) the same text, and CLIP's one-to-one targets would push those
images apart. Each direction averages the log-likelihood over its positives:

    L_i2t = -mean_i 1/|P(i)| sum_{k in P(i)} log softmax_j(tau u_i.v_j)[k]
    L_t2i = -mean_j 1/|Q(j)| sum_{k in Q(j)} log softmax_i(tau u_i.v_j)[k]

gamma = 1 keeps only identical captions (UniCL); with all captions distinct
it is exactly CLIP's loss. We return (L_i2t + L_t2i) / 2 -- open_clip's
ClipLoss convention -- where the paper writes the sum; the factor 2 does not
change what is learned (Adam is invariant to it up to epsilon).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from customize.constants import DEFAULT_GAMMA  # the paper's 0.9

_TOLERANCE = 1e-6  # identical captions give 0.99999994, not 1.0


def positives(text: torch.Tensor, gamma: float, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean [B, B]: caption cosine >= gamma (text rows L2-normalized), or
    the same sample id (one image under two captions). Always has the diagonal."""
    text = text.float()
    pos = text @ text.T >= gamma - _TOLERANCE
    if ids is not None:
        pos |= ids[:, None] == ids[None, :]
    pos |= torch.eye(len(text), dtype=torch.bool, device=text.device)
    return pos


def react_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, gamma: float = DEFAULT_GAMMA,
               ids: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of L2-normalized image and text features [B, D] (row i is pair i);
    ``logit_scale`` is tau (already exponentiated)."""
    pos = positives(text.detach(), gamma, ids)
    targets = pos.float() / pos.sum(dim=1, keepdim=True)  # P is symmetric: Q(j) = P(j)
    logits = logit_scale * image.float() @ text.float().T
    i2t = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    t2i = -(targets * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (i2t + t2i)


def gather(features: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Concatenate every process's rows (rank order), keeping this process's
    gradient path when ``with_grad``: negatives then span the global batch,
    as in open_clip's ``gather_with_grad``. Identity on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(features), dim=0)
    parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, features.contiguous())
    return torch.cat(parts, dim=0)
