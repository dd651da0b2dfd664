"""Which customization recipe moves zero-shot accuracy: ``react customize`` runs
on given shards, each scored on the validation half of the corpus' held-out task.

Tuning code: it seals the test split first (``react.datasets.seal_splits``), so
no setting it helps choose can have been chosen on the images the demo reports.

    .venv/bin/python benchmarks/react_effect.py --out out/react_effect \\
        --run "t2t-g4-s0 out/demo/shards --steps 128 --batch-size 128 --gate-lr 5e-3 --gated-layers 4 --seed 0" \\
        --run "random-g4-s0 out/demo/control/shards --steps 128 --batch-size 128 --gate-lr 5e-3 --gated-layers 4"

Each ``--run`` is "NAME SHARDS_DIR [react customize options]". The held-out
images are preprocessed once and the class embeddings come from the base (the
text tower is frozen in gated-image and locked-text, so they are the
customized model's too): scoring a run takes a second, the same top-1 as
``react eval zeroshot``. One line per run goes to stdout and OUT/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="out/demo/base", help="base model directory (default: out/demo/base)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="corpus directory whose downstream task scores the runs (default: the embedded corpus)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the run directories and results.jsonl")
    parser.add_argument("--run", action="append", required=True, metavar='"NAME SHARDS [OPTIONS]"',
                        help="one customization run (repeat)")
    args = parser.parse_args()
    from react.datasets import seal_splits

    seal_splits("test")
    score_runs(args.base, args.corpus, [shlex.split(spec) for spec in args.run], args.out)


def score_runs(base_dir: str, corpus: Path | None, runs: list[list[str]], out: Path) -> list[dict]:
    """Each run ``[NAME, SHARDS, *options]`` through ``react customize`` into OUT/NAME, scored on
    the validation half; returns (and appends to OUT/results.jsonl) one row per run, the base first."""
    import torch

    from react.datasets import build_classification_dataset, seal_splits
    from downstream.tasks.metrics import mean_per_class_recall
    from react.cli import run
    from react.models import load_model

    from react.embedded.corpus import fetch_embedded

    seal_splits("test")
    dataset = build_classification_dataset(str(corpus or fetch_embedded()), "val")
    base = load_model(base_dir, device="cpu")
    classes = base.class_embeddings(dataset.classnames, dataset.templates)
    images = torch.stack([base.preprocess(dataset[i][0]) for i in range(len(dataset))])
    labels = torch.tensor(dataset.labels)

    def score(model) -> tuple[float, float]:
        pred = (model.encode_images(images) @ classes.T).argmax(1)
        return (pred == labels).float().mean().item(), mean_per_class_recall(pred, labels, len(dataset.classnames))

    top1, recall = score(base)
    print(f"{'base':32s} top-1 {100 * top1:5.1f}  mean recall {100 * recall:5.1f}", flush=True)
    rows = [{"name": "base", "options": "", "top1": top1, "mean_per_class_recall": recall, "images": len(dataset)}]
    out.mkdir(parents=True, exist_ok=True)
    for name, shards, *options in runs:
        run_dir = out / name
        started = time.time()
        argv = ["customize", "--base", base_dir, "--train-data", shards, "--out", str(run_dir), "--overwrite",
                "--log-every", "1000", *options]
        if run(argv) != 0:
            raise SystemExit(f"failed: react {' '.join(argv)}")
        top1, recall = score(load_model(str(run_dir), device="cpu"))
        last = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
        row = {"name": name, "options": " ".join(options), "top1": top1, "mean_per_class_recall": recall,
               "loss": last.get("loss"), "wall_s": round(time.time() - started, 1)}
        print(f"{name:32s} top-1 {100 * top1:5.1f}  mean recall {100 * recall:5.1f}  loss {row['loss']:.3f}  "
              f"{row['wall_s']:.0f} s", flush=True)
        with open(out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
