"""``react download --distributor pyspark`` in Spark's local mode, against the
project's loopback web (download/loopback.py): the same shards as
``--distributor multiprocessing``.

One Spark session (a JVM) in a child process, three shards: the JVM's start
dominates, and it never outlives the command.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from download.loopback import serve_corpus
from react.cli import run
from react.schemas import DOWNLOAD_MANIFEST, SHARD_SIZES_FILE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
                                 reason="Spark's local mode needs a Java runtime")]

HOST = "http://corpus.react.invalid"
OPTS = ["--processes", "2", "--threads", "4", "--shard-size", "5", "--retries", "0", "--timeout", "5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """12 images the loopback web serves, and a subset of them plus 2 urls that 404."""
    root = tmp_path_factory.mktemp("spark") / "corpus"
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(12):
        image = Image.new("RGB", (200 + 37 * i, 150 + 11 * i), ((40 * i) % 256, 90, 200 - 10 * i))
        for x in range(0, image.width, 5):
            image.putpixel((x, x % image.height), (255, 255, 0))
        image.save(root / "images" / f"{i}.jpg", quality=90)
        rows.append({"key": f"k{i:02d}", "url": f"{HOST}/images/{i}.jpg", "caption": f"picture {i}",
                     "image_path": f"images/{i}.jpg"})
    pq.write_table(pa.Table.from_pylist(rows), root / "retrieval.parquet")
    subset = rows[5:] + [{"key": "k98", "url": f"{HOST}/gone.jpg", "caption": "gone"}] + rows[:5] + \
        [{"key": "k99", "url": f"{HOST}/none.jpg", "caption": "none"}]
    pq.write_table(pa.table({
        "key": [r["key"] for r in subset], "url": [r["url"] for r in subset],
        "caption": [r["caption"] for r in subset],
        "similarity": pa.array([0.9 - i / 100 for i in range(len(subset))], pa.float32()),
        "classes": pa.array([["even" if int(r["key"][1:]) % 2 == 0 else "odd"] for r in subset],
                            pa.list_(pa.string())),
    }), root / "subset.parquet")
    return root


def _members(out: Path) -> dict[tuple[str, str], bytes]:
    """Every member of every shard: (shard, member name) -> bytes."""
    got = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for member in tf.getmembers():
                got[(shard.name, member.name)] = tf.extractfile(member).read()
    return got


def test_pyspark_local_mode_writes_the_shards_multiprocessing_writes(corpus, tmp_path):
    subset = corpus / "subset.parquet"
    with serve_corpus(corpus) as web:
        reference = tmp_path / "multiprocessing"
        assert run(["download", str(subset), "--out", str(reference), *OPTS]) == 0
        spark = tmp_path / "pyspark"
        started = time.time()
        # A child process: the JVM it starts (and its proxy settings, http_proxy from
        # serve_corpus) lives and dies with the command, not with the test session.
        res = subprocess.run([sys.executable, "-m", "react", "download", str(subset), "--out", str(spark),
                              "--distributor", "pyspark", *OPTS], env=dict(os.environ), capture_output=True,
                             text=True, timeout=300)
        seconds = time.time() - started
        assert res.returncode == 0, res.stderr[-3000:]
        assert web.served == 24 and web.not_found == 4  # each image once per run; 2 dead urls per run
    assert res.stdout.strip() == str(spark)
    assert "WARN" not in res.stderr and "log4j" not in res.stderr  # the JVM's chatter went to the log
    a, b = _members(reference), _members(spark)
    assert len(a) == 12 * 3  # .jpg .txt .json per downloaded sample
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []  # byte for byte: image, caption, metadata
    assert json.loads((spark / SHARD_SIZES_FILE).read_text()) == json.loads((reference / SHARD_SIZES_FILE).read_text())
    assert sum(json.loads((spark / SHARD_SIZES_FILE).read_text()).values()) == 12
    s_spark = json.loads((spark / DOWNLOAD_MANIFEST).read_text())
    s_ref = json.loads((reference / DOWNLOAD_MANIFEST).read_text())
    for field in ("requested", "downloaded", "failed", "failed_by_reason", "per_class", "shards"):
        assert s_spark["summary"][field] == s_ref["summary"][field], field
    assert s_spark["complete"] and (s_spark["summary"]["downloaded"], s_spark["summary"]["failed"]) == (12, 2)
    assert not [p.name for p in (spark / ".react-download").iterdir() if p.name != "img2dataset.log"]
    print(f"pyspark download: {seconds:.1f} s")


def test_spark_master_refusals(corpus, tmp_path, capsys):
    subset = corpus / "subset.parquet"

    def refused(*argv: str) -> str:
        assert run(["download", str(subset), "--out", str(tmp_path / "out"), *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    line = refused("--distributor", "pyspark", "--spark-master", "spark://127.0.0.1:1")
    assert line.startswith("error: --spark-master spark://127.0.0.1:1: cannot reach 127.0.0.1:1 (ConnectionRefused")
    assert "expected local[N], spark://HOST:PORT" in refused("--distributor", "pyspark", "--spark-master", "nowhere")
    assert "--spark-master needs --distributor pyspark" in refused("--spark-master", "local[2]")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_one_line_from_a_spark_error():
    from download.spark import one_line

    spark_text = ("[PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent "
                  "call last):\n  File \"worker.py\", line 4197, in invoke_udf\n    func = read_command()\n"
                  "ModuleNotFoundError: No module named 'img2dataset'\n SQLSTATE: 38000)")
    assert one_line(RuntimeError(spark_text)) == "ModuleNotFoundError: No module named 'img2dataset'"
    assert one_line(FileNotFoundError(2, "No such file")) == "FileNotFoundError: [Errno 2] No such file"
