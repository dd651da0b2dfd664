"""Kill anywhere (issue 16): SIGKILL a stage's CLI at a random moment, then check
that nothing under a final name is partial, that ``--resume`` (or a rerun)
finishes and leaves no debris, and that the result equals an uninterrupted run.

Stages, each on a fixture small enough that a kill + resume costs seconds:

    embed       react embed (image folder, tiny open_clip model, 6 parts)    bit-identical parts
    index       react index build --on-disk (IVF, partial indices + merge)   same metadata, same answers
    index-mem   react index build (in memory; a rerun must simply succeed)   same metadata, same answers
    download    react download (loopback HTTP server, 2-sample shards)       same samples, same sizes.json
    customize   react customize (120 steps, a checkpoint every 15)           bit-identical weights;
                                                                            at most one interval lost

Kill times are uniform in [0, T] with T the stage's uninterrupted wall time,
drawn from ``random.Random(seed)``. The soak:

    .venv/bin/python benchmarks/faults.py --kills 6 --seeds 0 1 --json out/faults/soak.json

(5 stages x 6 kills x 2 seeds = 60 kills) prints one line per kill and the
totals (kills, torn files, failed and differing resumes, training lost beyond
one checkpoint interval, debris). "kept" is the work a kill left committed
(whole parts, partial indices, shards, the last checkpoint's step): kills
landing in the start-up (imports, model load) keep nothing. tests/test_kill_anywhere.py
runs a few kills per stage through :func:`soak`.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def tiny_model(root: Path) -> Path:
    import open_clip
    import torch

    from react.models import save_model

    out = root / "tiny"
    if not (out / "open_clip_config.json").exists():
        torch.manual_seed(0)
        save_model(open_clip.CLIP(**TINY_CFG), TINY_CFG, out,
                   preprocess_cfg={"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    return out


def _jpeg(rng: np.random.Generator, size=(40, 48)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hidden(out: Path) -> list[str]:
    """Temporary names (``.NAME...``) inside ``out``: debris once a run has finished."""
    if not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*"))


def _siblings(out: Path) -> list[str]:
    """Temporary siblings (``.NAME.*``) a finished run left next to ``out``."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


class Stage:
    name = ""
    scale = 1  # --scale: more work per run, so that more kills land in it rather than in the start-up

    def setup(self, root: Path) -> None:
        """Build the stage's inputs under ``root`` (once)."""

    def argv(self, out: Path) -> list[str]:
        raise NotImplementedError

    def resume_argv(self, out: Path) -> list[str]:
        return self.argv(out) + ["--resume"]

    def torn(self, out: Path) -> list[str]:
        """Files under a final name that are not whole (checked right after the kill)."""
        raise NotImplementedError

    def result(self, out: Path):
        raise NotImplementedError

    def debris(self, out: Path) -> list[str]:
        return _hidden(out)

    def after_kill(self, out: Path) -> dict:
        return {}

    def after_resume(self, out: Path, before: dict) -> str | None:
        return None

    def close(self) -> None:
        pass


# --- embed ---------------------------------------------------------------------------------------

