"""react download: img2dataset against a loopback server started by the test.

The server serves real images (JPEG and PNG made with PIL) and URLs that 404,
time out, return a web page, or opt out through X-Robots-Tag; one URL fails
once and then works. Counts are exact: retries are 0 and the timeout is 2 s
against a server that sleeps 5 s.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from react.cli import run
from react.schemas import DOWNLOAD_MANIFEST, SHARD_SIZES_FILE

FAST = ["--processes", "1", "--threads", "4", "--timeout", "2", "--retries", "0", "--shard-size", "5"]


def _image(size: tuple[int, int], color: tuple[int, int, int], fmt: str) -> bytes:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):  # some structure, so the encoder has work
        image.putpixel((x, x % size[1]), (255 - color[0], 40, 90))
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


IMAGES = {
    "/big.jpg": _image((640, 480), (200, 30, 30), "JPEG"),
    "/small.png": _image((100, 80), (30, 200, 30), "PNG"),
    "/tall.jpg": _image((200, 500), (30, 30, 200), "JPEG"),
    "/square.jpg": _image((300, 300), (120, 120, 20), "JPEG"),
    "/other-bot.jpg": _image((320, 240), (10, 120, 160), "JPEG"),
    "/flaky.jpg": _image((260, 260), (90, 10, 150), "JPEG"),
    "/wide.png": _image((512, 256), (250, 200, 10), "PNG"),
    "/page.jpg": b"<!doctype html><html><body>not an image</body></html>",
}
for _i in range(8):
    IMAGES[f"/slowish/{_i}.jpg"] = _image((64 + 8 * _i, 64), (20 * _i, 50, 80), "JPEG")
HEADERS = {"/noai.jpg": "noai", "/ua-noai.jpg": "img2dataset: noimageai", "/other-bot.jpg": "otherbot: noai"}

# key, path, caption, classes -- and what img2dataset makes of it
ROWS = [
    ("k00", "/big.jpg", "a red photo", ["cat"]),
    ("k01", "/small.png", "a small green drawing", ["cat", "dog"]),
    ("k02", "/missing.jpg", "gone", ["dog"]),                       # 404
    ("k03", "/tall.jpg", "a tall blue picture", ["dog"]),
    ("k04", "/slow.jpg", "too slow", ["bird"]),                     # timeout
    ("k05", "/page.jpg", "a web page", ["bird"]),                   # decode error
    ("k06", "/noai.jpg", "opted out", ["bird"]),                    # X-Robots-Tag: noai
    ("k07", "/square.jpg", "an olive square", ["cat"]),
    ("k08", "/flaky.jpg", "works the second time", ["fish"]),       # 503 once
    ("k09", "/other-bot.jpg", "opt-out for another bot", ["fish"]),  # not addressed to img2dataset
    ("k10", "/ua-noai.jpg", "opted out by name", ["bird"]),         # X-Robots-Tag: img2dataset: noimageai
    ("k11", "/wide.png", "a wide yellow banner", ["fish"]),
]
OK_KEYS = {"k00", "k01", "k03", "k07", "k09", "k11"}


class Web:
    """The test's web: a loopback server logging every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.seen: set[str] = set()
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                full = self.path
                path = urlsplit(full).path
                web.requests.append((full, self.headers.get("User-Agent", "")))
                first = full not in web.seen
                web.seen.add(full)
                if path == "/slow.jpg":
                    time.sleep(5)
                if path.startswith("/slowish/"):
                    time.sleep(0.4)
                if path == "/flaky.jpg" and first:
                    return self.send_error(503)
                body = IMAGES.get(path, IMAGES["/big.jpg"] if path in HEADERS else None)
                if body is None:
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if path == "/page.jpg" else "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                if path in HEADERS:
                    self.send_header("X-Robots-Tag", HEADERS[path])
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
                pass  # a client that gave up (the timeout case) is expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def paths_since(self, mark: int) -> list[str]:
        return [urlsplit(p).path for p, _ in self.requests[mark:]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def web():
    w = Web()
    yield w
    w.close()


def _subset(path: Path, base: str, rows=ROWS, tag: str = "") -> Path:
    table = pa.table({
        "key": [r[0] for r in rows],
        "url": [f"{base}{r[1]}" + (f"?{tag}" if tag and r[1] == "/flaky.jpg" else "") for r in rows],
        "caption": [r[2] for r in rows],
        "similarity": pa.array([0.5 - i / 100 for i in range(len(rows))], pa.float32()),
        "classes": pa.array([r[3] for r in rows], pa.list_(pa.string())),
        "hits": pa.array([3] * len(rows), pa.int32()),  # not kept
    })
    pq.write_table(table, path)
    return path


def _download(*argv: str) -> int:
    return run(["download", *map(str, argv)])


def _samples(out: Path) -> dict[str, dict]:
    """Every sample of every shard, read back with webdataset, by subset key."""
    import webdataset as wds

    tars = sorted(str(p) for p in out.glob("*.tar"))
    got = {}
    for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False):
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"]
        got[meta["subset_key"]] = {"key": s["__key__"], "jpg": s["jpg"], "txt": s["txt"].decode(), "json": s["json"],
                                   "meta": meta, "shard": Path(s["__url__"]).name}
    return got


