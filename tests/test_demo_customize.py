"""The demo's control subset and its run-reuse rule."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.customize_runs import _run_state, random_subset
from react.errors import ReactError
from react.schemas import SUBSET_SCHEMA, write_parquet


def _corpus(tmp_path: Path, rows: int) -> Path:
    table = pa.table({"key": [f"k{i}" for i in range(rows)], "url": [f"http://x.invalid/{i}.jpg" for i in range(rows)],
                      "caption": [f"caption {i}" for i in range(rows)]})
    write_parquet(table, tmp_path / "retrieval.parquet")
    return tmp_path


def test_random_subset_draws_distinct_rows_deterministically(tmp_path):
    corpus = _corpus(tmp_path, 50)
    first = pq.read_table(random_subset(corpus, 20, 3, tmp_path / "a.parquet"))
    again = pq.read_table(random_subset(corpus, 20, 3, tmp_path / "b.parquet"))
    other = pq.read_table(random_subset(corpus, 20, 4, tmp_path / "c.parquet"))
    assert first.schema.equals(SUBSET_SCHEMA, check_metadata=False)
    keys = first["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 20
    assert keys == again["key"].to_pylist() != other["key"].to_pylist()
    # every row is the corpus' own pair
    assert all(cap == f"caption {k[1:]}" for k, cap in zip(keys, first["caption"].to_pylist()))
    assert first["classes"].to_pylist() == [[]] * 20


def test_random_subset_refuses_more_rows_than_the_corpus(tmp_path):
    with pytest.raises(ReactError, match="60 rows asked, the corpus has 50"):
        random_subset(_corpus(tmp_path, 50), 60, 0, tmp_path / "a.parquet")


def _fake_run(run_dir: Path, key: dict | None, steps: int, last_step: int | None) -> None:
    from customize import checkpoint as ckpt

    run_dir.mkdir(parents=True)
    info = {"kind": ckpt.RUN_KIND, "format": ckpt.RUN_FORMAT, "plan": {"steps": steps}}
    if key is not None:
        info["demo_key"] = key
    (run_dir / ckpt.RUN_FILE).write_text(json.dumps(info))
    if last_step is not None:
        step = ckpt.step_dir(run_dir, last_step)
        step.mkdir(parents=True)
        for name in (ckpt.WEIGHTS, ckpt.STATE):  # what makes a checkpoint whole
            (step / name).write_bytes(b"")


def test_run_state_reuses_only_finished_runs_with_the_same_command_base_and_data(tmp_path):
    key = {"argv": ["customize", "--seed", "0"], "base": "b1", "data": "sha256:d1"}
    assert _run_state(tmp_path / "none", key) == "new"
    _fake_run(tmp_path / "done", key, steps=8, last_step=8)
    _fake_run(tmp_path / "half", key, steps=8, last_step=4)
    assert _run_state(tmp_path / "done", key) == "done"
    assert _run_state(tmp_path / "half", key) == "resume"
    # same paths, but another seed, another base or another downloaded subset: start over
    for change in ({"argv": ["customize", "--seed", "1"]}, {"base": "b2"}, {"data": "sha256:d2"}):
        assert _run_state(tmp_path / "done", key | change) == "new"
    # shards without a download manifest are never trusted
    assert _run_state(tmp_path / "done", key | {"data": None}) == "new"


def test_eval_result_is_reused_only_for_the_same_weights_task_dataset_and_options(tmp_path):
    """issue 16: a changed eval option or dataset used to get the old figure back."""
    from demo.transfer import evaluate
    from react.models import WEIGHTS_FILE

    model = tmp_path / "model"
    model.mkdir()
    (model / WEIGHTS_FILE).write_bytes(b"weights v1")
    corpus = _corpus(tmp_path / "corpus", 5)
    (corpus / "downstream_classes.txt").write_text("cat\ndog\n")
    ran: list[list[str]] = []

    def step(name: str, argv: list[str]) -> None:
        ran.append(argv)
        Path(argv[argv.index("--out") + 1]).write_text("{}")

    result = tmp_path / "results" / "base_linear-probe.json"
    result.parent.mkdir()

    def runs(task: str = "linear-probe", extra: tuple[str, ...] = ("--shots", "5"), dataset: Path = corpus) -> int:
        before = len(ran)
        evaluate(step, result, task, model, dataset, extra)
        return len(ran) - before

    assert runs() == 1
    assert runs() == 0  # nothing changed: reused
    assert runs(extra=("--shots", "20")) == 1  # another eval option
    assert runs(extra=("--shots", "20")) == 0
    assert runs(task="zeroshot", extra=("--shots", "20")) == 1  # another task into the same file
    assert runs(extra=("--shots", "20")) == 1
    (corpus / "downstream_classes.txt").write_text("cat\ndog\nbird\n")  # the dataset changed in place
    assert runs(extra=("--shots", "20")) == 1
    other = _corpus(tmp_path / "other", 7)  # another dataset
    assert runs(extra=("--shots", "20"), dataset=other) == 1
    (model / WEIGHTS_FILE).write_bytes(b"weights v2")  # other weights
    assert runs(extra=("--shots", "20"), dataset=other) == 1
    assert runs(extra=("--shots", "20"), dataset=other) == 0
