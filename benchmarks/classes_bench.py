"""Aliases and the per-class quota on the demo task: precision of the retrieved subset with and without each.

    .venv/bin/python benchmarks/classes_bench.py --index out/demo/index --model out/demo/base \\
        --corpus ~/.cache/react/corpus/embedded-v3 --out out/classes_bench.json

The task is the demo's: the corpus' 20 downstream classes, its 6 templates, k=50, near-duplicate collapse
on. It is run in-process (``TaskRetriever``, what ``react retrieve --index`` runs) for each mode, with and
without the aliases of ``demo/aliases.txt`` and with and without ``--per-class`` quotas.

**Judging a retrieved pair.** A subset row carries the classes it was retrieved for; each (pair, class)
label is *correct* when the pair belongs to that class:

- a Tux Paint stamp belongs to the class its ``label`` column names (the corpus builder's mapping of the
  stamp's folder; stamps of the other folders -- easter, space/moon, military -- belong to none);
- an emoji belongs to a class by its Unicode category when the category is the class
  (``EMOJI_CATEGORY``), or by its name when the category is mixed (``EMOJI_NAMES``: the fish among the
  marine animals, the trees among the plants, ...). Both tables are written out below.

Figures: pair precision (rows whose best class -- ``classes[0]``, the class whose query scored the
pair highest -- is correct), label precision (correct labels / labels: a pair found by three classes
has three labels), macro label precision (mean over classes), the correct labels found (out of the
corpus' pairs of the 20 classes: recall), and the balance (the largest and smallest class).

Three alias settings per mode: none; all of ``demo/aliases.txt``; and "strong" -- the aliases the
coverage table did *not* flag weak in the run with all of them (what a user who reads the table keeps). The held-out images are not
excluded here (the demo drops 11 of 587 pairs for them; no effect on what is compared).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EMOJI_CATEGORY = {
    "Animals & Nature/animal-bird": "bird", "Objects/clothing": "clothing", "Flags/country-flag": "flag",
    "Flags/flag": "flag", "Flags/subdivision-flag": "flag", "Animals & Nature/plant-flower": "flower",
    "Food & Drink/food-fruit": "fruit", "Animals & Nature/animal-bug": "insect",
    "Animals & Nature/animal-mammal": "mammal", "Objects/musical-instrument": "musical instrument",
    "Activities/sport": "sports equipment", "Objects/tool": "tool", "Food & Drink/food-vegetable": "vegetable",
    "Travel & Places/transport-air": "vehicle", "Travel & Places/transport-water": "vehicle",
}
EMOJI_NAMES = {  # emoji (caption without " emoji") of mixed categories that belong to a class
    "christmas item": {"christmas tree", "wrapped present", "father christmas", "mother christmas", "mx claus",
                       "snowman", "snowman without snow", "bell"},
    "fish": {"fish", "tropical fish", "blowfish", "shark"},
    "halloween item": {"jack-o-lantern", "ghost", "spider web", "skull", "skull and crossbones", "bat",
                       "vampire", "woman vampire", "man vampire", "zombie", "woman zombie", "man zombie",
                       "mage", "woman mage", "man mage"},
    "house": {"house building", "house with garden", "houses", "derelict house", "hut"},
    "mammal": {"whale", "spouting whale", "dolphin", "seal"},
    "monument": {"statue of liberty", "tokyo tower", "classical building", "moyai", "european castle",
                 "japanese castle"},
    "planet": {"ringed planet", "earth globe europe-africa", "earth globe americas", "earth globe asia-australia"},
    "road sign": {"octagonal sign", "construction sign", "vertical traffic light", "horizontal traffic light",
                  "no entry", "no entry sign", "children crossing", "no pedestrians", "no bicycles",
                  "warning sign"},
    "tree": {"deciduous tree", "evergreen tree", "palm tree", "leafless tree", "christmas tree", "tanabata tree"},
    "vehicle": {"bus", "recreational vehicle", "high-speed train with bullet nose", "minibus", "ambulance",
                "scooter", "light rail", "motor scooter", "articulated lorry", "delivery truck", "fire engine",
                "railway car", "pickup truck", "motorcycle", "taxi", "racing car", "high-speed train", "monorail",
                "tractor", "tram car", "auto rickshaw", "metro", "oncoming automobile", "steam locomotive",
                "oncoming police car", "trolleybus", "oncoming bus", "bicycle", "train", "tram",
                "mountain railway", "automobile", "police car", "oncoming taxi"},
}


def truth(corpus: Path) -> dict[str, set[str]]:
    """key -> the classes the pair belongs to (empty: none of the task's)."""
    import pyarrow.parquet as pq

    table = pq.read_table(corpus / "retrieval.parquet", columns=["key", "caption", "source", "category", "label"])
    out: dict[str, set[str]] = {}
    for r in table.to_pylist():
        classes: set[str] = set()
        if r["source"] == "emoji-google":
            name = r["caption"].removesuffix(" emoji")
            if r["category"] in EMOJI_CATEGORY:
                classes.add(EMOJI_CATEGORY[r["category"]])
            classes |= {c for c, names in EMOJI_NAMES.items() if name in names}
        elif r["label"]:
            classes.add(r["label"])
        out[r["key"]] = classes
    return out


def judge(rows: list[dict], classes: list[str], gold: dict[str, set[str]]) -> dict:
    per = {c: {"labels": 0, "correct": 0} for c in classes}
    for r in rows:
        for c in r["classes"]:
            per[c]["labels"] += 1
            per[c]["correct"] += c in gold[r["key"]]
    labels = sum(p["labels"] for p in per.values())
    correct = sum(p["correct"] for p in per.values())
    available = sum(1 for v in gold.values() for c in v if c in per)
    sizes = sorted((p["labels"] for p in per.values()), reverse=True)
    macro = [p["correct"] / p["labels"] for p in per.values() if p["labels"]]
    best = sum(r["classes"][0] in gold[r["key"]] for r in rows)  # classes[0]: the class that scored it highest
    return {"rows": len(rows), "labels": labels, "correct": correct,
            "pair_precision": round(best / len(rows), 4) if rows else None,
            "precision": round(correct / labels, 4) if labels else None,
            "macro_precision": round(sum(macro) / len(macro), 4) if macro else None,
            "recall": round(correct / available, 4), "available": available,
            "largest_class": sizes[0], "smallest_class": sizes[-1],
            "top4_share": round(sum(sizes[:4]) / labels, 4) if labels else None,
            "by_class": {c: p | {"precision": round(p["correct"] / p["labels"], 4) if p["labels"] else None}
                          for c, p in per.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("out/demo/index"), help="the demo's index folder")
    parser.add_argument("--model", default=None, help="the index's model, if not the one index.json records")
    parser.add_argument("--corpus", type=Path, default=Path("~/.cache/react/corpus/embedded-v3").expanduser(),
                        help="the embedded corpus (retrieval.parquet, downstream_classes.txt and templates)")
    parser.add_argument("--aliases", type=Path, default=Path(__file__).resolve().parents[1] / "demo" / "aliases.txt",
                        help="a classes file with aliases (CLASS|ALIAS|ALIAS) for the corpus' classes")
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 20, 40], metavar="N",
                        help="quotas to try (default: 10 20 40)")
    parser.add_argument("--modes", nargs="+", default=["t2t", "t2i"], help="retrieval modes (default: t2t t2i)")
    parser.add_argument("--k", type=int, default=50, help="results per query (default: the demo's 50)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the figures (JSON)")
    args = parser.parse_args()

    from index.searcher import Searcher
    from react.schemas import CLASSES_FILE, TEMPLATES_FILE, write_text
    from react.templates import get_templates
    from retrieval_service.retrieve_cmd import read_classes
    from retrieval_service.spec import validate_spec
    from retrieval_service.task import TaskRetriever, load_index_model

    classes = read_classes(args.corpus / CLASSES_FILE).names
    aliased = read_classes(args.aliases)
    if aliased.names != classes:
        raise SystemExit(f"{args.aliases}: its classes are not {args.corpus / CLASSES_FILE}'s")
    templates = get_templates(str(args.corpus / TEMPLATES_FILE))
    gold = truth(args.corpus)
    searcher = Searcher(args.index)
    model = load_index_model(searcher, args.model)
    cache: dict[str, object] = {}

    def encode(texts: list[str]):  # each query encoded once across the runs (they share most queries)
        import numpy as np

        todo = [t for t in dict.fromkeys(texts) if t not in cache]
        if todo:
            cache.update(zip(todo, model.encode_texts(todo).numpy()))
        return np.stack([cache[t] for t in texts])

    retriever = TaskRetriever(searcher, model, encode=encode)
    runs = []
    print(f"{'mode':4} {'aliases':7} {'quota':>5} {'rows':>5} {'pair-P':>6} {'labels':>6} {'label-P':>7} "
          f"{'macro':>6} {'correct':>7} {'recall':>6} {'largest':>7} {'smallest':>8}")
    for mode in args.modes:
        weak: set[str] = set()
        for setting in ("none", "all", "strong"):
            if setting == "none":
                aliases = {}
            elif setting == "all":
                aliases = aliased.aliases
            else:
                aliases = {c: [a for a in v if a not in weak] for c, v in aliased.aliases.items()}
            for quota in (None, *args.per_class):
                spec = validate_spec(classes, templates, args.k, mode, aliases=aliases, per_class=quota)
                started = time.perf_counter()
                result = retriever.run(spec)
                figures = judge(result.table.to_pylist(), classes, gold)
                flagged = [a["alias"] for s in result.stats for a in s.aliases if a["weak"]]
                if setting == "all" and quota is None:
                    weak = set(flagged)
                run = {"mode": mode, "aliases": setting, "per_class": quota, "queries": spec.n_queries,
                       "seconds": round(time.perf_counter() - started, 2), "weak_aliases": flagged,
                       "alias_rows": {s.name: s.aliases for s in result.stats if s.aliases}} | figures
                runs.append(run)
                print(f"{mode:4} {setting:7} {quota or '-':>5} {run['rows']:5d} {run['pair_precision']:6.3f} "
                      f"{run['labels']:6d} {run['precision']:7.3f} {run['macro_precision']:6.3f} "
                      f"{run['correct']:7d} {run['recall']:6.3f} {run['largest_class']:7d} "
                      f"{run['smallest_class']:8d}", flush=True)
                if flagged and quota is None:
                    print(f"     weak aliases: {', '.join(flagged)}")
    write_text(args.out, json.dumps({"index": str(args.index), "corpus": str(args.corpus), "k": args.k,
                                     "templates": len(templates), "aliases_file": str(args.aliases),
                                     "runs": runs}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
