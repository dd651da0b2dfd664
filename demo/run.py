"""``react demo``: the whole pipeline on the embedded default, through the
same ``react`` sub-commands a user runs, ending in ``summary.json``."""
from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from react.errors import ReactError
from react.progress import console
from react.schemas import CORPUS_MANIFEST, write_text


# report labels of the customization variants (demo.customize_runs.VARIANTS)
_LABELS = {"gated": "gated-image", "random": "random-subset"}
# chosen on the validation halves by benchmarks/recipe_sweep.py for the mosaic base (docs/recipe_sweep_mosaic.json)
RETRIEVE_MODE = "t2i"
HELDOUT = "heldout"  # the exclusion set naming the held-out task (both its validation and test halves)
# Every evaluation set whose images the corpus could hold copies of: the held-out stamps and the
# suite's Open Clip Art task (Tux Paint redraws some clip art). The Twemoji task is left in on
# purpose: another vendor's drawing of an emoji the corpus holds is what that task measures.
CLIPART = "openclipart"  # the suite task, and its exclusion set
EXCLUDED = (HELDOUT, CLIPART)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the pipeline on the embedded default and write OUT/summary.json",
        description="Fetch the embedded corpus, train (or reuse) the embedded base CLIP, evaluate it zero-shot "
        "on the held-out downstream task, embed the retrieval corpus and build its tuned T2I and T2T indices, "
        "serve the index on loopback and retrieve the downstream task's subset through it, "
        "download the subset's images through img2dataset from a loopback web, "
        "customize the base on it (gated-image) and on a random subset of the same size "
        "(the control), over several seeds, compare them zero-shot with the base, "
        "and write everything under --out.",
    )
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the corpus split and base training")
    demo.add_argument("--parallel-runs", type=int, default=None, metavar="N",
                      help="customizations run at once, each in its own process with an equal share of the CPU "
                      "threads (default: 2 on a CPU, where that is faster than one run with every thread; "
                      "1 on a GPU). It changes results only by float rounding (thread count changes summation order).")
    demo.set_defaults(func=run_demo)


def _step(name: str, argv: list[str], timings: dict[str, float]) -> None:
    from react.cli import run

    console.rule(f"[bold]{name}[/]  react {' '.join(argv)}")
    started = time.time()
    if run(argv) != 0:
        raise ReactError(f"demo step failed: react {' '.join(argv)}")
    timings[name] = round(time.time() - started, 1)


