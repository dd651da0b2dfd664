"""benchmarks/scale_bench.py end to end on a small corpus: an on-disk build under a
budget, the same build on Spark (local[2]), the served task, the extrapolation.

No timing is asserted: the figures depend on the machine and its load."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_scale_bench_smoke(tmp_path):
    import scale_bench

    out = tmp_path / "bench.json"
    result = scale_bench.main(["--n", "30000", "--dim", "64", "--part-size", "12000", "--memory-gb", "0.5",
                               "--factory", "IVF128_HNSW32,SQ8", "--queries", "200", "--task-classes", "10",
                               "--spark", "local[2]", "--work", str(tmp_path / "work"), "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    for name in ("single", "spark"):
        build = result[f"build_{name}"]
        assert build["rc"] == 0 and build["index_bytes"] > 0 and build["peak_rss_mib"] > 0
        assert 0.8 <= build["held_out"]["recall"] <= 1.0 and build["held_out"]["queries"] == 200
    assert result["spark_recall_gap"] <= 0.01
    index = tmp_path / "work" / "index_30000_single"
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["indices"]["image"]["on_disk"] and (index / "image.ivfdata").is_file()
    task = result["serve"]["task"]
    assert task["classes"] == 10 and task["queries"] == 800 and 0 < task["rows"] <= task["hits"]
    rows = [r["rows"] for r in result["extrapolation"]]
    assert rows == [30_000, 400_000_000, 5_000_000_000]