class Embed(Stage):
    name = "embed"
    N = 24

    def setup(self, root):
        self.model = tiny_model(root)
        self.corpus = root / f"embed-corpus-x{self.scale}"
        if not self.corpus.exists():
            self.corpus.mkdir(parents=True)
            rng = np.random.default_rng(0)
            for i in range(self.N * self.scale):
                (self.corpus / f"img{i:02d}.jpg").write_bytes(_jpeg(rng))
                (self.corpus / f"img{i:02d}.txt").write_text(f"a picture number {i} of a thing\n")

    def argv(self, out):
        return ["embed", str(self.corpus), "--model", str(self.model), "--out", str(out), "--part-size", str(4 * self.scale),
                "--device", "cpu", "--batch-size", "2"]

    def torn(self, out):
        import pyarrow.parquet as pq

        bad = []
        if not out.exists():
            return bad
        for p in sorted(out.rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            try:
                if p.suffix == ".npy":
                    np.load(p)
                elif p.suffix == ".parquet":
                    pq.read_table(p)
                elif p.suffix == ".json":
                    json.loads(p.read_text())
            except Exception as exc:  # noqa: BLE001 - any failure to read is a torn file
                bad.append(f"{p.relative_to(out)}: {type(exc).__name__}")
        return bad

    def after_kill(self, out):
        return {"kept": len(list((out / "metadata").glob("metadata_*.parquet"))) if out.exists() else 0}

    def result(self, out):
        import pyarrow.parquet as pq

        from index.embed import check_embeddings

        check_embeddings(out)
        got = {}
        for p in sorted(out.rglob("*")):
            if p.suffix == ".npy":
                got[str(p.relative_to(out))] = _sha(p)
            elif p.suffix == ".parquet":
                got[str(p.relative_to(out))] = pq.read_table(p).to_pylist()
        return got


# --- index build -----------------------------------------------------------------------------------

class Index(Stage):
    name = "index"
    on_disk = True

    def setup(self, root):
        from index.embed import write_embedding_folder

        self.emb = root / f"index-emb-x{self.scale}"
        if not (self.emb / "embed.json").exists():
            rng = np.random.default_rng(0)
            centers = rng.normal(size=(40, 32))
            labels = rng.integers(0, 40, size=12_000 * self.scale)
            img = (centers[labels] + rng.normal(scale=0.6, size=(len(labels), 32))).astype(np.float32)
            txt = (centers[labels] + rng.normal(scale=0.9, size=(len(labels), 32))).astype(np.float32)
            write_embedding_folder(self.emb, img, txt, part_size=2_000 * self.scale, model="synthetic")
        from index.vectors import EmbeddingFolder

        folder = EmbeddingFolder.open(self.emb)
        self.queries = folder.gather("text", folder.sample_rows(100, seed=11))[1]

    def argv(self, out):
        extra = ["--on-disk", "--factory", "IVF64_HNSW32,SQ8", "--memory-gb", "0.001"] if self.on_disk else \
            ["--factory", "IVF64_HNSW32,Flat"]
        return ["index", "build", str(self.emb), "--out", str(out), "--modality", "image", *extra]

    def resume_argv(self, out):
        # A rerun resumes (--on-disk) or simply rebuilds; a build killed after its folder was renamed
        # into place is done, and a rerun would rightly refuse to replace it.
        return None if (out / "index.json").exists() else self.argv(out)

    def torn(self, out):
        from index.searcher import Searcher

        if not out.exists():
            return []
        try:
            Searcher(out)
        except Exception as exc:  # noqa: BLE001
            return [f"{out.name}: {type(exc).__name__}: {exc}"]
        return []

    def after_kill(self, out):
        partials = [p for d in out.parent.glob(f".{out.name}.*partials*") for p in d.rglob("*") if p.is_file()]
        return {"kept": len(partials)}

    def result(self, out):
        from index.searcher import Searcher

        manifest = json.loads((out / "index.json").read_text())
        entry = manifest["indices"]["image"]
        searcher = Searcher(out)
        scores, rows = searcher.search(self.queries, 10)
        return {"factory": entry["factory"], "count": entry["count"], "search_params": entry["search_params"],
                "metadata": _sha(out / "metadata.arrow"), "rows": rows.tolist(),
                "scores": np.round(np.asarray(scores, np.float64), 5).tolist()}

    def debris(self, out):
        # The partial indices of a killed --on-disk build live beside INDEX_DIR until the merge succeeds.
        return _hidden(out) + _siblings(out)


class IndexInMemory(Index):
    name = "index-mem"
    on_disk = False


# --- download ------------------------------------------------------------------------------------

class Web:
    def __init__(self, images: dict[str, bytes], delay: float):
        web = self
        self.images = images

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = web.images.get(urlsplit(self.path).path)
                time.sleep(delay)
                if body is None:
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Download(Stage):
    name = "download"
    N = 6

    def setup(self, root):
        import pyarrow as pa
        import pyarrow.parquet as pq

        rng = np.random.default_rng(0)
        n = self.N * self.scale
        images = {f"/{i}.jpg": _jpeg(rng, (64 + 4 * (i % 16), 64)) for i in range(n)}
        images["/bad.jpg"] = b"<html>not an image</html>"
        self.web = Web(images, delay=0.05)
        self.subset = root / f"download-subset-x{self.scale}.parquet"
        keys = [f"s{i}" for i in range(n)] + ["bad"]
        urls = [f"{self.web.url}/{i}.jpg" for i in range(n)] + [f"{self.web.url}/bad.jpg"]
        pq.write_table(pa.table({"key": keys, "url": urls, "caption": [f"image {k}" for k in keys],
                                 "similarity": pa.array([0.5] * len(keys), pa.float32()),
                                 "classes": pa.array([["x"]] * len(keys), pa.list_(pa.string()))}),
                       self.subset)

    def argv(self, out):
        return ["download", str(self.subset), "--out", str(out), "--processes", "1", "--threads", "1",
                "--shard-size", "2", "--retries", "0", "--timeout", "5"]

    def torn(self, out):
        import pyarrow.parquet as pq

        from download.shardsdir import BrokenShard, check_shard

        bad = []
        if not out.exists():
            return bad
        for p in sorted(out.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue
            try:
                if p.suffix == ".tar":
                    with tarfile.open(p) as tf:
                        for m in tf:
                            if m.isfile() and len(tf.extractfile(m).read()) != m.size:
                                raise ValueError("short member")
                elif p.suffix == ".parquet":
                    pq.read_table(p)
                elif p.suffix == ".json":
                    json.loads(p.read_text())
            except Exception as exc:  # noqa: BLE001
                bad.append(f"{p.name}: {type(exc).__name__}")
        for stats in out.glob("*_stats.json"):  # a committed shard's three files agree
            try:
                check_shard(out, int(stats.name[:5]))
            except BrokenShard as exc:
                bad.append(f"{stats.name[:5]}: {exc}")
        return bad

    def after_kill(self, out):
        return {"kept": len(list(out.glob("*_stats.json"))) if out.exists() else 0}

    def result(self, out):
        got = {}
        for tar in sorted(out.glob("*.tar")):
            with tarfile.open(tar) as tf:
                members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
            for name, data in members.items():
                if name.endswith(".json"):
                    meta = json.loads(data)
                    key = meta["subset_key"]
                    stem = name[:-5]
                    got[key] = {"jpg": hashlib.sha256(members[f"{stem}.jpg"]).hexdigest(),
                                "txt": members[f"{stem}.txt"].decode(),
                                "size": (meta.get("width"), meta.get("height"))}
        summary = json.loads((out / "download.json").read_text()).get("summary", {}) \
            if (out / "download.json").exists() else {}
        return {"samples": got, "sizes": json.loads((out / "sizes.json").read_text()),
                "downloaded": summary.get("downloaded")}

    def close(self):
        self.web.close()


# --- customize -----------------------------------------------------------------------------------

class Customize(Stage):
    name = "customize"
    STEPS, EVERY = 120, 15

    def setup(self, root):
        import webdataset as wds

        self.model = tiny_model(root)
        self.shards = root / "customize-shards"
        if not (self.shards / "sizes.json").exists():
            self.shards.mkdir(parents=True)
            rng = np.random.default_rng(0)
            caps = ["a red square", "a blue circle", "a green triangle", "a yellow star"]
            with wds.ShardWriter(str(self.shards / "%05d.tar"), maxcount=8, verbose=0) as sink:
                for i in range(16):
                    sink.write({"__key__": f"{i:09d}", "jpg": _jpeg(rng), "txt": caps[i % 4],
                                "json": json.dumps({"subset_key": f"k{i}"}).encode()})
            (self.shards / "sizes.json").write_text(json.dumps({"00000.tar": 8, "00001.tar": 8}))

    def argv(self, out):
        return ["customize", "--base", str(self.model), "--train-data", str(self.shards), "--out", str(out),
                "--device", "cpu", "--steps", str(self.STEPS * self.scale), "--batch-size", "8", "--save-every",
                str(self.EVERY * self.scale), "--log-every", "1", "--workers", "0", "--lr", "1e-2", "--warmup", "1",
                "--threads", "1", "--no-compile"]

    def resume_argv(self, out):
        # --resume refuses a RUN_DIR that does not exist (a mistyped path must not start a new run):
        # a run killed before it made its folder is simply run again.
        return self.argv(out) + ["--resume"] if out.exists() else self.argv(out)

    def torn(self, out):
        from safetensors import safe_open

        bad = []
        for ckpt in sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else []:
            try:
                with safe_open(str(ckpt / "weights.safetensors"), "pt") as fh:
                    for k in fh.keys():
                        fh.get_tensor(k)
                import torch

                torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
                json.loads((ckpt / "meta.json").read_text())
            except Exception as exc:  # noqa: BLE001
                bad.append(f"{ckpt.name}: {type(exc).__name__}")
        for p in (out / "react_run.json",):
            if p.exists():
                try:
                    json.loads(p.read_text())
                except ValueError:
                    bad.append(p.name)
        return bad

    def after_kill(self, out):
        from customize.checkpoint import latest_checkpoint

        logged = 0
        if (out / "log.jsonl").exists():
            for line in (out / "log.jsonl").read_text().splitlines():
                try:
                    logged = max(logged, int(json.loads(line).get("step", 0)))
                except ValueError:
                    pass
        latest = latest_checkpoint(out) if out.exists() else None
        return {"logged": logged, "checkpoint": latest[0] if latest else 0, "kept": latest[0] if latest else 0}

    def after_resume(self, out, before):
        lost = before["logged"] - before["checkpoint"]
        if lost > self.EVERY * self.scale and before["logged"] < self.STEPS * self.scale:
            return f"lost {lost} steps (logged {before['logged']}, checkpoint {before['checkpoint']})"
        bad = []
        for line in (out / "log.jsonl").read_text().splitlines():
            try:
                json.loads(line)
            except ValueError:
                bad.append(line[:40])
        return f"log.jsonl has {len(bad)} torn line(s)" if bad else None

    def result(self, out):
        from safetensors.torch import load_file

        from customize.checkpoint import latest_checkpoint

        step, path = latest_checkpoint(out)
        weights = load_file(str(path / "weights.safetensors"))
        return {"step": step, **{k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in weights.items()}}


STAGES = {s.name: s for s in (Embed, Index, IndexInMemory, Download, Customize)}


# --- the harness ---------------------------------------------------------------------------------

@dataclass
class Report:
    stage: str
    kills: int = 0
    finished_before_kill: int = 0
    resumed_with_work_kept: int = 0  # kills after which some committed work was there to keep
    torn: list[str] = field(default_factory=list)
    failed_resumes: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    debris: list[str] = field(default_factory=list)
    uninterrupted_s: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.torn or self.failed_resumes or self.differing or self.lost or self.debris)


def cli(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "react", *argv], start_new_session=True, env=ENV,
                                stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)