def run_demo(args: argparse.Namespace) -> int:
    from demo.customize_runs import random_subset, react_effect
    from demo.parallel_runs import plan_slots
    from demo.shaping import alias_retrieval, coverage_line, example_retrieval, link_rot, task_args
    from demo.transfer import dense_gains, evaluate, evaluation_suite, report, transfer_suite, transfer_summary
    from downstream.report.headline import dense_lines
    from downstream.suite import task_dataset
    from react.embedded.corpus import fetch_embedded

    plan_slots(args.parallel_runs)  # a bad --parallel-runs fails now, not after the base is trained
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
    evaluate(lambda name, argv: _step("eval-base", argv, timings), base_result, "zeroshot", base, corpus)

    embeddings, index = out / "embeddings", out / "index"
    _step("embed", ["embed", str(corpus / "retrieval.parquet"), "--model", str(base), "--out", str(embeddings),
                    "--resume" if _same_model(embeddings, base) else "--overwrite"], timings)
    if not _index_is_current(index, embeddings):
        _step("index", ["index", "build", str(embeddings), "--out", str(index), "--overwrite"], timings)
    index_summary = _index_summary(index)
    for name, entry in index_summary.items():
        console.print(f"{name} index: {entry['factory']} tuned to {entry['search_params']}: recall@{entry['k']} "
                      f"{entry['recall']:.3f} on {entry['queries']} queries, {entry['qps']:,.0f} q/s")

    subset = out / "subset.parquet"
    # Decontamination: the whole held-out task (both splits) and the clip-art task are exclusion sets
    # of the service, so no retrieved pair is an image a model is scored on, or a copy of one.
    step = lambda name, argv: _step(name, argv, timings)  # noqa: E731
    exclude = {HELDOUT: corpus, CLIPART: task_dataset(corpus, CLIPART)}
    with _service(index, out / "service", timings, exclude=exclude) as url:
        _step("retrieve", ["retrieve", "--server", url, *task_args(corpus, RETRIEVE_MODE, EXCLUDED),
                           "--out", str(subset), "--json", str(out / "subset_report.json")], timings)
        subset_summary = _subset_summary(out / "subset_report.json")
        console.print(f"decontamination: {subset_summary['excluded']} retrieved pairs were (copies of) the "
                      f"{subset_summary['excluded_images']} evaluation images (held-out stamps, Open Clip Art task) "
                      "and were dropped", highlight=False)
        subset_summary["coverage"] = coverage_line(out / "subset_report.json")
        # Beside the plain subset (never trained on here): aliases + a quota, and example images.
        subset_summary["with_aliases"] = alias_retrieval(step, url, corpus, out, RETRIEVE_MODE, EXCLUDED)
        subset_summary["with_examples"] = example_retrieval(step, url, corpus, out, RETRIEVE_MODE, EXCLUDED)
        download_summary = _download(corpus, subset, out / "shards", timings)
        download_summary["link_rot"] = link_rot(step, url, corpus, subset, out, RETRIEVE_MODE, EXCLUDED)
    # The control: as many random corpus pairs as were retrieved, downloaded the same way.
    control = out / "control"
    random_subset(corpus, download_summary["downloaded"], args.seed, control / "subset.parquet")
    _download(corpus, control / "subset.parquet", control / "shards", timings, name="download-control")

    base_eval = json.loads(base_result.read_text())
    effect = react_effect(lambda name, argv: _step(name, argv, timings), out, corpus, base,
                          base_eval, {"retrieved": out / "shards", "random": control / "shards"},
                          parallel=args.parallel_runs)
    if effect["parallel"]:
        p = effect["parallel"]
        timings[f"customize {p['runs']} runs, {p['at_once']} at once"] = p["seconds"]

    suite = transfer_suite(step, out / "results", corpus, {"base": base, "gated-image": out / "customized"})
    # ELEVATER-style: every seed of the method on each task of the embedded suite, targeted or not
    gated_runs = [out / "run"] + [out / "runs" / f"gated-s{s}" for s in effect["seeds"][1:]]
    suite_summary = evaluation_suite(step, out, corpus, base, gated_runs)
    dense = dense_gains(step, out / "results", corpus, base, gated_runs[1:], suite)
    for line in dense_lines(dense):
        console.print(line, highlight=False)
    metrics = base_eval["metrics"]
    gated = effect["variants"]["gated"]
    summary = {
        "corpus": {**{k: manifest["counts"][k] for k in ("pretraining", "retrieval", "downstream")},
                   "downstream_classes": manifest["downstream_classes"], "path": str(corpus)},
        "index": index_summary,
        "subset": subset_summary,
        "download": download_summary,
        "base": {k: metrics[k] for k in ("top1", "top5", "mean_per_class_recall")},
        # the method's mean over seeds; every variant with its spread is in react_effect
        "customized": {k: gated[k]["mean"] for k in ("top1", "top5", "mean_per_class_recall")},
        "gain_top1": gated["gain_top1"]["mean"],
        "gain_top1_ci95": gated["gain_top1"]["interval"]["ci95"],
        "gated_vs_random_ci95": effect["gated_vs_random"]["ci95"],
        "evaluated_on": f"{base_eval['dataset']} ({metrics['num_images']} images); the test half; every recipe choice read only the val half (benchmarks/recipe_sweep.py)",
        "react_effect": {name: {k: v for k, v in entry.items() if k != "per_class"}
                         for name, entry in effect["variants"].items()},
        "transfer": transfer_summary(suite),
        "dense": dense,
        "suite": suite_summary,
        "chance_top1": round(1 / manifest["downstream_classes"], 4),
        "timings_s": timings,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    # zero-shot: every variant (mean of its seeds); the other tasks: base and the exported seed-0 model
    labelled = [("base", base_result)] + [(_LABELS[name], Path(entry["result"]))
                                          for name, entry in effect["variants"].items()]
    labelled += [(label, path) for by_label in suite.values() for label, path in by_label.items()]
    page = report(step, out, labelled, subset, out / "summary.json")
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")  # with the report's time
    console.print_json(data=summary)
    console.print(f"[green]demo finished:[/] {out / 'summary.json'}; report: {page}")
    return 0


def _download(corpus: Path, subset: Path, shards: Path, timings: dict[str, float], name: str = "download") -> dict:
    """``react download`` of the subset, its urls answered by the retrieval
    corpus served on loopback (the same HTTP path as LAION urls take); a
    download of the same rows is resumed, so a second demo fetches nothing."""
    from download.inputs import read_subset
    from download.loopback import download_served
    from react.schemas import DOWNLOAD_MANIFEST

    try:
        done = json.loads((shards / DOWNLOAD_MANIFEST).read_text())["input"]["digest"]
    except (OSError, ValueError, KeyError):
        done = None
    mode = "--resume" if done == read_subset(subset).digest else "--overwrite"
    s, served = download_served(corpus, subset, shards, lambda argv: _step(name, argv, timings), mode)
    return {"requested": s["requested"], "downloaded": s["downloaded"], "failed": s["failed"],
            "failed_by_reason": s["failed_by_reason"], "shards": s["shards"], "warnings": len(s["warnings"]),
            "seconds": timings[name], "images_served": served, "safety": s.get("safety")}


def _same_model(embeddings: Path, model: Path) -> bool:
    """Whether the embeddings there came from this model (then --resume keeps them)."""
    from react.models import WEIGHTS_FILE, file_digest

    try:
        manifest = json.loads((embeddings / "embed.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("model_id") == "sha256:" + file_digest(model / WEIGHTS_FILE)


def _index_is_current(index: Path, embeddings: Path) -> bool:
    """An index built from exactly these embeddings (same checksum) is kept."""
    from index.vectors import EmbeddingFolder

    try:
        manifest = json.loads((index / "index.json").read_text())
        return manifest.get("checksum") == EmbeddingFolder.open(embeddings).checksum()
    except (OSError, json.JSONDecodeError, ReactError):
        return False


def _index_summary(index: Path) -> dict:
    manifest = json.loads((index / "index.json").read_text())
    return {name: {"factory": e["factory"], "count": e["count"], "search_params": e["search_params"],
                   "k": e["recall"]["k"], "recall": e["recall"]["value"], "queries": e["recall"]["queries"],
                   "qps": e["qps"], "exact_qps": e["exact_qps"], "speedup": e["speedup"]}
            for name, e in manifest["indices"].items()}


@contextmanager
def _service(index: Path, state_dir: Path, timings: dict[str, float],
             exclude: dict[str, Path] | None = None) -> Iterator[str]:
    """``react serve`` on a free loopback port for the duration of the block (``exclude``: its exclusion sets)."""
    import re
    import subprocess
    import sys

    started = time.time()
    cmd = [sys.executable, "-m", "react", "serve", "--index", f"demo={index}", "--host", "127.0.0.1",
           "--port", "0", "--state-dir", str(state_dir),
           *(a for name, path in (exclude or {}).items() for a in ("--exclude-set", f"{name}={path}"))]
    console.rule(f"[bold]serve[/]  react {' '.join(cmd[3:])}")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        assert proc.stderr is not None
        for line in proc.stderr:  # the service names its address before uvicorn starts
            sys.stderr.write(line)
            match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
                break
        if url is None:
            raise ReactError(f"react serve exited ({proc.wait()}) before it listened")
        import threading

        # keep draining its log, or a full pipe would stall the service
        threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr], daemon=True).start()
        _wait_ready(url, proc)
        timings["serve-start"] = round(time.time() - started, 1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_ready(url: str, proc, timeout_s: float = 120.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ReactError(f"react serve exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise ReactError(f"react serve at {url} not ready after {timeout_s:.0f} s")


def _subset_summary(report_path: Path) -> dict:
    report = json.loads(report_path.read_text())
    return report.get("summary", report)