@pytest.fixture(scope="module")
def http_run(web, tmp_path_factory):
    root = tmp_path_factory.mktemp("dl")
    subset = _subset(root / "subset.parquet", web.url, tag="main")
    mark = len(web.requests)
    started = time.time()
    assert _download(subset, "--out", root / "shards", *FAST) == 0
    return {"root": root, "subset": subset, "out": root / "shards", "seconds": time.time() - started,
            "requests": web.requests[mark:]}


def test_counts_by_reason_and_class(http_run):
    manifest = json.loads((http_run["out"] / DOWNLOAD_MANIFEST).read_text())
    s = manifest["summary"]
    assert manifest["complete"] is True
    assert (s["requested"], s["downloaded"], s["failed"]) == (12, 6, 6)
    assert s["failed_by_reason"] == {"not_found": 1, "timeout": 1, "decode_error": 1, "opted_out": 2, "other": 1}
    assert list(s["other_errors"]) == ["HTTP Error 503: Service Unavailable"]
    assert s["per_class"] == {"bird": {"requested": 4, "downloaded": 0}, "dog": {"requested": 3, "downloaded": 2},
                              "fish": {"requested": 3, "downloaded": 2}, "cat": {"requested": 3, "downloaded": 3}}
    assert len(s["warnings"]) == 1 and "'bird'" in s["warnings"][0]
    assert s["shards"] == 3


def test_shards_read_back_with_webdataset(http_run):
    out = http_run["out"]
    samples = _samples(out)
    rows = {r[0]: r for r in ROWS}
    assert set(samples) == OK_KEYS
    for key, s in samples.items():
        i = int(key[1:])
        assert s["txt"] == rows[key][2]
        assert s["meta"]["classes"] == rows[key][3]
        assert s["meta"]["similarity"] == pytest.approx(0.5 - i / 100, abs=1e-6)
        assert s["meta"]["url"].endswith(rows[key][1])
        assert s["meta"]["caption"] == rows[key][2] and "hits" not in s["meta"]
        assert s["shard"] == f"{i // 5:05d}.tar"  # img2dataset's positional sharding
        image = Image.open(io.BytesIO(s["jpg"]))
        assert image.format == "JPEG"
        assert (s["meta"]["width"], s["meta"]["height"]) == image.size
    # keep_ratio to 256 on the smaller side, never upscaled
    assert Image.open(io.BytesIO(samples["k00"]["jpg"])).size == (341, 256)
    assert Image.open(io.BytesIO(samples["k01"]["jpg"])).size == (100, 80)
    assert Image.open(io.BytesIO(samples["k03"]["jpg"])).size == (200, 500)
    assert Image.open(io.BytesIO(samples["k11"]["jpg"])).size == (512, 256)
    # the shards open as a corpus for react embed, too
    from index.readers import read_corpus

    assert sorted(read_corpus(out).metadata.column("key").to_pylist()) == sorted(s["key"] for s in samples.values())


def test_sizes_stats_and_parquet(http_run):
    out = http_run["out"]
    assert json.loads((out / SHARD_SIZES_FILE).read_text()) == {"00000.tar": 3, "00001.tar": 2, "00002.tar": 1}
    statuses = {}
    for shard in ("00000", "00001", "00002"):
        stats = json.loads((out / f"{shard}_stats.json").read_text())
        table = pq.read_table(out / f"{shard}.parquet")
        assert stats["count"] == table.num_rows
        statuses.update(zip(table.column("subset_key").to_pylist(), table.column("status").to_pylist()))
    assert {k for k, s in statuses.items() if s == "success"} == OK_KEYS
    assert statuses["k05"] == "failed_to_resize" and statuses["k02"] == "failed_to_download"
    assert not list(out.glob(".react-download/staging-*"))


def test_honest_user_agent_and_only_the_urls(http_run):
    agents = {ua for _, ua in http_run["requests"]}
    assert agents and all("img2dataset" in ua for ua in agents)
    asked = sorted({urlsplit(p).path for p, _ in http_run["requests"]})
    assert asked == sorted({r[1] for r in ROWS})  # each url of the subset, nothing else


