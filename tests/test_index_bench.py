"""The index benchmark at 100k x 512: the chosen, tuned index must hold its
recall on a second, held-out query set (a loose bound; no timing assertion)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "index_bench.py"


@pytest.mark.slow
def test_index_bench_100k(tmp_path):
    spec = importlib.util.spec_from_file_location("index_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--n", "100000", "--queries", "300", "--work", str(tmp_path), "--json",
                         str(tmp_path / "bench.json")])
    assert result["tune_recall"] >= 0.95  # the tuner met its target on the tuning queries
    assert result["eval_recall"] >= 0.85  # and it carries over to queries it never saw
    assert result["exact_qps"] > 0 and result["eval_qps"] > 0
    assert {c["factory"].split("_")[0].rstrip("0123456789") for c in result["candidates"]} >= {"HNSW", "IVF"}
    assert (tmp_path / "bench.json").is_file()
