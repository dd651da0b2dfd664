"""Calibrate the decontamination threshold (``react retrieve --exclude``) on planted copies.

Every held-out image of an evaluation dataset gets planted copies of the kinds
web corpora hold -- resized, re-encoded as a poor JPEG, cropped, mirrored,
recoloured -- and each copy's cosine similarity to its original is measured
with the index's model (``exclude.embed_dataset`` embeds the same way). The
negatives are *distinct* images of the same class: each image's best
similarity to another image of its class. A threshold must sit above every
negative and below every copy.

The exclusion set holds every view ``exclude.views`` embeds (the image and
its mirror), so a copy's similarity is its best over its original's views,
and a negative's is its best over the other same-class images' views.

Protocol: the dataset's own validation and test splits when it has both (the
embedded task's halves, react.datasets), else halves of a seeded permutation.
The threshold is chosen on the validation part only -- the lowest value (to 0.01) at which at
most 1 % of distinct same-class images would be dropped (a filter that eats
the task's own training data is worse than none) -- and the catch rate per
kind and the share of distinct images dropped are reported on the untouched
test half. Also printed: the share of the retrieval pool that the whole
dataset would remove at that threshold (what a run of the demo drops).

    .venv/bin/python benchmarks/decontam_calibrate.py --dataset ~/.cache/react/corpus/embedded-v3 \\
        --model out/demo/base --json docs/decontam.json
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("resized", "jpeg", "cropped", "mirrored", "recoloured")


def plant(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One copy of ``img`` of the given kind."""
    w, h = img.size
    if kind == "resized":
        f = rng.choice([0.5, 0.75, 1.5])
        return img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.BICUBIC)
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(15, 40)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "cropped":
        keep = rng.uniform(0.8, 0.9)  # of each side, at a random offset
        cw, ch = int(w * keep), int(h * keep)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x, y, x + cw, y + ch))
    if kind == "mirrored":
        return ImageOps.mirror(img)
    if kind == "recoloured":
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(15, 40))) % 256  # hue turned 20-55 degrees
        return Image.fromarray(hsv, "HSV").convert("RGB")
    raise ValueError(kind)


def embed(model, images: list[Image.Image], batch: int = 64) -> np.ndarray:
    import torch

    out = []
    for lo in range(0, len(images), batch):
        out.append(model.encode_images(torch.stack([model.preprocess(im) for im in images[lo:lo + batch]])).numpy())
    return np.concatenate(out).astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="an evaluation dataset (any form react eval reads)")
    p.add_argument("--model", required=True, help="the index's model")
    p.add_argument("--pool", default=None, help="optional: an embedding folder (react embed) whose image side is "
                                                "checked for how much the dataset would remove")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from react.models import load_model
    from retrieval_service.exclude import open_all_splits

    t0 = time.perf_counter()
    model = load_model(args.model, device="cpu")
    rng = np.random.default_rng(args.seed)
    images, labels, part = [], [], []
    for ds in open_all_splits(args.dataset):
        for i in range(len(ds)):
            images.append(ds.load_image(i))
            labels.append(ds.labels[i])
            part.append(ds.name.rsplit(":", 1)[-1])
    labels, part = np.array(labels), np.array(part)
    from retrieval_service.exclude import views

    view_vecs = [embed(model, v) for v in views(images)]  # what the exclusion set holds, per view
    base = view_vecs[0]
    copies = {k: embed(model, [plant(im, k, rng) for im in images]) for k in KINDS}
    pos = {k: np.max([np.einsum("nd,nd->n", vv, v) for vv in view_vecs], axis=0) for k, v in copies.items()}
    sims = np.max([base @ vv.T for vv in view_vecs], axis=0)  # image i vs every view of image j
    np.fill_diagonal(sims, -np.inf)
    same = labels[:, None] == labels[None, :]
    neg = np.where(same, sims, -np.inf).max(axis=1)  # best distinct image of the same class
    any_other = sims.max(axis=1)

    if {"val", "test"} <= set(part):
        val, test, split_rule = np.flatnonzero(part == "val"), np.flatnonzero(part == "test"), "the dataset's val/test"
    else:
        order = rng.permutation(len(images))
        val, test, split_rule = order[: len(order) // 2], order[len(order) // 2:], f"seeded halves (seed {args.seed})"
    threshold = round(float(np.ceil(np.quantile(neg[val][np.isfinite(neg[val])], 0.99) * 100) / 100), 2)

    def rates(idx: np.ndarray) -> dict:
        return {"caught": {k: round(float((pos[k][idx] >= threshold).mean()), 4) for k in KINDS},
                "copy_similarity_min": {k: round(float(pos[k][idx].min()), 4) for k in KINDS},
                "copy_similarity_p05": {k: round(float(np.quantile(pos[k][idx], 0.05)), 4) for k in KINDS},
                "distinct_same_class_dropped": round(float((neg[idx] >= threshold).mean()), 4),
                "distinct_any_class_dropped": round(float((any_other[idx] >= threshold).mean()), 4),
                "distinct_same_class_similarity_p95": round(float(np.quantile(neg[idx][np.isfinite(neg[idx])], 0.95)), 4),
                "images": int(len(idx))}

    result = {"dataset": str(args.dataset), "model": str(args.model), "seed": args.seed, "images": len(images),
              "threshold": threshold, "chosen_on": "validation part: 99th percentile of distinct same-class similarity, rounded up to 0.01",
              "split": split_rule,
              "validation": rates(val), "test": rates(test)}
    if args.pool:
        from index.vectors import EmbeddingFolder

        folder = EmbeddingFolder.open(args.pool)
        dropped = total = 0
        for chunk in folder.stream("image", chunk=65536):
            vecs = chunk[1] if isinstance(chunk, tuple) else chunk
            vecs = np.asarray(vecs, np.float32)
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            dropped += int((np.max([vecs @ vv.T for vv in view_vecs], axis=0).max(axis=1) >= threshold).sum())
            total += len(vecs)
        result["pool"] = {"rows": total, "dropped": dropped, "share": round(dropped / max(total, 1), 4)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
