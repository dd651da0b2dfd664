"""``react index tune`` and ``react index eval`` on a built index folder.

Both need the embedding folder the index came from (for exact ground truth);
its checksum must still match the one in ``index.json``, so recall is never
measured against vectors that have changed since the build.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from index.build import Built, check_args, tune_built
from index.defaults import K, N_QUERIES, SEED, TARGET_RECALL
from index.exact import recall_at
from index.factory import knob_grid, with_knob
from index.query import QuerySet
from index.searcher import _Modality, read_faiss, read_manifest
from index.tune import default_queries, ground_truth, load_queries, timed
from index.vectors import EmbeddingFolder
from react.errors import ReactError
from react.progress import console
from react.schemas import INDEX_JSON, write_text

EVAL_KS = (1, 10, 50)


def open_source(index_dir: Path, manifest: dict, embeddings: str | os.PathLike | None) -> EmbeddingFolder:
    path = Path(embeddings or manifest.get("embeddings") or "")
    if not path.is_dir():
        raise ReactError(f"embedding folder of {index_dir} not found at {path} (pass --embeddings)")
    folder = EmbeddingFolder.open(path)
    with console.status("checksumming the embedding folder"):
        checksum = folder.checksum()
    if checksum != manifest.get("checksum"):
        raise ReactError(f"{path} has changed since {index_dir} was built (checksum differs); rebuild the index")
    return folder


def _loaded(index_dir: Path, name: str, entry: dict, rows: int) -> tuple[_Modality, Built]:
    mod = _Modality(index_dir, name, entry, rows)
    mod.index = read_faiss(index_dir / entry["file"], entry.get("bytes"))  # writable copy: re-ranking maps ids
    ids = np.asarray(mod.ids) if mod.ids is not None else np.arange(mod.index.ntotal)
    return mod, Built(mod.candidate, mod.index, ids, float(entry.get("build_s", 0.0)))


def _queries(folder: EmbeddingFolder, name: str, queries, n_queries: int, seed: int) -> QuerySet:
    if queries:
        return load_queries(queries, folder.dim, n_queries, seed)
    return default_queries(folder, name, n_queries, seed)


def retune_index(index_dir: str | os.PathLike, *, target_recall: float = TARGET_RECALL, k: int = K, queries=None,
                 n_queries: int = N_QUERIES, embeddings=None, seed: int = SEED) -> dict:
    """Re-measure and re-pick the search parameters; rewrites index.json only."""
    check_args(target_recall, k, n_queries)
    root = Path(index_dir)
    manifest = read_manifest(root)
    folder = open_source(root, manifest, embeddings)
    for name, entry in manifest["indices"].items():
        mod, built = _loaded(root, name, entry, manifest["rows"])
        qs = _queries(folder, name, queries, n_queries, seed)
        measured = tune_built(built, folder, name, qs, k, target_recall, mod.shift)
        entry.update(measured)
        console.print(f"{name}: {entry['factory']} {measured['search_params']}: recall@{k} "
                      f"{measured['recall']['value']:.3f}, {measured['qps']:,.0f} q/s ({measured['speedup']:.1f}x exact)")
    primary = manifest["indices"][next(iter(manifest["indices"]))]
    manifest.update(search_params=primary["search_params"], recall=primary["recall"], qps=primary["qps"])
    write_text(root / INDEX_JSON, json.dumps(manifest, indent=2) + "\n")
    return manifest


def evaluate_index(index_dir: str | os.PathLike, *, queries=None, n_queries: int = N_QUERIES, embeddings=None,
                   ks: tuple[int, ...] = EVAL_KS, seed: int = SEED) -> dict:
    """Recall@ks and queries/s along each index's knob, next to exact search."""
    root = Path(index_dir)
    manifest = read_manifest(root)
    folder = open_source(root, manifest, embeddings)
    kmax = max(ks)
    report: dict = {"index": str(root), "ks": list(ks), "tables": {}}
    for name, entry in manifest["indices"].items():
        mod, built = _loaded(root, name, entry, manifest["rows"])
        qs = _queries(folder, name, queries, n_queries, seed)
        truth = ground_truth(lambda: folder.stream(name), qs, kmax)
        search = built.searcher(folder, name, mod.shift)
        tuned = dict(entry["search_params"])
        knob = built.candidate.knob
        rows = [{"setting": "exact (IndexFlatIP)", **{f"recall@{k}": 1.0 for k in ks}, "qps": round(truth.exact_qps, 1)}]
        for value in knob_grid(built.candidate, kmax, built.count) or [None]:
            params = tuned | with_knob(built.candidate, value)
            found = search(qs.vectors, kmax, params, qs.exclude)[1]
            secs = timed(lambda: search(qs.vectors, kmax, params, None))
            rows.append({"setting": f"{knob}={value}" if knob else "as built",
                         **{f"recall@{k}": round(recall_at(found[:, :k], truth.rows[:, :k], k), 4) for k in ks},
                         "qps": round(len(qs) / secs, 1), "tuned": value == tuned.get(knob)})
        for row in rows:
            row["x_exact"] = round(row["qps"] / max(truth.exact_qps, 1e-9), 2)
        report["tables"][f"{name} ({qs.name})"] = {"factory": entry["factory"], "rows": rows,
                                                   "extra_params": {p: v for p, v in tuned.items() if p != knob}}
    return report


def print_report(report: dict) -> None:
    from rich.table import Table

    for title, table in report["tables"].items():
        extra = ", ".join(f"{k}={v}" for k, v in table["extra_params"].items())
        out = Table(title=f"{title}: {table['factory']}" + (f" [{extra}]" if extra else ""))
        columns = ["setting"] + [f"recall@{k}" for k in report["ks"]] + ["qps", "x_exact"]
        for col in columns:
            out.add_column(col, justify="left" if col == "setting" else "right")
        for row in table["rows"]:
            style = "bold green" if row.get("tuned") else None
            out.add_row(*[f"{row[c]:.3f}" if c.startswith("recall") else
                          f"{row[c]:,.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns], style=style)
        console.print(out)