def test_resume_redoes_a_truncated_shard_and_a_missing_one(http_run, web, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(http_run["out"], out)
    first = (out / "00000.tar").stat().st_ino
    with open(out / "00001.tar", "r+b") as fh:  # a tar cut short by a kill
        fh.truncate((out / "00001.tar").stat().st_size // 2)
    (out / "00002_stats.json").unlink()
    assert _download(http_run["subset"], "--out", out, *FAST) == 2  # refused without --resume
    mark = len(web.requests)
    assert _download(http_run["subset"], "--out", out, "--resume", *FAST) == 0
    assert sorted(set(web.paths_since(mark))) == sorted({r[1] for r in ROWS[5:]})  # shards 1 and 2 only
    assert (out / "00000.tar").stat().st_ino == first
    samples = _samples(out)
    assert set(samples) == OK_KEYS | {"k08"}  # the flaky url works the second time
    assert json.loads((out / SHARD_SIZES_FILE).read_text()) == {"00000.tar": 3, "00001.tar": 3, "00002.tar": 1}


def test_retry_failed_appends_shards_for_the_failures_only(http_run, web, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(http_run["out"], out)
    before = _samples(out)
    mark = len(web.requests)
    assert _download(http_run["subset"], "--out", out, "--retry-failed", *FAST) == 0
    retried = web.paths_since(mark)
    assert sorted(retried) == sorted(r[1] for r in ROWS if r[0] not in OK_KEYS)
    after = _samples(out)
    assert set(after) == OK_KEYS | {"k08"}
    assert after["k08"]["shard"] == "00003.tar" and after["k08"]["meta"]["classes"] == ["fish"]
    assert {k: v["jpg"] for k, v in after.items() if k in before} == {k: v["jpg"] for k, v in before.items()}
    sizes = json.loads((out / SHARD_SIZES_FILE).read_text())
    assert sizes == {"00000.tar": 3, "00001.tar": 2, "00002.tar": 1, "00003.tar": 1, "00004.tar": 0}
    manifest = json.loads((out / DOWNLOAD_MANIFEST).read_text())
    assert [r["first_shard"] for r in manifest["rounds"]] == [0, 3]
    s = manifest["summary"]
    assert (s["downloaded"], s["failed"], s["failed_by_reason"]["other"]) == (7, 5, 0)
    assert s["per_class"]["fish"] == {"requested": 3, "downloaded": 3}


def test_local_corpus_gives_the_same_shards_without_http(http_run, web, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "images").mkdir(parents=True)
    rows = []
    for key, path, caption, _ in ROWS:
        if key in OK_KEYS or key == "k05":  # what the web served: the images and the web page
            rel = f"images/{key}{Path(path).suffix}"
            (corpus / rel).write_bytes(IMAGES[path])
            rows.append({"key": key, "url": f"{web.url}{path}", "caption": caption, "image_path": rel})
    pq.write_table(pa.Table.from_pylist(rows), corpus / "retrieval.parquet")
    out = tmp_path / "shards"
    out.mkdir()
    (out / "00000.tar").write_bytes(b"another run")
    assert _download(http_run["subset"], "--out", out, "--local-corpus", corpus, *FAST) == 2  # foreign shards
    mark = len(web.requests)
    assert _download(http_run["subset"], "--out", out, "--local-corpus", corpus, "--overwrite", *FAST) == 0
    assert web.requests[mark:] == []  # no HTTP at all
    local, remote = _samples(out), _samples(http_run["out"])
    assert local.keys() == remote.keys() == OK_KEYS
    for key in OK_KEYS:
        for field in ("key", "jpg", "txt", "json", "shard"):
            assert local[key][field] == remote[key][field], (key, field)
    assert (out / SHARD_SIZES_FILE).read_text() == (http_run["out"] / SHARD_SIZES_FILE).read_text()
    for shard in ("00000", "00001", "00002"):
        a, b = pq.read_table(out / f"{shard}.parquet"), pq.read_table(http_run["out"] / f"{shard}.parquet")
        assert a.column_names == b.column_names
        ok = lambda t: sorted((r for r in t.to_pylist() if r["status"] == "success"),  # noqa: E731
                              key=lambda r: r["subset_key"])  # rows come in completion order
        assert ok(a) == ok(b)
    s = json.loads((out / DOWNLOAD_MANIFEST).read_text())["summary"]
    assert s["downloaded"] == 6 and s["failed_by_reason"]["not_found"] == 5


def test_killed_run_resumes_and_never_leaves_a_partial_shard(web, tmp_path):
    rows = [(f"s{i}", f"/slowish/{i}.jpg", f"slow image {i}", ["slow"]) for i in range(8)]
    subset = _subset(tmp_path / "slow.parquet", web.url, rows=rows)
    out = tmp_path / "shards"
    argv = [str(subset), "--out", str(out), "--processes", "1", "--threads", "1", "--shard-size", "2",
            "--retries", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "react", "download", *argv], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not (out / "00000_stats.json").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the download finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    committed = sorted(p.name[:5] + ".tar" for p in out.glob("*_stats.json"))
    assert committed and len(committed) < 4 and not (out / SHARD_SIZES_FILE).exists()
    from download.shardsdir import check_shard

    for name in committed:  # a committed shard is whole
        check_shard(out, int(name[:5]))
    for tar in out.glob("*.tar"):  # and so is every tar under its final name
        with tarfile.open(tar) as tf:
            assert all(m.size == len(tf.extractfile(m).read()) for m in tf if m.isfile())
    mark = len(web.requests)
    assert _download(*argv, "--resume") == 0
    redone = set(web.paths_since(mark))
    assert not redone & {f"/slowish/{int(n[:5]) * 2 + j}.jpg" for n in committed for j in (0, 1)}
    assert set(_samples(out)) == {r[0] for r in rows}
    assert json.loads((out / SHARD_SIZES_FILE).read_text()) == {f"{i:05d}.tar": 2 for i in range(4)}


@pytest.mark.parametrize("case, message", [
    ("no-url", "missing column(s) url"),
    ("empty", "empty subset"),
    ("duplicate", "duplicate key 'a'"),
    ("garbage", "not a readable parquet file"),
    ("absent", "file not found"),
    ("no-url-value", "no url for key 'b'"),
])
def test_bad_subsets(case, message, tmp_path, capsys):
    path = tmp_path / "subset.parquet"
    good = {"key": ["a", "b"], "url": ["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/b.jpg"], "caption": ["x", "y"]}
    if case == "no-url":
        pq.write_table(pa.table({"key": ["a"], "caption": ["x"]}), path)
    elif case == "empty":
        pq.write_table(pa.table({k: pa.array([], pa.string()) for k in good}), path)
    elif case == "duplicate":
        pq.write_table(pa.table({**good, "key": ["a", "a"]}), path)
    elif case == "garbage":
        path.write_bytes(b"PAR1 this is not parquet")
    elif case == "no-url-value":
        pq.write_table(pa.table({**good, "url": ["http://127.0.0.1:9/a.jpg", ""]}), path)
    assert _download(path, "--out", tmp_path / "shards") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "shards").exists()


def test_refusals(http_run, web, tmp_path, capsys):
    def refused(*argv) -> str:
        assert _download(*argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "00000.tar").write_bytes(b"x")
    assert "did not write" in refused(http_run["subset"], "--out", foreign)
    assert "already holds a complete download" in refused(http_run["subset"], "--out", http_run["out"])
    other = _subset(tmp_path / "other.parquet", web.url, rows=ROWS[:3])
    assert "another subset" in refused(other, "--out", http_run["out"], "--resume")
    assert "holds no download" in refused(other, "--out", tmp_path / "new", "--retry-failed")
    assert "shard_size 5 -> 4" in refused(http_run["subset"], "--out", http_run["out"], "--resume", "--shard-size", "4")
    assert "needs the ray package" in refused(other, "--out", tmp_path / "r", "--distributor", "ray")
    assert "not a folder" in refused(other, "--out", tmp_path / "l", "--local-corpus", tmp_path / "nope")
    assert "cannot be combined" in refused(other, "--out", tmp_path / "o", "--overwrite", "--retry-failed")
    csv = tmp_path / "s.csv"
    csv.write_text("url,text\nhttp://127.0.0.1:9/a.jpg,x\n")
    assert "missing column(s) caption" in refused(csv, "--out", tmp_path / "c")


def test_resume_of_a_complete_download_fetches_nothing(http_run, web, capsys):
    mark = len(web.requests)
    assert _download(http_run["subset"], "--out", http_run["out"], "--resume", *FAST) == 0
    assert web.requests[mark:] == []
    assert json.loads((http_run["out"] / DOWNLOAD_MANIFEST).read_text())["summary"]["downloaded"] == 6


def test_cli_defaults_are_download_options_defaults():
    """`react download` reads every img2dataset default from DownloadOptions (one definition each)."""
    import argparse
    from dataclasses import fields

    from download import cli
    from download.options import DownloadOptions

    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["download", "subset.parquet", "--out", "shards"])
    flag = {"resize_only_if_bigger": not args.upscale, "encode_quality": args.quality,
            "disallowed_header_directives": tuple(args.opt_out_directives)}
    given = {f.name: flag.get(f.name, getattr(args, f.name, None)) for f in fields(DownloadOptions)}
    assert DownloadOptions(**given) == DownloadOptions()
