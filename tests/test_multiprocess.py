"""Two real processes on the CPU (gloo), started by ``accelerate launch``:
``react embed`` and ``react customize`` give what one process gives.

``accelerate launch --cpu --num_processes 2`` starts ONE process unless it is
given an MPI hostfile, so the launch here is ``--multi_gpu`` with CUDA hidden:
torchrun starts two processes and the project's code picks gloo because it
computes on the CPU. Every launch is checked to have really run two.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from react.schemas import img_emb_path, metadata_path, text_emb_path

pytestmark = pytest.mark.slow

# Measured (2-core CPU, 4 steps, lr 1e-2): the embeddings are bit-identical; the
# customized weights differ by <= 1.7e-6 (absolute), AdamW's moments by <= 9e-7
# of each tensor's largest entry -- float reduction order (all-gather, gradient
# all-reduce, one vs two threads). Training on half the batch instead moves the
# weights by 3e-2.
EMB_ATOL = 1e-3          # one float16 ulp at 1.0
WEIGHT_ATOL = 2e-5
MOMENT_RTOL = 1e-4       # of the tensor's largest entry; a gradient off by the process count is off by 0.5+


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*argv: str, processes: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N -m react ARGV`` on the CPU."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1", NO_COLOR="1", COLUMNS="400")  # rich: no wrapped lines
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "react", *map(str, argv)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[1])


# --- react embed -----------------------------------------------------------------

def test_embed_two_processes_write_what_one_writes(tiny_model, tiny_model_dir, tmp_path):
    from index.embed import EMBED_JSON, check_embeddings, embed_corpus
    from test_embed import N, _parquet_corpus

    corpus = _parquet_corpus(tmp_path / "corpus")  # rows not in key order: order must follow the input
    one = tmp_path / "one"
    embed_corpus(corpus, tiny_model, one, part_size=2)
    two = tmp_path / "two"
    started = time.time()
    res = launch("embed", corpus, "--model", tiny_model_dir, "--out", two, "--part-size", "2", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    # rank 0 took parts 0 and 2, rank 1 parts 1 and 3: two processes really ran
    assert res.stderr.count(f"embedded 2 part(s), kept 0: {N} pairs") == 2, res.stderr[-3000:]
    assert res.stdout.split() == [str(two), str(two)]
    info = check_embeddings(two)
    assert info["parts"] == 4 and info["count"] == N and info["rows_per_part"] == [2, 2, 2, 1]
    worst = 0.0
    for part in range(4):
        for path in (img_emb_path, text_emb_path):
            a, b = np.load(path(one, part)), np.load(path(two, part))
            assert a.dtype == b.dtype == np.float16 and a.shape == b.shape
            worst = max(worst, float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()))
        assert pq.read_table(metadata_path(one, part)).equals(pq.read_table(metadata_path(two, part)))
    assert worst <= EMB_ATOL, worst
    # embed.json: rank 0's, written once after both ranks' parts, equal to the one-process manifest
    manifest = json.loads((two / EMBED_JSON).read_text())
    assert manifest == json.loads((one / EMBED_JSON).read_text())
    parts = [p for sub in ("img_emb", "text_emb", "metadata") for p in (two / sub).iterdir()]
    assert (two / EMBED_JSON).stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in parts)
    assert not list(two.rglob("*.tmp*"))
    print(f"embed: 2 processes {time.time() - started:.1f} s, max |diff| {worst:g}")


def test_embed_a_failing_process_fails_the_launch(tiny_model, tiny_model_dir, tmp_path):
    from index.embed import EMBED_JSON, embed_corpus
    from test_embed import _folder_corpus, _png

    corpus = _folder_corpus(tmp_path / "corpus")
    (corpus / "img3.png").write_bytes(b"not an image")  # row 3: part 1, rank 1's
    out = tmp_path / "emb"
    res = launch("embed", corpus, "--model", tiny_model_dir, "--out", out, "--part-size", "3", "--device", "cpu")
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert any("img3.png" in line for line in errors), res.stderr[-3000:]
    assert "exitcode  : 2" in res.stderr  # rank 1 exited with react's status for a user error
    assert not (out / EMBED_JSON).exists() and not metadata_path(out, 1).exists()
    # the image fixed, one process finishes the folder and writes the manifest
    (corpus / "img3.png").write_bytes(_png(3))
    result = embed_corpus(corpus, tiny_model, out, part_size=3, resume=True)
    assert result["embedded"] == [1] and (out / EMBED_JSON).is_file()


# --- react customize -------------------------------------------------------------

FAST = {"steps": 4, "batch_size": 8, "lr": 1e-2, "gate_lr": 5e-2, "warmup": 1, "save_every": 4, "log_every": 1,
        "workers": 0, "device": "cpu", "augment": "light"}


def _argv(base: Path, data: Path, out: Path, **kw) -> list[str]:
    argv = ["customize", "--base", str(base), "--train-data", str(data), "--out", str(out)]
    for key, value in (FAST | kw).items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _final(run: Path) -> tuple[dict[str, torch.Tensor], dict, list[float]]:
    from safetensors.torch import load_file

    step = run / "checkpoints" / f"step-{FAST['steps']:08d}"
    state = torch.load(step / "state.pt", map_location="cpu", weights_only=False)
    losses = [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    return load_file(str(step / "weights.safetensors")), state["optimizer"]["state"], losses


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from test_customize import _write_shards

    return _write_shards(tmp_path_factory.mktemp("mp") / "shards", pairs=32, per_shard=8)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, shards, tmp_path_factory) -> Path:
    """The reference: one process, global batch 8."""
    from customize.config import TrainConfig
    from customize.train import train

    run = tmp_path_factory.mktemp("mp") / "one"
    train(TrainConfig(base=str(tiny_model_dir), train_data=str(shards), out=str(run), **FAST))
    return run


@pytest.mark.parametrize("accum", [1, 2])
def test_customize_two_processes_equal_one_with_the_same_global_batch(tiny_model_dir, shards, one_process,
                                                                      tmp_path, accum):
    run = tmp_path / "two"
    res = launch(*_argv(tiny_model_dir, shards, run, accum_steps=accum))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count(str(run)) == 2  # both processes ran to the end
    w1, opt1, loss1 = _final(one_process)
    w2, opt2, loss2 = _final(run)
    assert loss2 == pytest.approx(loss1, abs=1e-4)
    weights = _max_diff(w1, w2)
    assert weights <= WEIGHT_ATOL, weights
    # AdamW's moments are linear / quadratic in the gradients: a gradient scaled by
    # the process count (which Adam's normalized steps would hide) shows here
    assert opt1.keys() == opt2.keys()
    moments = max(float((opt1[i][k] - opt2[i][k]).abs().max() / opt1[i][k].abs().max())
                  for i in opt1 for k in ("exp_avg", "exp_avg_sq"))
    assert moments <= MOMENT_RTOL, moments
    print(f"customize accum {accum}: max |weight diff| {weights:g}, max relative moment diff {moments:g}")


def test_the_equality_check_sees_a_wrong_split(tiny_model_dir, shards, one_process, tmp_path):
    """What one process alone would train on (batch 4, half the negatives) ends far
    outside the tolerance: the equality above is not vacuous."""
    from customize.config import TrainConfig
    from customize.train import train

    run = tmp_path / "half"
    train(TrainConfig(base=str(tiny_model_dir), train_data=str(shards), out=str(run), **(FAST | {"batch_size": 4})))
    assert _max_diff(_final(one_process)[0], _final(run)[0]) > 100 * WEIGHT_ATOL


def test_uneven_split_is_refused_before_training(tiny_model_dir, shards, tmp_path, capsys):
    from customize.config import check_split
    from react.cli import run as cli
    from react.errors import ReactError

    run = tmp_path / "run"
    res = launch(*_argv(tiny_model_dir, shards, run, batch_size=12, accum_steps=4))
    assert res.returncode != 0
    expected = ("error: --batch-size 12 over 2 processes is 6 per process, which is not divisible by "
                "--accum-steps 4 (use a multiple of 8)")
    # each process refuses on its own (their lines may interleave, or the launcher
    # may stop the slower one before it prints)
    assert expected in res.stderr, res.stderr[-3000:]
    assert "exitcode  : 2" in res.stderr
    assert not run.exists()  # refused before the run directory, a model or a step
    with pytest.raises(ReactError, match=r"^--batch-size 7 is not divisible by the 2 processes \(use a multiple of 2\)$"):
        check_split(7, 1, 2)
    check_split(16, 4, 2)
    # one process: the same check, from the CLI
    assert cli(_argv(tiny_model_dir, shards, tmp_path / "r1", batch_size=6, accum_steps=4)) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --batch-size 6 is not divisible by --accum-steps 4 (use a multiple of 4)"
