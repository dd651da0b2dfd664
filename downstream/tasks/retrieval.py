"""Image-text retrieval: recall@k both ways on a captioned image set.

Image -> text: a hit at k when any of the image's captions is among the k
captions scored highest for it. Text -> image: a hit at k when the caption's
own image is among the k images scored highest for it. Ties count against the
model (a rival scoring as high as the right answer, within float noise, ranks
above it), so a collapsed model cannot score well through ties, and duplicate
images rank the same however the similarity matrix is chunked.
"""
from __future__ import annotations

from typing import Sequence

import torch

from downstream.data.captioned import CaptionedDataset
from downstream.defaults import DEFAULT_BATCH_SIZE
from react.errors import ReactError
from react.models import LoadedModel
from react.progress import console, progress

KS = (1, 5, 10)
CHUNK = 1024  # rows of the similarity matrix at a time: COCO's 5k x 25k stays small
# Cosines of float32 unit vectors: equal inputs can differ in the last bits
# depending on the matmul's shape, so "as high as" allows this much.
TIE_EPS = 1e-6


def image_to_text_ranks(sim: torch.Tensor, image_ids: torch.Tensor, text_owner: torch.Tensor) -> torch.Tensor:
    """For rows ``sim`` [n, T] of images ``image_ids``: how many captions of
    other images score at least as high as the image's best own caption."""
    own = text_owner[None, :] == image_ids[:, None]
    if not bool(own.any(dim=1).all()):
        raise ReactError("an image has no caption")  # CaptionedDataset rules this out
    best_own = torch.where(own, sim, torch.full_like(sim, -torch.inf)).max(dim=1).values
    return ((sim >= best_own[:, None] - TIE_EPS) & ~own).sum(dim=1)


def text_to_image_ranks(sim: torch.Tensor, own_image: torch.Tensor) -> torch.Tensor:
    """For rows ``sim`` [m, I] of captions whose images are ``own_image``: how
    many other images score at least as high as the caption's own image."""
    own_score = sim.gather(1, own_image[:, None])
    return (sim >= own_score - TIE_EPS).sum(dim=1) - 1


def recall_at_k(sim: torch.Tensor, text_owner: Sequence[int] | torch.Tensor,
                ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k both ways for an [images, texts] similarity matrix, where
    ``text_owner[j]`` is the image of caption j. Keys as in the result JSON."""
    sim = torch.as_tensor(sim, dtype=torch.float32)
    owner = torch.as_tensor(text_owner, dtype=torch.long)
    if sim.dim() != 2 or sim.shape[1] != len(owner):
        raise ValueError(f"similarity {tuple(sim.shape)} does not match {len(owner)} captions")
    i2t = image_to_text_ranks(sim, torch.arange(sim.shape[0]), owner)
    t2i = text_to_image_ranks(sim.T, owner)
    return _recalls(i2t, t2i, ks)


def _recalls(i2t: torch.Tensor, t2i: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    out = {f"image_to_text_R@{k}": float((i2t < k).double().mean()) for k in ks}
    out.update({f"text_to_image_R@{k}": float((t2i < k).double().mean()) for k in ks})
    return out


@torch.inference_mode()
def encode_captions(model: LoadedModel, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """All captions -> [T, D] normalized features, under a progress bar."""
    chunks = []
    with progress() as bar:
        task = bar.add_task("encoding captions", total=len(texts), unit="text")
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            chunks.append(model.encode_texts(chunk, batch_size=batch_size))
            bar.advance(task, len(chunk))
    return torch.cat(chunks)


def evaluate_retrieval(model: LoadedModel, dataset: CaptionedDataset, batch_size: int = DEFAULT_BATCH_SIZE,
                       num_workers: int = 0, ks: Sequence[int] = KS, chunk: int = CHUNK) -> dict:
    """Recall@k of ``model`` on ``dataset``: the result dict of the ``react eval`` contract.

    ``per_class``: image->text R@1 per category when the images have labels
    (the embedded corpus), else empty."""
    from downstream.tasks.zeroshot import encode_dataset

    if len(dataset) == 0:
        raise ReactError(f"dataset {dataset.name} has no images")
    texts, owners = dataset.flat_captions()
    console.log(f"retrieval: {len(dataset)} images, {len(texts)} captions")
    # encode_dataset only needs (image, int) items; ours carry the image index.
    image_feats, order = encode_dataset(model, dataset, batch_size, num_workers)  # type: ignore[arg-type]
    if not torch.equal(order, torch.arange(len(dataset))):
        raise AssertionError("images came back out of order")
    text_feats = encode_captions(model, texts)
    owner = torch.as_tensor(owners, dtype=torch.long)
    i2t = torch.cat([
        image_to_text_ranks(image_feats[s : s + chunk] @ text_feats.T,
                            torch.arange(s, min(s + chunk, len(dataset))), owner)
        for s in range(0, len(dataset), chunk)])
    t2i = torch.cat([text_to_image_ranks(text_feats[s : s + chunk] @ image_feats.T, owner[s : s + chunk])
                     for s in range(0, len(texts), chunk)])
    metrics: dict[str, float | int] = _recalls(i2t, t2i, ks)
    metrics.update({"num_images": len(dataset), "num_captions": len(texts)})
    per_class: dict[str, float] = {}
    if dataset.labels is not None and dataset.classnames is not None:
        labels = torch.as_tensor(dataset.labels)
        for c, name in enumerate(dataset.classnames):
            mask = labels == c
            if bool(mask.any()):
                per_class[name] = float((i2t[mask] < 1).double().mean())
    return {
        "task": "retrieval",
        "model": model.name,
        "dataset": dataset.name,
        "metrics": metrics,
        "per_class": per_class,
        "per_class_metric": "image_to_text_R@1" if per_class else None,
    }
