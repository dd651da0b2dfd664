"""The absolute coverage signal and "how much is there?" (issue 18 item 3).

- the calibration is stored in index.json at build, computed lazily (and kept
  in the cache, never in the folder) for a folder without it, and read back, not recomputed;
- per-class counts of pairs above a similarity agree with a brute-force count
  over the embedding vectors (range search on Flat, IVF and HNSW's Flat
  storage; the top-k tail gives lower bounds and says k is too small);
- on the embedded demo index, classes absent from the corpus are flagged
  *not covered* while the demo's own 20 classes are not (skipped where the
  demo output does not exist: ``REACT_DEMO_DIR``, default ``out/demo``);
- the new fields reach the API over a real uvicorn, typed in OpenAPI.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from index.build import build_index
from index.calibration import cache_path
from index.embed import write_embedding_folder
from index.searcher import Searcher
from index.vectors import EmbeddingFolder
from react.schemas import INDEX_CALIBRATION, INDEX_JSON
from retrieval_service import abundance
from retrieval_service.abundance import Abundance
from retrieval_service.config import ServiceConfig
from retrieval_service.http.app import create_app
from retrieval_service.spec import validate_spec
from retrieval_service.task import TaskRetriever
from service_fixtures import CLASSES, TEMPLATES, LiveServer, build_task_index

DIM, CLUSTERS, PER_CLUSTER = 32, 12, 40


def _clustered_folder(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Image vectors in clusters; each caption's text vector is its image vector plus noise (a matched pair)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(CLUSTERS, DIM))
    img = np.repeat(centers, PER_CLUSTER, axis=0) + 0.6 * rng.normal(size=(CLUSTERS * PER_CLUSTER, DIM))
    txt = img + 0.8 * rng.normal(size=img.shape)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    n = len(img)
    meta = pa.table({"key": [f"k{i}" for i in range(n)], "caption": [f"pair {i}" for i in range(n)],
                     "url": [f"http://corpus.invalid/{i}.jpg" for i in range(n)]})
    write_embedding_folder(root / "emb", img.astype(np.float32), txt.astype(np.float32), meta, part_size=200)
    stored = EmbeddingFolder.open(root / "emb")  # float16 on disk: brute force compares what was indexed
    return root / "emb", stored.take("image", np.arange(n)), stored.take("text", np.arange(n))


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    return _clustered_folder(tmp_path_factory.mktemp("cal"))


def test_calibration_stored_at_build_lazily_computed_and_reloaded(clustered, tmp_path):
    emb, img, txt = clustered
    out = tmp_path / "index"
    build_index(emb, out, factory="Flat", n_queries=20, k=10)
    manifest = json.loads((out / INDEX_JSON).read_text())
    stored = {m: manifest["indices"][m]["calibration"] for m in ("image", "text")}
    for m, cal in stored.items():
        assert cal["direction"] == {"image": "t2i", "text": "t2t"}[m] and cal["sample"] == len(img)
        assert cal["cut"] == cal["covered"]["0.025"]
        assert cal["covered"]["0.5"] > cal["null"]["0.9"] + 0.3  # covered queries score far above random pairs
    # Brute force over the vectors: a caption's 10 best *other* images, averaged; its 2.5 % quantile is the cut.
    sims = txt @ img.T
    np.fill_diagonal(sims, -np.inf)
    top10 = -np.sort(-sims, axis=1)[:, :10]
    assert stored["image"]["cut"] == pytest.approx(np.quantile(top10.mean(axis=1), 0.025), abs=1e-3)
    assert stored["image"]["matched"]["0.5"] == pytest.approx(np.median(np.sum(txt * img, axis=1)), abs=1e-3)
    assert Searcher(out).calibration("image") == stored["image"]
    assert not (out / INDEX_CALIBRATION).exists()

    # A folder built before calibration existed: computed on first use, kept in the cache (the folder
    # itself untouched), identical.
    for m in manifest["indices"]:
        del manifest["indices"][m]["calibration"]
    (out / INDEX_JSON).write_text(json.dumps(manifest))
    before = sorted(p.name for p in out.iterdir())
    assert Searcher(out).calibration("text") == stored["text"]
    assert sorted(p.name for p in out.iterdir()) == before
    cached = cache_path(out)
    side = json.loads(cached.read_text())
    assert side["text"] == stored["text"]
    # The next load reads the cache instead of measuring again.
    side["text"]["cut"] = 0.123
    cached.write_text(json.dumps(side))
    assert Searcher(out).calibration("text")["cut"] == 0.123


def _brute_counts(queries: np.ndarray, vecs: np.ndarray, n_t: int, cut: float) -> list[int]:
    above = (queries @ vecs.T) >= cut
    return [int(above[c * n_t : (c + 1) * n_t].any(axis=0).sum()) for c in range(len(queries) // n_t)]


def _count(searcher: Searcher, queries: np.ndarray, n_t: int, k: int, cut: float, chunk: int = 7) -> list[dict]:
    """As a task counts: in chunks (7 split classes; a whole batch of 36 takes the batched IVF scan,
    which counts on the way), each search asked for the rows above the cut."""
    counter = Abundance(len(queries) // n_t, np.arange(len(queries)) // n_t, k, {"image": cut})
    for lo in range(0, len(queries), chunk):
        batch = queries[lo : lo + chunk]
        scores, rows, ranges = searcher.search_range(batch, k, modality="image", above=counter.radius("image"),
                                                     max_hits=counter.room())
        assert (ranges is not None) == (len(batch) >= 32 and "IVF" in searcher.modalities["image"].entry["factory"])
        counter.add(searcher, "image", lo, batch, scores, rows, ranges)
    return counter.per_class()


@pytest.mark.parametrize("factory,chunk", [("Flat", 7), ("HNSW32", 7), ("IVF4,Flat", 7), ("IVF4,Flat", 36)])
def test_counts_match_brute_force(clustered, tmp_path, factory, chunk, monkeypatch):
    emb, img, txt = clustered
    out = tmp_path / "index"
    build_index(emb, out, factory=factory, modality="image", n_queries=20, k=10)
    searcher = Searcher(out)
    if factory.startswith("IVF"):  # probing every list makes an inverted file's range search exhaustive
        searcher.modalities["image"].params["nprobe"] = 4
    n_t, cut = 3, 0.55
    queries = txt[[i * PER_CLUSTER + j for i in range(CLUSTERS) for j in range(n_t)]]  # 3 queries per "class"
    truth = _brute_counts(queries, img, n_t, cut)
    assert max(truth) > 10 and min(truth) < 60  # the cut leaves both full and sparse classes
    got = _count(searcher, queries, n_t, 10, cut, chunk)
    assert [g["pairs_above"] for g in got] == truth
    assert not any(g["pairs_above_lower_bound"] for g in got)
    per_query = ((queries @ img.T) >= cut).sum(axis=1).reshape(-1, n_t).max(axis=1)
    assert [g["k_too_small"] for g in got] == list(per_query > 10)
    assert [g["almost_nothing"] for g in got] == [t < abundance.ALMOST_NOTHING for t in truth]


@pytest.mark.parametrize("factory,chunk", [("Flat", 7), ("IVF4,Flat", 7), ("IVF4,Flat", 36)])
def test_a_row_budget_keeps_counts_and_marks_lower_bounds(clustered, tmp_path, factory, chunk, monkeypatch):
    """A cut so low that rows above it would not fit in memory: faiss' range search runs in
    bounded query batches, at most ROWS_KEPT_MAX rows are kept, and what was cut short says so.
    Per-query counts (``k too small``, the widest query) stay exact."""
    emb, img, txt = clustered
    out = tmp_path / "index"
    build_index(emb, out, factory=factory, modality="image", n_queries=20, k=10)
    searcher = Searcher(out)
    if factory.startswith("IVF"):
        searcher.modalities["image"].params["nprobe"] = 4
    n_t, cut = 3, 0.55
    queries = txt[[i * PER_CLUSTER + j for i in range(CLUSTERS) for j in range(n_t)]]
    truth = _brute_counts(queries, img, n_t, cut)
    monkeypatch.setattr(abundance, "RANGE_PAIRS_MAX", 3 * len(img))  # faiss' range search 3 queries at a time
    assert [g["pairs_above"] for g in _count(searcher, queries, n_t, 10, cut, chunk)] == truth
    monkeypatch.setattr(abundance, "ROWS_KEPT_MAX", sum(truth) // 3)
    got = _count(searcher, queries, n_t, 10, cut, chunk)
    per_query = ((queries @ img.T) >= cut).sum(axis=1).reshape(-1, n_t).max(axis=1)
    assert [g["k_too_small"] for g in got] == list(per_query > 10)
    for g, t, widest in zip(got, truth, per_query):
        assert widest <= g["pairs_above"] <= t
        assert g["pairs_above_lower_bound"] or g["pairs_above"] == t
    assert any(g["pairs_above_lower_bound"] for g in got)


def test_top_k_tail_gives_lower_bounds(clustered, tmp_path, monkeypatch):
    emb, img, txt = clustered
    out = tmp_path / "index"
    build_index(emb, out, factory="HNSW32", modality="image", n_queries=20, k=10)
    monkeypatch.setattr(abundance, "BRUTE_MAX_ROWS", 0)  # as for an HNSW index too big to scan
    n_t, k = 3, 10
    queries = txt[[i * PER_CLUSTER + j for i in range(CLUSTERS) for j in range(n_t)]]
    kth = (-np.sort(-(queries @ img.T), axis=1))[:, k - 1].reshape(-1, n_t).max(axis=1)
    cut = float(np.median(kth))  # half the classes have more than k pairs above it for some query
    assert 0 < (kth >= cut).sum() < len(kth)
    truth = _brute_counts(queries, img, n_t, cut)
    searcher = Searcher(out)
    searcher.modalities["image"].params["efSearch"] = 256  # HNSW's top k exact here: the tail is all that is missing
    got = _count(searcher, queries, n_t, k, cut)
    for g, t, full in zip(got, truth, kth >= cut):
        assert g["pairs_above"] <= t
        assert g["k_too_small"] == g["pairs_above_lower_bound"] == bool(full)
        if not full:  # every pair above the cut was within the top k: the tail count is exact
            assert g["pairs_above"] == t


DEMO = Path(os.environ.get("REACT_DEMO_DIR", Path(__file__).resolve().parents[1] / "out" / "demo"))
CORPUS = Path.home() / ".cache" / "react" / "corpus" / "embedded-v3"
ABSENT = ["lymph node tissue", "spreadsheet", "satellite image of farmland", "invoice"]  # no such caption


@pytest.mark.skipif(not ((DEMO / "index" / INDEX_JSON).is_file() and (CORPUS / "downstream_classes.txt").is_file()),
                    reason=f"needs the demo output ({DEMO}, REACT_DEMO_DIR) and its embedded corpus ({CORPUS})")
def test_demo_index_flags_absent_classes_not_the_demo_task(tmp_path):
    from react.models import load_model

    shutil.copytree(DEMO / "index", tmp_path / "index")
    for stale in (tmp_path / "index").glob(INDEX_CALIBRATION):
        stale.unlink()
    # an index built before the build stored its calibration: the first task calibrates it
    manifest = json.loads((tmp_path / "index" / INDEX_JSON).read_text())
    for entry in manifest["indices"].values():
        entry.pop("calibration", None)
    (tmp_path / "index" / INDEX_JSON).write_text(json.dumps(manifest))
    searcher = Searcher(tmp_path / "index")
    retriever = TaskRetriever(searcher, load_model(str(DEMO / "base"), device="cpu"))
    classes = [c for c in (CORPUS / "downstream_classes.txt").read_text().splitlines() if c.strip()]
    templates = [t for t in (CORPUS / "downstream_templates.txt").read_text().splitlines() if t.strip()]
    captions = " ".join(searcher.metadata(np.arange(searcher.rows), ["caption"]).column("caption")
                        .to_pylist()).lower()
    assert not any(name in captions for name in ABSENT)
    demo = retriever.run(validate_spec(classes, templates, k=50, mode="t2t"))
    absent = retriever.run(validate_spec(ABSENT, templates, k=50, mode="t2t"))
    assert cache_path(tmp_path / "index").is_file()  # calibrated lazily on the first task, kept in the cache
    assert [s.name for s in demo.stats if s.not_covered] == []
    assert all(s.not_covered and s.almost_nothing for s in absent.stats), [s.to_json() for s in absent.stats]
    assert not any(s.low_coverage for s in absent.stats)  # the relative rule alone lets them pass
    assert any("not covered" in w for w in absent.warnings)
    assert sum(s.pairs_above for s in demo.stats) > 20 * abundance.ALMOST_NOTHING


def test_api_reports_absolute_flag_and_counts(tmp_path, tiny_model, tiny_model_dir):
    index = build_task_index(tmp_path, tiny_model, tiny_model_dir)
    cfg = ServiceConfig(indices={"tiny": index}, state_dir=tmp_path / "state")
    with LiveServer(create_app(cfg)) as live:
        body = {"classes": CLASSES, "templates": TEMPLATES, "k": 5, "threshold": 0.0, "inline": True}
        report = httpx.post(live.url + "/v1/retrieve", json=body, timeout=60).json()["report"]
        schema = httpx.get(live.url + "/openapi.json").json()["components"]["schemas"]
    cut = Searcher(index).calibration("image")["cut"]
    assert report["summary"]["coverage_cut"] == cut and report["calibration"]["image"]["cut"] == cut
    assert report["summary"]["count_similarity"] == {"image": 0.0}  # the task's threshold
    assert report["summary"]["count_method"] == "range search"
    sims = report["classes"]
    # service_fixtures: cat's positives are cat, cat-copy and catdog; dog's dog and catdog; car's car.
    assert [c["pairs_above"] for c in sims] == [3, 2, 1]
    assert all(c["not_covered"] == (c["coverage"] < cut) for c in sims)
    assert all(c["almost_nothing"] and not c["k_too_small"] for c in sims)
    assert "calibrated cut" in report["absolute_coverage_rule"]
    for field in ("not_covered", "pairs_above", "pairs_above_lower_bound", "k_too_small", "almost_nothing"):
        assert field in schema["ClassCoverage"]["properties"]
    assert "coverage_cut" in schema["TaskSummary"]["properties"]
