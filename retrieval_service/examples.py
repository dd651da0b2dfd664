"""Example images as queries: per class, a few images searched image -> image beside (or instead of) its names.

    plan = plan_queries(spec)          # spec.examples: {class: [jpg/png/webp bytes, ...]}, spec.example_mode
    vecs = encode_examples(model, plan.images, plan.labels[len(plan.texts):])
    examples = read_examples_dir(Path("examples"), classes)   # react retrieve --examples DIR

A task's queries are its text queries (``template.format(class)``, in class
then template order) followed by its example images (class order, then the
order given). In ``mix`` mode every class keeps its text queries; in ``only``
mode a class that has examples is searched by its images alone. Each query
belongs to one class (``QueryPlan.query_class``), which is how their hits are
merged under the class like text-query hits (retrieval_service.merge): a
pair found by both counts once, with its best similarity. An example query is
labelled ``example:<class>#<i>`` in the subset's ``queries`` column.

Images are encoded with the index's own model (as ``react embed`` and the
exclusion sets do), after the same size and pixel checks as an uploaded query
image (retrieval_service.images), and searched on the image index only
(image -> image: no modality-gap shift).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from react.errors import ReactError
from retrieval_service.spec import TaskSpec

EXAMPLE_BATCH = 64  # example images per forward pass
EXAMPLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def example_label(class_name: str, i: int) -> str:
    return f"example:{class_name}#{i}"


@dataclass
class QueryPlan:
    """Every query of a task: text queries first (class names, then aliases), then example images."""

    texts: list[str]
    images: list[bytes]
    labels: list[str]          # one per query: the text itself, or example:<class>#<i>
    query_class: np.ndarray    # int32 [n_queries]: the class each query belongs to
    per_class: np.ndarray      # int64 [n_classes]: queries formed per class
    names: list[tuple[str, int]]  # every searched name and its class (TaskSpec.names)
    query_name: np.ndarray     # int32 [n_queries]: the name a text query searched (index into names); -1: an image

    @property
    def n_queries(self) -> int:
        return len(self.labels)


def plan_queries(spec: TaskSpec) -> QueryPlan:
    only = spec.example_mode == "only"
    names = spec.names()
    texts: list[str] = []
    text_class: list[int] = []
    text_name: list[int] = []
    for g, (name, c) in enumerate(names):
        if only and spec.classes[c] in spec.examples:
            continue
        texts.extend(t.format(name) for t in spec.templates)
        text_class.extend([c] * len(spec.templates))
        text_name.extend([g] * len(spec.templates))
    index = {name: c for c, name in enumerate(spec.classes)}
    images: list[bytes] = []
    labels: list[str] = list(texts)
    image_class: list[int] = []
    for name, raws in spec.examples.items():
        for i, raw in enumerate(raws):
            images.append(raw)
            labels.append(example_label(name, i))
            image_class.append(index[name])
    query_class = np.asarray(text_class + image_class, dtype=np.int32)
    query_name = np.asarray(text_name + [-1] * len(images), dtype=np.int32)
    return QueryPlan(texts, images, labels, query_class, np.bincount(query_class, minlength=len(spec.classes)),
                     names, query_name)


def comparable_stats(stats: list, hits, plan: QueryPlan, spec: TaskSpec) -> tuple[list, list[str]]:
    """Per-class statistics whose similarity figures compare across classes.

    Image -> image similarities run far above text -> image ones (the demo: 0.7-0.85 against ~0.3), so
    a class's coverage and quantiles computed over its example hits would lift it above every class
    without examples and make the low-coverage rule flag those. Here a class that has text queries is
    described by its text hits only (its counts -- hits, unique, exclusive -- still include every
    hit); a class searched by images alone keeps its image figures and is left out of the rule, except
    when it retrieved nothing. ``stats``: class_stats over all hits; ``hits``: the merged task's hits."""
    from retrieval_service.coverage import class_stats, flag_low_coverage
    from retrieval_service.merge import merge

    by_text = hits.select(hits.query < len(plan.texts))
    text_only = merge(by_text, 1, plan.n_queries, False, plan.query_class)
    raw = np.bincount(plan.query_class[by_text.query], minlength=len(spec.classes))
    text_stats, _ = class_stats(text_only, spec.classes, plan.per_class, raw, spec.coverage_margin)
    has_text = np.bincount(plan.query_class[: len(plan.texts)], minlength=len(spec.classes)) > 0
    for c, (s, t) in enumerate(zip(stats, text_stats)):
        if has_text[c]:
            s.coverage, s.p10, s.p50, s.p90, s.max = t.coverage, t.p10, t.p50, t.p90, t.max
        s.low_coverage = False
    exempt = frozenset(name for c, name in enumerate(spec.classes) if not has_text[c])
    return stats, flag_low_coverage(stats, spec.coverage_margin, exempt)


