"""The demo's customizations side by side (demo.parallel_runs): real ``react customize``
child processes on the tiny fixture model, against the same runs in this process."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from demo.parallel_runs import Job, plan_slots, run_jobs, run_parallel
from react.errors import ReactError


def _argv(base: Path, shards: Path, out: Path, seed: int) -> list[str]:
    return ["customize", "--base", str(base), "--train-data", str(shards), "--out", str(out), "--device", "cpu",
            "--steps", "3", "--batch-size", "4", "--seed", str(seed), "--log-every", "1", "--overwrite"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from customize.checkpoint import WEIGHTS, latest_checkpoint

    return load_file(str(latest_checkpoint(run)[1] / WEIGHTS))


def test_runs_at_once_match_the_same_runs_one_after_the_other(tiny_model_dir, tmp_path):
    from test_customize import _write_shards

    from react.cli import run

    shards = _write_shards(tmp_path / "shards")
    jobs = [Job(f"s{seed}", _argv(tiny_model_dir, shards, tmp_path / "par" / f"s{seed}", seed),
                tmp_path / "par" / f"s{seed}", 3) for seed in range(3)]
    ran = run_jobs(jobs, parallel=2, logs=tmp_path / "logs")
    assert ran["parallel"] and ran["at_once"] == 2 and set(ran["walls"]) == {"s0", "s1", "s2"}
    for seed in range(3):
        assert run(_argv(tiny_model_dir, shards, tmp_path / "seq" / f"s{seed}", seed)) == 0
        parallel, alone = _weights(tmp_path / "par" / f"s{seed}"), _weights(tmp_path / "seq" / f"s{seed}")
        assert parallel.keys() == alone.keys()
        for name in alone:  # thread count changes summation order, nothing else
            torch.testing.assert_close(parallel[name], alone[name], rtol=1e-4, atol=1e-5)
        assert (tmp_path / "logs" / f"s{seed}.log").stat().st_size > 0
    # different seeds trained differently: the comparison above could fail
    s0, s1 = _weights(tmp_path / "par" / "s0"), _weights(tmp_path / "par" / "s1")
    assert any(not torch.equal(s0[k], s1[k]) for k in s0)


def test_one_slot_or_one_job_runs_in_this_process_without_threads(tmp_path):
    seen: list[list[str]] = []
    jobs = [Job(f"j{i}", ["customize", "--out", str(tmp_path / f"j{i}")], tmp_path / f"j{i}", 1) for i in range(2)]
    ran = run_jobs(jobs, parallel=1, logs=tmp_path / "logs", in_process=lambda job: seen.append(job.argv))
    assert not ran["parallel"] and seen == [j.argv for j in jobs] and set(ran["walls"]) == {"j0", "j1"}
    seen.clear()
    run_jobs(jobs[:1], parallel=2, logs=tmp_path / "logs", in_process=lambda job: seen.append(job.argv))
    assert seen == [jobs[0].argv]  # a lone job gains nothing from a child process
    assert not (tmp_path / "logs").exists()


def test_a_failed_run_is_named_with_its_log_and_stops_the_others(tiny_model_dir, tmp_path):
    from test_customize import _write_shards

    shards = _write_shards(tmp_path / "shards")
    slow = _argv(tiny_model_dir, shards, tmp_path / "slow", 0)
    slow[slow.index("--steps") + 1] = "100000"
    bad = _argv(tmp_path / "no-such-base", shards, tmp_path / "bad", 0)
    jobs = [Job("slow", slow, tmp_path / "slow", 100000), Job("bad", bad, tmp_path / "bad", 3)]
    with pytest.raises(ReactError, match=r"run failed: react customize .*no-such-base.*exit 2; log .*bad\.log"):
        run_parallel(jobs, slots=2, threads=1, logs=tmp_path / "logs")
    # the slow run was stopped, not left running
    assert not [cmd for cmd in _processes().values() if str(tmp_path / "slow") in cmd]


def _processes() -> dict[str, str]:
    """pid -> command line of every live process."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return found


def test_sigterm_to_the_parent_stops_its_runs(tiny_model_dir, tmp_path):
    """A scheduler's stop (or ``timeout``) sends SIGTERM to the parent only: its runs must not train on."""
    import signal
    import subprocess
    import sys
    import time

    from test_customize import _write_shards

    shards = _write_shards(tmp_path / "shards")
    slow = _argv(tiny_model_dir, shards, tmp_path / "slow", 0)
    slow[slow.index("--steps") + 1] = "100000"
    script = ("import sys; from pathlib import Path; from demo.parallel_runs import Job, run_parallel; "
              f"run_parallel([Job('slow', {slow!r}, Path({str(tmp_path / 'slow')!r}), 100000)], 1, 1, "
              f"Path({str(tmp_path / 'logs')!r}))")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    deadline = time.time() + 120
    while not (tmp_path / "slow" / "log.jsonl").is_file():  # the child is training
        assert time.time() < deadline and parent.poll() is None
        time.sleep(0.5)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    assert not [cmd for cmd in _processes().values() if str(tmp_path / "slow") in cmd]


def test_slots_default_to_the_cpus_and_refuse_zero(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    slots, threads = plan_slots(None)
    assert 1 <= slots <= 2 and threads >= 1
    assert plan_slots(1)[0] == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert plan_slots(None)[0] == 1
    with pytest.raises(ReactError, match="--parallel-runs 0"):
        plan_slots(0)


def test_demo_refuses_zero_parallel_runs_before_doing_anything(tmp_path, capsys):
    from react.cli import run

    assert run(["demo", "--out", str(tmp_path / "demo"), "--parallel-runs", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --parallel-runs 0: give 1 or more"]
    assert not (tmp_path / "demo").exists()
