"""How far the gates open, and what it buys: ``react customize`` at several
``--gate-lr`` settings on the same data, each evaluated zero-shot.

    .venv/bin/python benchmarks/gate_lr.py --base out/demo/base --shards out/demo/shards \\
        --corpus "$(.venv/bin/react corpus fetch-embedded)" --out out/gate_lr --gate-lrs 0 5e-3 5e-2 --steps 128 --seed 0

``--shards`` is a ``react download`` output; without it, ``--subset`` pairs
with a local ``image_path`` (what ``react retrieve`` writes for a local corpus)
are written as shards in that layout first. ``0`` means "same as --lr".
Prints one row per setting: loss, zero-shot top-1 and mean per-class recall
on the corpus' downstream task, wall time and the final tanh(alpha) per block;
the table in docs/customize.md ("Gate learning rate") came from seeds 0 and 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_shards(subset: Path, corpus: Path, out: Path, per_shard: int = 1000) -> Path:
    import pyarrow.parquet as pq
    import webdataset as wds

    if (out / "sizes.json").is_file():
        return out
    rows = pq.read_table(subset, columns=["key", "caption", "image_path"]).to_pylist()
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, row in enumerate(rows):
            sink.write({"__key__": f"{i:09d}", "jpg": (corpus / row["image_path"]).read_bytes(),
                        "txt": row["caption"], "json": json.dumps({"subset_key": row["key"]}).encode()})
            name = f"{i // per_shard:05d}.tar"
            sizes[name] = sizes.get(name, 0) + 1
    (out / "sizes.json").write_text(json.dumps(sizes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True)
    parser.add_argument("--corpus", type=Path, required=True, help="corpus directory (its downstream task is the eval)")
    parser.add_argument("--subset", type=Path, default=None)
    parser.add_argument("--shards", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gate-lrs", type=float, nargs="+", default=[0.0, 1e-2, 5e-2])
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more react customize options")
    args = parser.parse_args()

    from react.cli import run

    shards = args.shards or write_shards(args.subset, args.corpus, args.out / "shards")
    rows = []
    for gate_lr in args.gate_lrs:
        run_dir = args.out / f"run-gatelr{gate_lr:g}-s{args.seed}"
        argv = ["customize", "--base", args.base, "--train-data", str(shards), "--out", str(run_dir), "--overwrite",
                "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                "--seed", str(args.seed), "--log-every", "10", *args.extra]
        if gate_lr > 0:
            argv += ["--gate-lr", str(gate_lr)]
        started = time.time()
        if run(argv) != 0:
            raise SystemExit(f"failed: react {' '.join(argv)}")
        wall = time.time() - started
        result = args.out / f"zeroshot-gatelr{gate_lr:g}-s{args.seed}.json"
        if run(["eval", "zeroshot", "--model", str(run_dir), "--dataset", str(args.corpus), "--out", str(result)]) != 0:
            raise SystemExit("evaluation failed")
        metrics = json.loads(result.read_text())["metrics"]
        last = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()][-1]
        rows.append({"gate_lr": gate_lr or args.lr, "loss": last["loss"], "gates": last["gates"],
                     "top1": metrics["top1"], "mean_per_class_recall": metrics["mean_per_class_recall"],
                     "wall_s": round(wall, 1)})
    print(f"{'gate lr':>8} {'loss':>7} {'top-1':>6} {'recall':>6} {'wall s':>7}  tanh(alpha) attn/mlp per block")
    for r in rows:
        gates = "  ".join(f"L{k} {a:+.2f}/{m:+.2f}" for k, (a, m) in r["gates"].items())
        print(f"{r['gate_lr']:>8g} {r['loss']:>7.3f} {100 * r['top1']:>6.2f} {100 * r['mean_per_class_recall']:>6.2f} "
              f"{r['wall_s']:>7.1f}  {gates}")
    (args.out / "gate_lr.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
