"""benchmarks/service_bench.py end to end on a tiny corpus: structure of its output, no failed request.

No timing is asserted: the figures depend on the machine and its load."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_service_bench_smoke(tmp_path):
    import service_bench

    out = tmp_path / "bench.json"
    result = service_bench.main(["--n", "5000", "--dim", "64", "--cache", str(tmp_path / "cache"),
                                 "--clients", "4", "--duration", "1", "--warmup", "0.2", "--compare-batching",
                                 "--task-classes", "20", "--load-test", "3", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["n"] == 5000 and result["index"]["count"] == 5000 and result["index_build_s"] > 0
    points = {(r["input"], r["clients"], r["batching"]) for r in result["search"]}
    assert points == {(i, 4, b) for i in ("embedding", "text") for b in (True, False)}
    for r in result["search"]:
        assert r["failed"] == 0 and r["requests"] > 0 and r["qps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    task = result["task"]
    assert task["classes"] == 20 and task["templates"] == 80 and task["queries"] == 1600
    assert 0 < task["rows"] <= task["hits"] <= 1600 * 50 and task["parquet_bytes"] > 0
    load = result["load_test"]
    assert load["failed"] == 0 and load["requests"] > 0 and set(load["status"]) <= {"200", "202"}
    assert {"embedding", "text"} <= set(load["kinds"]) and load["peak_rss_mib"] >= load["rss_mib_before"] > 0
    # A second run reuses the cached index instead of building it again.
    import service_corpus

    again = service_corpus.prepare(tmp_path / "cache", 5000, 64)
    assert again.build_s is None and again.index_dir.name == "index_5000_64" and len(again.queries) == 1000
