"""Zero-shot classification: score images against prompt-ensemble class embeddings."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from react.datasets import ClassificationDataset
from downstream.defaults import DEFAULT_BATCH_SIZE
from downstream.tasks.metrics import mean_per_class_recall, per_class_recall, topk_accuracy
from react.templates import DEFAULT_TEMPLATES, describe_templates, get_templates
from react.errors import ReactError
from react.loading import LoadFailure, check_batch, collate, guarded
from react.models import LoadedModel
from react.progress import console, progress

TOP_K = 5


class _Preprocessed(Dataset):
    """Decode + model transform inside the loader (and so inside its workers)."""

    def __init__(self, dataset: ClassificationDataset, preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.dataset = dataset
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | LoadFailure:
        def load() -> tuple[torch.Tensor, int]:
            image, label = self.dataset[index]
            return self.preprocess(image), label

        return guarded(load)


def resolve_templates(
    dataset: ClassificationDataset, templates: str | Sequence[str] | None
) -> tuple[list[str], str]:
    """An explicit choice wins; else the dataset's own prompts; else the ImageNet 80."""
    if templates is not None:
        return get_templates(templates), describe_templates(templates)
    if dataset.templates:
        return list(dataset.templates), f"{dataset.name} (dataset's own)"
    return get_templates(DEFAULT_TEMPLATES), DEFAULT_TEMPLATES


def class_embeddings(model: LoadedModel, classnames: Sequence[str], templates: Sequence[str],
                     prompts_per_step: int = 512) -> torch.Tensor:
    """``model.class_embeddings`` a few classes at a time, under a progress bar:
    the 80-prompt ensemble is the slow part of a CPU evaluation."""
    step = max(1, prompts_per_step // max(1, len(templates)))
    chunks = []
    with progress() as bar:
        task = bar.add_task("encoding class prompts", total=len(classnames), unit="class")
        for start in range(0, len(classnames), step):
            chunk = classnames[start : start + step]
            chunks.append(model.class_embeddings(chunk, templates))
            bar.advance(task, len(chunk))
    return torch.cat(chunks)


def encode_dataset(
    model: LoadedModel, dataset: ClassificationDataset, batch_size: int = DEFAULT_BATCH_SIZE, num_workers: int = 0,
    description: str = "encoding images",
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images -> ([N, D] normalized features, [N] labels), in dataset order."""
    if batch_size < 1:
        raise ReactError(f"--batch-size must be >= 1, got {batch_size}")
    loader = DataLoader(
        _Preprocessed(dataset, model.preprocess), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=collate, pin_memory=model.device.type == "cuda",
        persistent_workers=False,
    )
    features, labels = [], []
    with progress() as bar:
        task = bar.add_task(description, total=len(dataset), unit="img")
        for images, batch_labels in map(check_batch, loader):
            features.append(model.encode_images(images))
            labels.append(batch_labels)
            bar.advance(task, len(batch_labels))
    return torch.cat(features), torch.cat(labels)


def evaluate_zeroshot(
    model: LoadedModel,
    dataset: ClassificationDataset,
    templates: str | Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int = 0,
) -> dict:
    """Zero-shot top-1/top-5/mean per-class recall of ``model`` on ``dataset``.

    ``templates``: a set name, a file, or a list; None uses the dataset's own
    prompts if it has them (CLIP_benchmark), else the 80 ImageNet prompts.
    Returns the result dict of the CLI contract (``react eval``)."""
    if len(dataset) == 0:
        raise ReactError(f"dataset {dataset.name} has no images")
    prompts, label = resolve_templates(dataset, templates)
    num_classes = len(dataset.classnames)
    console.log(f"zero-shot: {len(dataset)} images, {num_classes} classes, "
                f"{len(prompts)} templates ({label})")
    class_emb = class_embeddings(model, dataset.classnames, prompts)  # [C, D]
    features, labels = encode_dataset(model, dataset, batch_size, num_workers)
    # Cosine similarity; CLIP's logit scale does not change the ranking.
    logits = features @ class_emb.T
    preds = logits.argmax(dim=1)
    metrics = {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, min(TOP_K, num_classes)),
        "mean_per_class_recall": mean_per_class_recall(preds, labels, num_classes),
        "num_images": int(len(labels)),
        "num_classes": int(num_classes),
    }
    return {
        "task": "zeroshot",
        "model": model.name,
        "dataset": dataset.name,
        "metrics": metrics,
        "per_class": per_class_recall(preds, labels, num_classes, dataset.classnames),
        # per image, in dataset order: what intervals over images are computed from (downstream.report.intervals)
        "per_image": {"label": labels.tolist(), "prediction": preds.tolist()},
    }
