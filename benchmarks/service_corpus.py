"""The corpus, model and index that benchmarks/service_bench.py serves, built once and cached.

Layout under ``--cache`` (default ``out/bench/service``)::

    model/                       tiny open_clip CLIP, embed_dim = DIM (a local-dir: checkpoint)
    emb_{n}_{dim}/               embedding folder (index.embed.write_embedding_folder), metadata key/url/caption
    index_{n}_{dim}/             `react index build EMB --modality image --queries tune.npy` output
    queries_{n}_{dim}.npy        held-out CLIP-like class-name queries (embedding input)

Why a tiny model: text input needs the index to carry a model whose text tower
encodes to the index's dimension, and no CLIP weights can be fetched here. The
test suite's tiny open_clip CLIP (tests/conftest.py: 1 text layer, width 32)
is built here with ``embed_dim`` 512 instead of 32, seeded, and saved through
``react.models.save_model`` exactly as the tests and ``react base`` save theirs;
the index records it (path and weight digest) so ``react serve`` loads it and
``Searcher.check_model`` accepts it. Its text vectors are meaningless against
CLIP-like image vectors, so text-input figures measure the service (tokenize,
encode, search, metadata, HTTP) with a model whose forward pass is cheap; a
real CLIP text tower (12 layers, width 512) would cost far more per prompt and
dominate (not measured here). The embedding-input figures use the real query
distribution.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clip_like  # noqa: E402

TINY_TEXT_CFG = {  # tests/conftest.py's TINY_CFG at the benchmark's dimension
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
ADJECTIVES = ("red", "small", "old", "wild", "striped", "wooden", "frozen", "golden", "tiny", "giant", "spotted",
              "metal", "paper", "glass", "stone", "silver", "green", "blue", "dark", "bright", "curly", "round",
              "square", "flying", "sleeping", "broken", "ancient", "modern", "plastic", "velvet", "woolen",
              "rusty", "shiny", "dusty", "striped-tail", "long-eared", "short-haired", "spiny", "feathered", "bald")
NOUNS = ("cat", "dog", "truck", "chair", "bird", "lamp", "boat", "tree", "house", "bridge", "guitar", "shoe",
         "kettle", "clock", "horse", "frog", "camera", "bottle", "mushroom", "tower", "robot", "violin", "lizard",
         "teapot", "bicycle")


@dataclass
class Corpus:
    n: int
    dim: int
    model_dir: Path
    emb_dir: Path
    index_dir: Path
    queries: np.ndarray      # [m, dim] float32 unit rows, never used to tune the index
    build_s: float | None    # None: reused from the cache


def class_names(n: int = 1000) -> list[str]:
    """``n`` distinct two-word class names (adjective noun), deterministic."""
    names = [f"{a} {b}" for b in NOUNS for a in ADJECTIVES]
    if n > len(names):
        names += [f"{b} number {i}" for i in range(n - len(names)) for b in NOUNS[:1]]
    return names[:n]


def tiny_model(out: Path, dim: int) -> Path:
    """The seeded tiny CLIP at ``dim`` (saved once; the same weights every time)."""
    if (out / "open_clip_config.json").is_file():
        return out
    import open_clip
    import torch

    from react.models import save_model

    torch.manual_seed(0)
    cfg = {"embed_dim": dim, **TINY_TEXT_CFG}
    save_model(open_clip.CLIP(**cfg), cfg, out, preprocess_cfg={"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    return out


def _metadata(n: int):
    import pyarrow as pa

    # Real-looking rows so the per-hit metadata lookup costs what it would on LAION's parquet.
    words = np.array([f"{a} {b}" for a in ADJECTIVES for b in NOUNS])
    rng = np.random.default_rng(1)
    caption = [f"a photo of a {words[i]} next to a {words[j]}, item {r}"
               for r, (i, j) in enumerate(rng.integers(0, len(words), (n, 2)))]
    return pa.table({"key": [f"{i:09d}" for i in range(n)],
                     "url": [f"http://corpus.invalid/images/{i // 1000:06d}/{i:09d}.jpg" for i in range(n)],
                     "caption": caption})


def prepare(cache: Path, n: int, dim: int = 512, n_queries: int = 1000, seed: int = 0,
            log=print) -> Corpus:
    """Build (or reuse from ``cache``) the tiny model, the embedding folder and the index."""
    from react.cli import run
    from react.models import load_model

    cache.mkdir(parents=True, exist_ok=True)
    model_dir = tiny_model(cache / f"model_{dim}", dim)
    emb, idx = cache / f"emb_{n}_{dim}", cache / f"index_{n}_{dim}"
    qpath, tpath = cache / f"queries_{n}_{dim}.npy", cache / f"tune_{n}_{dim}.npy"
    if _usable(idx, n) and qpath.is_file():
        return Corpus(n, dim, model_dir, emb, idx, np.load(qpath), None)
    started = time.perf_counter()
    log(f"generating {n:,} x {dim} CLIP-like pairs")
    img, txt, q = clip_like.generate(n, dim, n_queries=2 * n_queries, seed=seed)
    shutil.rmtree(emb, ignore_errors=True)
    identity = load_model(model_dir, device="cpu").identity
    from index.embed import write_embedding_folder

    write_embedding_folder(emb, img, txt, _metadata(n), part_size=250_000, model=str(model_dir.resolve()))
    del img, txt
    manifest = json.loads((emb / "embed.json").read_text())
    manifest["model_id"] = identity  # what `react embed` records for a model directory: its weight digest
    (emb / "embed.json").write_text(json.dumps(manifest, indent=2) + "\n")
    np.save(tpath, q[:n_queries])
    np.save(qpath, q[n_queries:])
    log(f"react index build {emb} --out {idx} --modality image --queries {tpath} --overwrite")
    if run(["index", "build", str(emb), "--out", str(idx), "--modality", "image", "--queries", str(tpath),
            "--overwrite"]) != 0:
        raise RuntimeError("react index build failed")
    return Corpus(n, dim, model_dir, emb, idx, q[n_queries:], round(time.perf_counter() - started, 1))


def _usable(idx: Path, n: int) -> bool:
    try:
        manifest = json.loads((idx / "index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("rows") == n and "image" in manifest.get("indices", {})


def index_summary(idx: Path) -> dict:
    m = json.loads((idx / "index.json").read_text())
    e = m["indices"]["image"]
    return {"factory": e["factory"], "search_params": e["search_params"], "recall": e["recall"]["value"],
            "recall_k": e["recall"]["k"], "index_qps_batched": e["qps"], "count": e["count"]}
