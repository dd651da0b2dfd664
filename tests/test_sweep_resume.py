"""The tuning scripts' shared runner (benchmarks/react_effect.py ``score_runs``): runs two at a
time, scored on the validation half, and resumable from its results.jsonl."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_runs_are_scored_reused_and_retrained_when_their_options_change(tiny_model_dir, stamp_corpus, tmp_path,
                                                                        monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from react_effect import score_runs
    from test_customize import _write_shards

    from react.datasets import SEALED_ENV

    monkeypatch.setenv(SEALED_ENV, "")  # score_runs seals the test split: undone after this test
    held_out = pq.read_table(stamp_corpus / "downstream.parquet")
    pq.write_table(held_out.append_column("image_path", pa.array([f"cutouts/{k}.png" for k in held_out["key"].to_pylist()])),
                   stamp_corpus / "downstream.parquet")

    shards = str(_write_shards(tmp_path / "shards"))
    common = ["--steps", "2", "--batch-size", "4", "--device", "cpu"]
    runs = [["m/a", shards, *common, "--seed", "0"], ["b", shards, *common, "--seed", "1"]]  # a sweep names runs MODE/RECIPE
    out = tmp_path / "sweep"
    rows = score_runs(str(tiny_model_dir), stamp_corpus, ["stamps"], runs, out, parallel=2)
    assert [r["name"] for r in rows] == ["base", "m/a", "b"]
    assert all(0 <= r["top1"] <= 1 for r in rows) and rows[0]["images"] == {"stamps": 3}  # the val half only
    assert [r["name"] for r in _lines(out)] == ["m/a", "b"] and (out / "logs" / "m_a.log").is_file()

    again = score_runs(str(tiny_model_dir), stamp_corpus, ["stamps"], runs, out, parallel=2)
    assert again[1:] == rows[1:] and len(_lines(out)) == 2  # read back, nothing trained

    runs[1] = ["b", shards, *common, "--seed", "2"]
    changed = score_runs(str(tiny_model_dir), stamp_corpus, ["stamps"], runs, out, parallel=1)
    assert [r["name"] for r in _lines(out)] == ["m/a", "b", "b"]
    assert changed[1] == rows[1] and changed[2]["options"].endswith("--seed 2")
