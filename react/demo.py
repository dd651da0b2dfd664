"""``react demo``: the whole pipeline on the embedded default, through the
same ``react`` sub-commands a user runs, ending in ``summary.json``."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from react.errors import ReactError
from react.progress import console
from react.schemas import CORPUS_MANIFEST, write_text


def add_parsers(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the pipeline on the embedded default and write OUT/summary.json",
        description="Fetch the embedded corpus, train (or reuse) the embedded base CLIP, evaluate it zero-shot "
        "on the held-out downstream task, and write everything under --out.",
    )
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the corpus split and base training")
    demo.set_defaults(func=run_demo)


def _step(name: str, argv: list[str], timings: dict[str, float]) -> None:
    from react.cli import run

    console.rule(f"[bold]{name}[/]  react {' '.join(argv)}")
    started = time.time()
    if run(argv) != 0:
        raise ReactError(f"demo step failed: react {' '.join(argv)}")
    timings[name] = round(time.time() - started, 1)


def run_demo(args: argparse.Namespace) -> int:
    from react.embedded.corpus import fetch_embedded

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.time()
    corpus = fetch_embedded(seed=args.seed)
    timings["corpus"] = round(time.time() - started, 1)
    manifest = json.loads((corpus / CORPUS_MANIFEST).read_text())

    base = out / "base"
    _step("base", ["base", "train-embedded", "--corpus", str(corpus), "--out", str(base), "--seed", str(args.seed)],
          timings)
    base_result = out / "results" / "base_zeroshot.json"
    _step("eval-base", ["eval", "zeroshot", "--model", str(base), "--dataset", str(corpus), "--out", str(base_result)],
          timings)

    metrics = json.loads(base_result.read_text())["metrics"]
    summary = {
        "corpus": {**{k: manifest["counts"][k] for k in ("pretraining", "retrieval", "downstream")},
                   "downstream_classes": manifest["downstream_classes"], "path": str(corpus)},
        "base": {k: metrics[k] for k in ("top1", "top5", "mean_per_class_recall")},
        "chance_top1": round(1 / manifest["downstream_classes"], 4),
        "timings_s": timings,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    console.print_json(data=summary)
    console.print(f"[green]demo finished:[/] {out / 'summary.json'}")
    return 0
