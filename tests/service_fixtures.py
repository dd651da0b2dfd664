"""A tiny index whose answers are known exactly, and a real uvicorn on loopback.

The corpus is built *around* the tiny model's own query embeddings: with
``Q`` the queries (class x template), the image vector of a pair is
``pinv(Q) @ target``, so every query's score on every pair has the sign we
choose. Pairs:

- ``cat`` and ``cat-copy`` (a near-duplicate image, cosine > 0.99): positive for cat queries only;
- ``catdog``: positive for cat and dog queries -- must appear once, labelled with both;
- ``dog``, ``car``: positive for their class only;
- 55 distractors: negative for every query.

With ``threshold=0`` only the positive hits survive, so the subset is known
exactly; the model, the index, the search and the merge are all real.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

CLASSES = ["cat", "dog", "car"]
TEMPLATES = ["a photo of a {}.", "a picture of a {}."]
N_DISTRACTORS = 55


def build_task_index(root: Path, model, model_dir: Path) -> Path:
    from index.build import build_index
    from index.embed import write_embedding_folder

    queries = [t.format(c) for c in CLASSES for t in TEMPLATES]
    q = model.encode_texts(queries).numpy().astype(np.float64)
    pinv = np.linalg.pinv(q)
    dim = q.shape[1]
    rng = np.random.default_rng(0)
    null = np.eye(dim) - pinv @ q  # projector onto directions no query sees

    def pair(*classes: str) -> np.ndarray:
        target = np.array([1.0 if c in classes else -0.5 for c in CLASSES for _ in TEMPLATES])
        return pinv @ target

    cat = pair("cat")
    copy = cat + 0.03 * np.linalg.norm(cat) * (null @ rng.normal(size=dim)) / np.sqrt(dim)
    named = {"cat": cat, "cat-copy": copy, "catdog": pair("cat", "dog"), "dog": pair("dog"), "car": pair("car")}
    distract = [pinv @ -np.ones(len(queries)) + 0.5 * np.linalg.norm(cat) * (null @ rng.normal(size=dim)) / np.sqrt(dim)
                for _ in range(N_DISTRACTORS)]
    img = np.stack(list(named.values()) + distract).astype(np.float32)
    keys = list(named) + [f"noise-{i}" for i in range(N_DISTRACTORS)]
    meta = pa.table({"key": keys, "caption": [f"a {k.replace('-', ' ')} picture" for k in keys],
                     "url": [f"http://corpus.invalid/{k}.jpg" for k in keys]})
    emb = root / "emb"
    write_embedding_folder(emb, img, img.copy(), meta, part_size=40, model=str(model_dir))
    manifest = json.loads((emb / "embed.json").read_text())
    manifest["model_id"] = model.identity  # what `react embed` records for a model directory
    (emb / "embed.json").write_text(json.dumps(manifest))
    out = root / "index"
    build_index(emb, out, n_queries=20, k=10)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn serving ``app`` on a loopback port, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        from retrieval_service.serve import bind

        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("service did not become ready")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_serve(args: list[str], state: Path, columns: int = 300):
    """A real ``react serve ARGS`` on a free loopback port (``--port 0``); returns
    ``(process, base url)`` once it has printed its address (not yet ready)."""
    import os
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "react", "serve", *args, "--port", "0",
                             "--state-dir", str(state), "--log-level", "warning"],
                            stderr=subprocess.PIPE, text=True, env=os.environ | {"COLUMNS": str(columns)})
    while True:
        line = proc.stderr.readline()
        if not line:
            proc.kill()
            raise AssertionError("react serve exited before printing its address")
        if m := re.search(r"on (http://127\.0\.0\.1:\d+)", line):
            return proc, m.group(1)

