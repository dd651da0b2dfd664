"""How much of the web's stamp domain the base's pretraining may hold (issue 17).

    .venv/bin/python benchmarks/world_sweep.py --strides 4 0 --out out/world_sweep \\
        --json docs/world_sweep.json

REACT's premise is that the web holds knowledge the pretrained model lacks. In the
embedded world the pretraining part holds one web stamp in ``--pretraining-stride`` of
each folder (4 in the demo's corpus); with 0 it holds none, and only the retrieval corpus
knows the stamps' domain. For each stride this script builds that corpus, trains its base
(the demo's recipe, mosaic loss included), embeds and indexes the retrieval corpus, retrieves
the demo task (t2t, k 50, the held-out stamps and the clip-art task excluded) and a random
subset of the same size, downloads both through img2dataset from the loopback web, and then
-- with the test split sealed -- customizes gated-image with the demo's recipe on each, over
the seeds, scoring every run on the validation halves of the stamps and the clip-art task.

Nothing here reads a test half. What it does not show: which world is "right" -- it
measures how the REACT effect depends on what the base already knows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TASKS = ("stamps", "openclipart")


def prepare(stride: int, out: Path, seed: int) -> dict:
    """Corpus, base, index and both downloaded subsets for one stride (reused when present)."""
    from demo.customize_runs import random_subset
    from download.loopback import download_served
    from downstream.suite import task_dataset
    from react.embedded.corpus import fetch_embedded
    from react.schemas import DOWNLOAD_MANIFEST
    from recipe_sweep import checked, prepare_shards

    corpus = fetch_embedded(stride=stride)
    clipart = task_dataset(corpus, "openclipart")
    root = out / f"p{stride}"
    base = root / "base"
    checked(["base", "train-embedded", "--corpus", str(corpus), "--out", str(base), "--seed", str(seed)])
    if not (root / "index").is_dir():
        checked(["embed", str(corpus / "retrieval.parquet"), "--model", str(base), "--out", str(root / "embeddings"),
                 "--overwrite"])
        checked(["index", "build", str(root / "embeddings"), "--out", str(root / "index"), "--overwrite"])
    shards = prepare_shards(root, corpus, clipart, root, "t2t")
    downloaded = json.loads((shards / DOWNLOAD_MANIFEST).read_text())["summary"]["downloaded"]
    control = root / "control"
    if not (control / DOWNLOAD_MANIFEST).is_file():
        random_subset(corpus, downloaded, seed, root / "control.parquet")
        download_served(corpus, root / "control.parquet", control, checked, "--overwrite")
    manifest = json.loads((corpus / "manifest.json").read_text())
    return {"corpus": corpus, "base": base, "shards": {"retrieved": shards, "random": control},
            "pairs": downloaded, "pretraining_pairs": manifest["counts"]["pretraining"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strides", type=int, nargs="+", default=[4, 0], help="pretraining strides to compare")
    p.add_argument("--out", type=Path, required=True, help="folder for corpora's bases, shards and runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="customization seeds (default: 0 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()

    from demo.customize_runs import MODE_RECIPE, RECIPE
    from react.datasets import seal_splits
    from react.schemas import write_text
    from react_effect import score_runs

    worlds = {stride: prepare(stride, args.out, 0) for stride in args.strides}
    seal_splits("test")
    result: dict = {"tasks": list(TASKS), "seeds": args.seeds, "recipe": [*RECIPE, *MODE_RECIPE["gated-image"]],
                    "worlds": {}}
    for stride, w in worlds.items():
        specs = [[f"{data}-s{seed}", str(shards), *RECIPE, *MODE_RECIPE["gated-image"], "--seed", str(seed)]
                 for data, shards in w["shards"].items() for seed in args.seeds]
        rows = score_runs(str(w["base"]), w["corpus"], TASKS, specs, args.out / f"p{stride}" / "runs")
        entry = {"pretraining_pairs": w["pretraining_pairs"], "subset_pairs": w["pairs"],
                 "base": {"top1": rows[0]["top1"], "by_task": rows[0]["top1_by_task"]}}
        for data in w["shards"]:
            runs = [r for r in rows[1:] if r["name"].startswith(data + "-")]
            entry[data] = {"top1_seeds": [r["top1"] for r in runs],
                           "gain": statistics.mean(r["top1"] for r in runs) - rows[0]["top1"],
                           "gain_by_task": {t: statistics.mean(r["top1_by_task"][t] for r in runs)
                                            - rows[0]["top1_by_task"][t] for t in TASKS}}
        result["worlds"][str(stride)] = entry
        print(f"stride {stride}: base {100 * entry['base']['top1']:.1f}; "
              + "; ".join(f"{d} {100 * entry[d]['gain']:+.1f} ("
                          + ", ".join(f"{t} {100 * g:+.1f}" for t, g in entry[d]["gain_by_task"].items()) + ")"
                          for d in w["shards"]), flush=True)
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