def decode_example(raw: bytes, label: str):
    """An RGB PIL image from one example's bytes; ReactError naming the example when it is no usable image."""
    from retrieval_service.config import config_default
    from retrieval_service.errors import ServiceError
    from retrieval_service.images import open_image

    try:
        return open_image(raw, config_default("max_image_bytes"), config_default("max_image_pixels"))
    except ServiceError as exc:
        raise ServiceError(f"{label}: {exc}", exc.status) from None


def check_examples(spec: TaskSpec) -> None:
    """Decode every example once, so a bad one is refused with the request instead of failing its job."""
    for name, raws in spec.examples.items():
        for i, raw in enumerate(raws):
            decode_example(raw, example_label(name, i))


def encode_examples(model, images: list[bytes], labels: list[str], batch: int = EXAMPLE_BATCH) -> np.ndarray:
    """Unit image embeddings [n, d] of the example images, ``batch`` per forward pass."""
    import torch

    if model is None:
        raise ReactError("example images need the index's model to embed them, and none is loaded")
    out = []
    for lo in range(0, len(images), batch):
        pics = [decode_example(raw, label) for raw, label in zip(images[lo : lo + batch], labels[lo : lo + batch])]
        with torch.inference_mode():
            out.append(model.encode_images(torch.stack([model.preprocess(p) for p in pics])).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.embed_dim), np.float32)


def read_examples_dir(root: Path, classes: list[str]) -> dict[str, list[bytes]]:
    """``root/<class name>/*.{jpg,jpeg,png,webp}`` -> {class: [bytes, ...]} (files in name order).

    Every image is decoded here, so a bad file is named before any search (or upload) starts."""
    if not root.is_dir():
        raise ReactError(f"--examples {root}: not a folder")
    known = {" ".join(c.split()) for c in classes}
    out: dict[str, list[bytes]] = {}
    for folder in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not folder.is_dir():
            raise ReactError(f"--examples: {folder} is not a class folder (expected {root}/<class name>/)")
        name = " ".join(folder.name.split())
        if name not in known:
            raise ReactError(f"--examples: folder {folder} names no class of the task (see --classes)")
        files = sorted(f for f in folder.iterdir() if not f.name.startswith("."))
        if not files:
            raise ReactError(f"--examples: folder {folder} holds no image")
        raws = read_example_files(files, "--examples")
        out[name] = raws
    if not out:
        raise ReactError(f"--examples {root}: no class folder inside")
    return out


def read_example_files(files: list[Path], what: str) -> list[bytes]:
    """The bytes of example image ``files``, each checked to be a jpg/png/webp that decodes; ReactError
    prefixed with ``what`` (the option or file that named them) naming the first bad one."""
    raws = []
    for f in files:
        if f.suffix.lower() not in EXAMPLE_EXTENSIONS or not f.is_file():
            raise ReactError(f"{what}: {f} is not a jpg, png or webp image")
        try:
            raw = f.read_bytes()
        except OSError as exc:
            raise ReactError(f"{what}: cannot read {f}: {exc.__class__.__name__}") from None
        try:
            decode_example(raw, str(f))
        except ReactError as exc:
            raise ReactError(f"{what}: {exc}") from None
        raws.append(raw)
    return raws


def dataset_examples(dataset: str | Path, split: str, k: int) -> dict[str, list[Path]]:
    """The first ``k`` images of each class of a classification dataset's ``split`` (react.datasets),
    e.g. a task's validation half -- examples taken from a split that is not scored."""
    from react.datasets import build_classification_dataset

    ds = build_classification_dataset(str(dataset), split)
    out: dict[str, list[Path]] = {}
    for path, label in zip(ds.paths, ds.labels):
        chosen = out.setdefault(ds.classnames[label], [])
        if len(chosen) < k:
            chosen.append(Path(path))
    return out


def write_examples_dir(examples: dict[str, list[Path]], out: Path) -> Path:
    """``examples`` in the folder form ``react retrieve --examples DIR`` reads (written atomically)."""
    from react.schemas import atomic_dir

    with atomic_dir(out) as tmp:
        for name, paths in examples.items():
            (tmp / name).mkdir(parents=True)
            for i, path in enumerate(paths):
                (tmp / name / f"{i}{path.suffix.lower()}").write_bytes(path.read_bytes())
    return out

