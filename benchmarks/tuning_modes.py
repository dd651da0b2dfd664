"""The paper's ordering of tuning modes (REACT Table 2.6) on the embedded task, with intervals.

    .venv/bin/python benchmarks/tuning_modes.py --demo out/demo --out out/tuning_modes \\
        --json docs/tuning_modes.json

Two phases, the protocol of docs/evidence.md:

1. **val** (the test split sealed): for each mode the demo does not run
   (``locked-text``, ``full``, ``locked-image`` = LiT's mirror: text tower
   trained, image tower frozen), one seed per learning rate of ``--lrs``; the
   best validation top-1 picks the mode's learning rate. ``gated-image`` keeps
   the demo's recipe (demo/customize_runs.py), which was itself chosen on val.
2. **test**: the chosen recipe over ``--seeds`` seeds, scored with ``react eval
   zeroshot`` on the test half. The demo's own gated-image runs are read from
   ``--demo``'s per-seed results (the same command, the same split), so only
   the other modes train here.

Every mode's gain over the base carries the paired image x seed bootstrap
interval of ``downstream/report/intervals.py``. Prints a table; ``--json``
writes everything. Each run is a ``react customize`` command a user could type.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NEW_MODES = ("locked-text", "full", "locked-image")
DEMO_MODES = {"gated-image": "gated"}  # mode -> the demo's variant name
DEFAULT_LRS = ("1e-5", "3e-5", "1e-4")


def _react(argv: list[str]) -> None:
    from react.cli import run

    if run(argv) != 0:
        raise SystemExit(f"failed: react {' '.join(argv)}")


def _train_and_score(cells: list[tuple[Path, str, str, int]], base: str, shards: str, recipe: list[str],
                     corpus: str, split: str, parallel: int | None, logs: Path) -> list[dict]:
    """Each cell ``(run_dir, mode, lr, seed)`` trained (``parallel`` runs at once, demo.parallel_runs)
    unless already scored, then scored zero-shot on ``split``; the results in the cells' order."""
    from demo.parallel_runs import Job, run_jobs

    steps = int(recipe[recipe.index("--steps") + 1])
    jobs = []
    for run_dir, mode, lr, seed in cells:
        if (run_dir / f"zeroshot_{split}.json").is_file():
            continue
        # an interrupted run resumes from its last checkpoint; a finished one resumes to nothing
        again = ["--resume"] if run_dir.exists() else []
        argv = ["customize", "--base", base, "--train-data", shards, "--out", str(run_dir), *again,
                "--mode", mode, "--lr", lr, "--seed", str(seed), "--log-every", "10", *recipe]
        jobs.append(Job(f"{run_dir.parent.name}-{run_dir.name}", argv, run_dir, steps))
    run_jobs(jobs, parallel, logs)
    results = []
    for run_dir, *_ in cells:
        result = run_dir / f"zeroshot_{split}.json"
        if not result.is_file():
            _react(["eval", "zeroshot", "--model", str(run_dir), "--dataset", corpus, "--split", split,
                    "--device", "cpu", "--out", str(result)])
        results.append(json.loads(result.read_text()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("out/demo"),
                        help="a finished `react demo` folder (base/, shards/, results/) (default: out/demo)")
    parser.add_argument("--out", type=Path, required=True, help="folder for this benchmark's runs")
    parser.add_argument("--lrs", nargs="+", default=list(DEFAULT_LRS),
                        help="learning rates tried on val per new mode (one value: used as given, no val phase)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the test-phase runs")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--parallel-runs", type=int, default=None, metavar="N",
                        help="customizations at once (default: 2 on a CPU, 1 on a GPU; demo.parallel_runs)")
    args = parser.parse_args()

    from demo.customize_runs import MODE_RECIPE, RECIPE
    from downstream.report.intervals import correct, gain_interval
    from react.datasets import SEALED_ENV, seal_splits
    from react.embedded.corpus import fetch_embedded

    corpus = str(fetch_embedded())
    base, shards = str(args.demo / "base"), str(args.demo / "shards")
    recipe = [*RECIPE, *MODE_RECIPE["locked-text"][:2]]  # the other modes get locked-text's step budget
    started = time.time()

    # Phase 1: choose each new mode's learning rate on val, the test split sealed meanwhile.
    seal_splits("test")
    chosen: dict[str, dict] = {}
    for mode in NEW_MODES:
        if len(args.lrs) == 1:  # nothing to choose: the rate was fixed before any run was scored
            chosen[mode] = {"lr": args.lrs[0], "tried": [], "note": "fixed a priori, not chosen on any split"}
            continue
        cells = [(args.out / "val" / f"{mode}-lr{lr}", mode, lr, 0) for lr in args.lrs]
        tried = []
        for lr, res in zip(args.lrs, _train_and_score(cells, base, shards, recipe, corpus, "val", args.parallel_runs,
                                                      args.out / "logs")):
            tried.append({"lr": lr, "val_top1": round(res["metrics"]["top1"], 4)})
            print(f"val  {mode:13s} lr {lr:6s} top-1 {100 * res['metrics']['top1']:5.1f}", flush=True)
        best = max(tried, key=lambda t: t["val_top1"])
        chosen[mode] = {"lr": best["lr"], "tried": tried}
    os.environ.pop(SEALED_ENV)  # phase 2 reads the test half, and only with every choice fixed

    # Phase 2: the chosen recipes on the test half, with intervals against the base.
    base_result = json.loads((args.demo / "results" / "base_zeroshot.json").read_text())
    base_correct = [correct(base_result)]
    rows = {"base": {"top1": [round(base_result["metrics"]["top1"], 4)]}}
    cells = [(args.out / "test" / f"{mode}-s{s}", mode, chosen[mode]["lr"], s) for mode in NEW_MODES for s in args.seeds]
    trained = iter(_train_and_score(cells, base, shards, recipe, corpus, "test", args.parallel_runs, args.out / "logs"))
    for mode in (*DEMO_MODES, *NEW_MODES):
        if mode in DEMO_MODES:
            results = [json.loads((args.demo / "results" / f"{DEMO_MODES[mode]}-s{s}_zeroshot.json").read_text())
                       for s in args.seeds]
            source = "the demo's runs"
        else:
            results = [next(trained) for _ in args.seeds]
            source = f"lr {chosen[mode]['lr']} " + ("chosen on val" if chosen[mode]["tried"] else "fixed a priori")
        tops = [round(r["metrics"]["top1"], 4) for r in results]
        rows[mode] = {"top1": tops, "source": source,
                      "gain": gain_interval([correct(r) for r in results], base_correct)}

    print("\n| mode | top-1 % (seeds) | gain vs base, 95 % interval | recipe |\n|---|---|---|---|")
    for mode, row in rows.items():
        mean = 100 * sum(row["top1"]) / len(row["top1"])
        if "gain" not in row:
            print(f"| {mode} | {mean:.1f} | | |")
            continue
        g = row["gain"]
        mark = " (contains 0)" if g["contains_zero"] else ""
        print(f"| {mode} | {mean:.1f} ({', '.join(f'{100 * t:.1f}' for t in row['top1'])}) | "
              f"{100 * g['mean']:+.1f} [{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}]{mark} | {row['source']} |")
    if args.json:
        from react.schemas import write_text

        write_text(args.json, json.dumps({"chosen_on_val": chosen, "test": rows, "recipe": recipe,
                                          "seeds": args.seeds, "wall_s": round(time.time() - started, 1)},
                                         indent=1) + "\n")


if __name__ == "__main__":
    main()
