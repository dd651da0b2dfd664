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
from collections.abc import Sequence
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
    parser.add_argument("--tasks", nargs="+", default=["stamps"], metavar="TASK",
                        help="suite tasks whose validation halves score the runs (react eval suite's names; "
                             "default: stamps, the corpus' own held-out task)")
    args = parser.parse_args()
    from react.datasets import seal_splits

    seal_splits("test")
    from react.embedded.corpus import fetch_embedded

    score_runs(args.base, args.corpus or fetch_embedded(), args.tasks, [shlex.split(spec) for spec in args.run],
               args.out)


def score_runs(base_dir: str, corpus: Path, task_names: Sequence[str], runs: list[list[str]], out: Path,
               parallel: int | None = None) -> list[dict]:
    """Each run ``[NAME, SHARDS, *options]`` through ``react customize`` into OUT/NAME, scored on
    the validation half of every suite task named (``top1``: their mean; ``top1_by_task``: each);
    returns (and appends to OUT/results.jsonl) one row per run, the base first.

    Resumable: a run already in OUT/results.jsonl with the same shards and options is read back,
    not trained again (an interrupted run starts over). ``parallel`` runs train at once, each in
    its own process (demo.parallel_runs; default 2 on a CPU)."""
    import torch

    from downstream.suite import task_dataset
    from react.datasets import build_classification_dataset, seal_splits
    from downstream.tasks.metrics import mean_per_class_recall
    from demo.parallel_runs import plan_slots
    from react.models import WEIGHTS_FILE, file_digest, load_model

    seal_splits("test")
    base = load_model(base_dir, device="cpu")
    tasks = []
    for task in task_names:
        dataset = build_classification_dataset(str(task_dataset(corpus, task)), "val")
        classes = base.class_embeddings(dataset.classnames, dataset.templates)
        images = torch.stack([base.preprocess(dataset[i][0]) for i in range(len(dataset))])
        tasks.append((task, classes, images, torch.tensor(dataset.labels), len(dataset.classnames)))

    def score(model) -> dict:
        by_task, recall = {}, []
        for name, classes, images, labels, n_classes in tasks:
            pred = (model.encode_images(images) @ classes.T).argmax(1)
            by_task[name] = (pred == labels).float().mean().item()
            recall.append(mean_per_class_recall(pred, labels, n_classes))
        return {"top1": sum(by_task.values()) / len(by_task), "mean_per_class_recall": sum(recall) / len(recall),
                "top1_by_task": by_task}

    scored = score(base)
    print(f"{'base':32s} top-1 {100 * scored['top1']:5.1f}  mean recall {100 * scored['mean_per_class_recall']:5.1f}",
          flush=True)
    rows = [{"name": "base", "options": "", **scored, "images": {t[0]: len(t[3]) for t in tasks}}]
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    if (out / "results.jsonl").is_file():
        done = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    weights = file_digest(Path(base_dir) / WEIGHTS_FILE)
    specs = {name: {"base": weights, "shards": shards, "options": " ".join(options)} for name, shards, *options in runs}
    reused = [name for name, spec in specs.items() if {k: done.get(name, {}).get(k) for k in spec} == spec]
    if reused:
        print(f"reused from {out / 'results.jsonl'}: {', '.join(reused)}", flush=True)
    todo = [[name, shards, *options] for name, shards, *options in runs if name not in reused]
    slots, _ = plan_slots(parallel)
    for start in range(0, len(todo), slots):  # a chunk at a time, so every finished run is saved
        chunk = todo[start:start + slots]
        walls = _train(chunk, base_dir, out, parallel)
        for name, shards, *options in chunk:
            run_dir = out / name
            scored = score(load_model(str(run_dir), device="cpu"))
            last = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
            row = {"name": name, **specs[name], **scored, "loss": last.get("loss"), "wall_s": walls[name]}
            print(f"{name:32s} top-1 {100 * row['top1']:5.1f}  mean recall {100 * row['mean_per_class_recall']:5.1f}  "
                  f"loss {row['loss']:.3f}  {row['wall_s']:.0f} s", flush=True)
            with open(out / "results.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            done[name] = row
    rows += [done[name] for name in specs]
    return rows


def _train(chunk: list[list[str]], base_dir: str, out: Path, parallel: int | None) -> dict[str, float]:
    """``react customize`` of every run in ``chunk`` (at once when there are slots); wall seconds by name."""
    from demo.parallel_runs import Job, run_jobs

    jobs = []
    for name, shards, *options in chunk:
        argv = ["customize", "--base", base_dir, "--train-data", shards, "--out", str(out / name), "--overwrite",
                "--log-every", "10", *options]
        jobs.append(Job(name, argv, out / name, int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 0))
    return run_jobs(jobs, parallel, out / "logs")["walls"]


if __name__ == "__main__":
    main()