def run_to_end(argv: list[str], log: Path, timeout: float = 600) -> int:
    proc = cli(argv, log)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -9


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1][:200] if lines else ""


def soak(stage_names: list[str], kills: int, seeds: list[int], root: Path, echo=print, scale: int = 1
         ) -> list[Report]:
    """``kills`` kills per stage and seed; returns one Report per stage."""
    reports = []
    for name in stage_names:
        stage = STAGES[name]()
        stage.scale = scale
        stage.setup(root)
        report = Report(name)
        started = time.time()
        try:
            ref = root / f"{name}-x{scale}-ref" / "out"
            ref.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            rc = run_to_end(stage.argv(ref), ref.parent / "log.txt")
            report.uninterrupted_s = time.time() - t0
            if rc != 0:
                raise RuntimeError(f"{name}: the uninterrupted run failed ({rc}): {_tail(ref.parent / 'log.txt')}")
            expected = stage.result(ref)
            normal = set(stage.debris(ref))  # what an uninterrupted run leaves too (download's log)
            for seed in seeds:
                rng = random.Random(f"{name}-{seed}")
                for k in range(kills):
                    work = root / f"{name}-x{scale}-s{seed}-k{k}"
                    work.mkdir(parents=True, exist_ok=True)
                    out, log = work / "out", work / "log.txt"
                    at = rng.uniform(0, report.uninterrupted_s)
                    proc = cli(stage.argv(out), log)
                    try:
                        proc.wait(timeout=at)
                        report.finished_before_kill += 1
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    report.kills += 1
                    torn = stage.torn(out)
                    report.torn += [f"seed {seed} kill {k}: {t}" for t in torn]
                    before = stage.after_kill(out)
                    report.resumed_with_work_kept += bool(before.get("kept"))
                    again = stage.resume_argv(out)
                    rc = run_to_end(again, log) if again else 0
                    verdict = "ok"
                    if rc != 0:
                        verdict = f"resume exit {rc}: {_tail(log)}"
                        report.failed_resumes.append(f"seed {seed} kill {k} at {at:.2f}s: {verdict}")
                    else:
                        if stage.result(out) != expected:
                            verdict = "differs"
                            report.differing.append(f"seed {seed} kill {k} at {at:.2f}s")
                        lost = stage.after_resume(out, before)
                        if lost:
                            verdict = lost
                            report.lost.append(f"seed {seed} kill {k}: {lost}")
                        left = [x for x in stage.debris(out) if x not in normal]
                        if left:
                            verdict = f"debris {left[:3]}"
                            report.debris.append(f"seed {seed} kill {k}: {left}")
                    if torn:
                        verdict = f"torn {torn[:2]}; {verdict}"
                    echo(f"{name:9s} seed {seed} kill {k:2d} at {at:6.2f}s of {report.uninterrupted_s:5.2f}s "
                         f"(kept {before.get('kept', 0)}): {verdict}")
        finally:
            stage.close()
        report.seconds = time.time() - started
        reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["embed", "index", "index-mem", "download", "customize"],
                        choices=list(STAGES))
    parser.add_argument("--kills", type=int, default=5, help="kills per stage and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--scale", type=int, default=1,
                        help="multiply each stage's work (images, rows, samples, steps) so that more kills land "
                             "in it rather than in the start-up")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="react-faults-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.time()
        reports = soak(args.stages, args.kills, args.seeds, root, scale=args.scale)
    total = {"kills": sum(r.kills for r in reports),
             "finished_before_kill": sum(r.finished_before_kill for r in reports),
             "resumed_with_work_kept": sum(r.resumed_with_work_kept for r in reports),
             "torn_files": sum(len(r.torn) for r in reports),
             "failed_resumes": sum(len(r.failed_resumes) for r in reports),
             "differing_resumes": sum(len(r.differing) for r in reports),
             "lost_beyond_one_interval": sum(len(r.lost) for r in reports),
             "debris": sum(len(r.debris) for r in reports),
             "seconds": round(time.time() - started, 1)}
    for r in reports:
        print(f"{r.stage:9s} kills {r.kills:3d} (finished first {r.finished_before_kill}, work kept "
              f"{r.resumed_with_work_kept}), torn {len(r.torn)}, "
              f"failed resumes {len(r.failed_resumes)}, differing {len(r.differing)}, lost {len(r.lost)}, "
              f"debris {len(r.debris)}; uninterrupted {r.uninterrupted_s:.1f} s, {r.seconds:.0f} s in all")
        for what in (r.torn, r.failed_resumes, r.differing, r.lost, r.debris):
            for line in what:
                print(f"  {r.stage}: {line}")
    print("total: " + ", ".join(f"{k} {v}" for k, v in total.items()))
    if args.json:
        args.json.write_text(json.dumps({"total": total, "stages": [r.__dict__ | {"ok": r.ok} for r in reports]},
                                        indent=2, default=str) + "\n")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
