"""The HTTP API fuzzed from its own OpenAPI schema (issue 16).

schemathesis (pinned in the dev extra) reads ``/openapi.json`` of a real
``react serve`` process on loopback -- the tiny model and index of
service_fixtures, small configured limits -- and sends what the schema allows
and what it forbids to every operation, in all its phases (coverage: the
boundaries of every range and length; fuzzing; stateful: retrieve -> job ->
subset -> delete), with **every** check: no 5xx, every status code and content
type documented, every response valid against its schema, schema-valid
requests accepted, schema-violating ones refused, 405s with Allow, and (with
keys) no operation that ignores a missing key. Once without and once with
``--api-key-file``. A hang fails too: each request has a timeout, the whole
run another.

tests/schemathesis.toml holds the one stated exception (a query image must be
decodable, which no schema can say). The longer run in docs/service.md is the same
command with more examples per operation (``REACT_FUZZ_EXAMPLES``).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service_fixtures import build_task_index

pytest.importorskip("schemathesis")

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = int(os.environ.get("REACT_FUZZ_EXAMPLES", "8"))  # per operation and phase; the docs/service.md run: 150
SEED = os.environ.get("REACT_FUZZ_SEED", "16")
KEY = "fuzz-key-0123456789"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model, tiny_model_dir) -> Path:
    return build_task_index(tmp_path_factory.mktemp("fuzz"), tiny_model, tiny_model_dir)


def serve(index: Path, tmp: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    """``react serve`` on a free loopback port with small limits; returns (process, url, log file)."""
    log = tmp / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "react", "serve", "--index", f"tiny={index}", "--port", "0",
             "--state-dir", str(tmp / "state"), "--log-level", "warning", "--max-k", "100", "--max-classes", "20",
             "--max-templates", "8", "--max-image-mb", "0.5", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"COLUMNS": "200"})
    deadline = time.monotonic() + 90
    url = None
    while url is None:
        assert proc.poll() is None, f"react serve exited: {log.read_text()}"
        assert time.monotonic() < deadline, "react serve printed no address"
        if m := re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text()):
            url = m.group(1)
        time.sleep(0.1)
    while httpx.get(url + "/readyz").status_code != 200:
        assert time.monotonic() < deadline, "react serve not ready"
        time.sleep(0.1)
    return proc, url, log


def schemathesis_run(url: str, cwd: Path, *extra: str, examples: int = EXAMPLES,
                     timeout: float = max(240.0, 4.0 * 17 * EXAMPLES)) -> tuple[int, str]:
    """The CLI, every check, one worker (a 2-core machine serves too); returns (exit status, output)."""
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "--config-file", str(CONFIG), "run", url + "/openapi.json", "--checks", "all",
           "--max-examples", str(examples), "--seed", SEED, "--workers", "1", "--request-timeout", "20",
           "--generation-database", "none", "--no-color", *extra]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=os.environ | {"COLUMNS": "200"})
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("with_key", [False, True], ids=["open", "api-key"])
def test_schemathesis_every_operation_every_check(index_dir, tmp_path, with_key):
    extra_serve, extra_st = (), ()
    if with_key:
        (tmp_path / "keys.txt").write_text(f"# fuzz\n{KEY}\n")
        extra_serve = ("--api-key-file", str(tmp_path / "keys.txt"))
        extra_st = ("--header", f"Authorization: Bearer {KEY}")
    proc, url, log = serve(index_dir, tmp_path, *extra_serve)
    try:
        if with_key:  # the schema says so, and the service does it
            assert httpx.get(url + "/v1/indices").status_code == 401
            schema = httpx.get(url + "/openapi.json", headers={"X-API-Key": KEY}).json()
            assert schema["security"] and schema["paths"]["/healthz"]["get"]["security"] == []
        status, output = schemathesis_run(url, tmp_path, *extra_st)
        summary = re.search(r"(\d+) generated, (\d+) passed", output)
        assert status == 0 and summary, output[-6000:]
        assert "Network Error" not in output and "errored" not in output, output[-6000:]
        assert re.search(r"Tested: 17\b", output), output[-3000:]  # every operation, none skipped
        assert int(summary.group(1)) >= 17 * EXAMPLES, output[-2000:]
        print(f"schemathesis ({'api key' if with_key else 'open'}, -n {EXAMPLES}): {summary.group(0)}, "
              + re.search(r"in [\d.]+s", output.splitlines()[-1] + " in 0s").group(0))
        assert proc.poll() is None  # still serving
        assert httpx.get(url + "/readyz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
