"""The absolute coverage rule and per-class counts on an index (docs/service.md, "How much is there?").

    python benchmarks/coverage_abs.py --index /tmp/x/index --model out/demo/base \
        --corpus ~/.cache/react/corpus/embedded-v3 --modes t2t,t2i --json /tmp/x/coverage_abs.json

Runs three tasks with the corpus's templates (k=50): the corpus's own
downstream classes, five real-photo classes, and seven classes absent from the
embedded corpus; prints each class's coverage score, pairs above the cut and
flags (relative, absolute, almost nothing, k too small). The index folder must
be writable if it lacks a calibration (it is computed and kept there): pass a copy.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

FIVE = ["golden retriever", "sports car", "cathedral", "sushi", "mountain lake"]
ABSENT = ["lymph node tissue", "spreadsheet", "barcode", "chest x-ray", "circuit board",
          "satellite image of farmland", "invoice"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="index folder (a copy: calibration is written)")
    parser.add_argument("--model", required=True, help="the index's model (directory or name:tag)")
    parser.add_argument("--corpus", type=Path, required=True, help="embedded corpus: downstream_classes.txt, "
                                                                   "downstream_templates.txt")
    parser.add_argument("--modes", default="t2t,t2i", help="comma-separated retrieval modes")
    parser.add_argument("--json", type=Path, help="write every report here")
    args = parser.parse_args()

    from index.searcher import Searcher
    from retrieval_service.spec import validate_spec
    from retrieval_service.task import TaskRetriever, load_index_model

    lines = lambda name: [x for x in (args.corpus / name).read_text().splitlines() if x.strip()]  # noqa: E731
    searcher = Searcher(args.index)
    retriever = TaskRetriever(searcher, load_index_model(searcher, args.model))
    tasks = {"demo": lines("downstream_classes.txt"), "five": FIVE, "absent": ABSENT}
    templates = lines("downstream_templates.txt")
    out = {}
    for mode in args.modes.split(","):
        for name, classes in tasks.items():
            report = retriever.run(validate_spec(classes, templates, k=50, mode=mode)).report()
            out[f"{mode}/{name}"] = report
            s = report["summary"]
            print(f"== {mode} {name}: cut {s['coverage_cut']}, counted at {s['count_similarity']} "
                  f"by {s['count_method']}")
            for c in report["classes"]:
                flags = [f for f in ("low_coverage", "not_covered", "almost_nothing", "k_too_small") if c[f]]
                bound = ">=" if c["pairs_above_lower_bound"] else ""
                print(f"  {c['name']:28s} coverage {c['coverage']:.3f}  p50 {c['p50']:.3f}  "
                      f"pairs {bound}{c['pairs_above']:<5d} {' '.join(flags)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
