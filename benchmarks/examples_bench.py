"""Example images as queries (issue 18.1): does adding k example images per class change retrieval precision?

On the demo task (the embedded corpus's 20 downstream classes, its 6 templates,
k = 50 per query, the demo's decontamination against the downstream images),
each run retrieves a subset with the demo's index and model and scores it
against the retrieval corpus's own labels:

- **precision**: of the (pair, class) assignments of the subset (a pair two
  classes retrieved counts once for each), the fraction whose pair's corpus
  label is that class. Only the tuxpaint stamps carry a label (216 of 2,223
  retrieval pairs); an emoji pair counts as a miss even when it shows the class
  (a bird emoji under "bird"), so this is a lower bound;
- **labelled precision**: the same over assignments whose pair has a label --
  among pairs where the truth is known, how often the class is right;
- **recall**: of the labelled retrieval pairs of the task's classes, the
  fraction retrieved under their own class.

Variants: text queries only (the demo's task); ``mix`` (text + k examples per
class); ``only`` (k examples per class, no text). Example images are the first
k of each class in the downstream **validation** half (react.datasets'
embedded split, ordered by hashed key); the test half is sealed in this
process (react.datasets.seal_splits) once the decontamination has embedded every
split as pixels to drop, and never opened for anything else. Both the demo's mode
(t2t) and t2i are measured.

    PYTHONPATH=. .venv/bin/python benchmarks/examples_bench.py --index out/demo/index \\
        --corpus ~/.cache/react/corpus/embedded-v3 --json docs/examples_bench.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from react.datasets import seal_splits  # noqa: E402
from retrieval_service.examples import dataset_examples, write_examples_dir  # noqa: E402
from react.schemas import write_text  # noqa: E402


def example_bytes(corpus: Path, k: int) -> dict[str, list[bytes]]:
    """The first ``k`` validation images of each class, as files' bytes (what --examples DIR sends)."""
    return {name: [p.read_bytes() for p in paths] for name, paths in dataset_examples(corpus, "val", k).items()}


def score(table, labels: np.ndarray, classes: list[str], templates: list[str]) -> dict:
    """Precision, labelled precision and recall of a subset; and precision split by which kind of query
    found the (pair, class) assignment: text queries only, example images only, or both."""
    rows = table.column("row").to_numpy()
    assigned = table.column("classes").to_pylist()
    queries = table.column("queries").to_pylist()
    texts = {c: {t.format(c) for t in templates} for c in classes}
    lab = labels[rows]
    hits = total = known = known_hits = 0
    found: set[tuple[int, str]] = set()
    by_source: dict[str, list[int]] = {"text": [0, 0], "example": [0, 0], "both": [0, 0]}
    for r, lbl, cls, qs in zip(rows.tolist(), lab.tolist(), assigned, queries):
        for c in cls:
            total += 1
            ok = lbl == c
            hits += ok
            if lbl is not None:
                known += 1
                known_hits += ok
            if ok:
                found.add((r, c))
            by_text = any(q in texts[c] for q in qs)
            by_example = any(q.startswith(f"example:{c}#") for q in qs)
            source = by_source["both" if by_text and by_example else "example" if by_example else "text"]
            source[0] += 1
            source[1] += ok
    wanted = sum(1 for lbl in labels.tolist() if lbl in set(classes))
    return {"rows": len(rows), "assignments": total, "precision": round(hits / max(total, 1), 4),
            "labelled_assignments": known, "labelled_precision": round(known_hits / max(known, 1), 4),
            "recall": round(len(found) / max(wanted, 1), 4), "correct": hits,
            "by_query_kind": {k: {"assignments": n, "precision": round(ok / n, 4) if n else None}
                              for k, (n, ok) in by_source.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=Path, default=Path("out/demo/index"))
    p.add_argument("--corpus", type=Path, default=Path("~/.cache/react/corpus/embedded-v3").expanduser())
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5], help="example images per class")
    p.add_argument("--modes", nargs="+", default=["t2t", "t2i"], help="text query modes (the demo's: t2t)")
    p.add_argument("--k", type=int, default=50, help="results per query (the demo's: 50)")
    p.add_argument("--no-exclude", action="store_true", help="skip the demo's decontamination")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--write-examples", type=Path, default=None, metavar="DIR",
                   help="only write DIR/<class>/<i>.jpg: the first --ks[0] validation images per class, the folder "
                        "`react retrieve --examples DIR` reads (for a customize run with examples), and stop")
    args = p.parse_args(argv)
    if args.write_examples is not None:
        seal_splits("test")  # examples come from the validation half only
        write_examples_dir(dataset_examples(args.corpus.expanduser(), "val", args.ks[0]), args.write_examples)
        print(f"{args.write_examples}: {args.ks[0]} validation images per class")
        return 0

    from index.searcher import Searcher
    from react.config import cache_dir
    from react.datasets import CLASSES_FILE, TEMPLATES_FILE
    from react.templates import get_templates
    from retrieval_service.exclude import embed_dataset
    from retrieval_service.spec import validate_spec
    from retrieval_service.task import TaskRetriever, load_index_model

    corpus = args.corpus.expanduser()
    classes = [c for c in (corpus / CLASSES_FILE).read_text().splitlines() if c.strip()]
    templates = get_templates(str(corpus / TEMPLATES_FILE))
    searcher = Searcher(args.index)
    model = load_index_model(searcher)
    labels = np.asarray(searcher.metadata(np.arange(searcher.rows), columns=["label"]).column("label").to_pylist(),
                        dtype=object)
    retriever = TaskRetriever(searcher, model)
    # the demo's own decontamination reads every split as pixels to drop, so it comes before the seal
    exclusion = None if args.no_exclude else embed_dataset(model, corpus, cache=cache_dir() / "exclude")
    seal_splits("test")  # examples come from the validation half only
    runs = []
    for mode in args.modes:
        variants = [("text", 0, None)] + [(m, k, m) for k in args.ks for m in ("mix", "only")]
        for name, k, example_mode in variants:
            examples = example_bytes(corpus, k) if k else {}
            spec = validate_spec(classes, templates, args.k, mode, None,
                                 examples=examples, example_mode=example_mode)
            started = time.perf_counter()
            result = retriever.run(spec, exclusion=exclusion)
            row = {"mode": mode, "variant": name, "examples_per_class": k, "queries": result.summary["queries"],
                   "seconds": round(time.perf_counter() - started, 2)} | score(result.table, labels, classes, templates)
            runs.append(row)
            print(f"{mode} {name:5s} k={k}: {row['rows']:5d} pairs, precision {row['precision']:.3f}, labelled "
                  f"precision {row['labelled_precision']:.3f} ({row['labelled_assignments']} assignments), "
                  f"recall {row['recall']:.3f}; by query kind "
                  + ", ".join(f"{kind} {v['precision']} ({v['assignments']})"
                              for kind, v in row["by_query_kind"].items() if v["assignments"]), flush=True)
    out = {"index": str(args.index), "corpus": str(corpus), "k": args.k, "classes": len(classes),
           "templates": len(templates), "exclude": not args.no_exclude,
           "labelled_retrieval_pairs": int(sum(lbl in set(classes) for lbl in labels.tolist())), "runs": runs}
    if args.json:
        write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
