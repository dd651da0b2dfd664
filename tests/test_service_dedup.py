"""Near-duplicate collapse when an image vector was skipped at index build (issue 16)."""
from __future__ import annotations

import numpy as np
import pytest

from index.build import build_index
from index.embed import write_embedding_folder
from index.searcher import Searcher
from react.schemas import img_emb_path
from retrieval_service.dedup import NearDuplicates


@pytest.mark.parametrize("factory", ["Flat", "SQ8"])  # vectors from the index's codes (+ ids map) / from the folder
def test_text_hit_whose_image_row_is_nan_gets_no_neighbours_vector(tmp_path, factory):
    """Row 1's image vector is NaN (the index skips it), its text row is retrieved; row 3
    is a near-copy of row 2's image. Row 1 must not borrow row 2's vector (the next id
    of the image index) and so join the 2-3 group."""
    rng = np.random.default_rng(0)
    n, dim = 40, 16
    img = rng.standard_normal((n, dim)).astype(np.float32)
    img[3] = img[2] + 0.02 * np.linalg.norm(img[2]) * rng.standard_normal(dim) / np.sqrt(dim)
    txt = rng.standard_normal((n, dim)).astype(np.float32)
    emb = tmp_path / "emb"
    write_embedding_folder(emb, img, txt, part_size=n)
    stored = np.load(img_emb_path(emb, 0))
    stored[1] = np.nan  # as in LAION's published parts: the index build drops the row
    np.save(img_emb_path(emb, 0), stored)
    build_index(emb, tmp_path / "index", factory=factory, n_queries=10, k=5)
    searcher = Searcher(tmp_path / "index")
    assert searcher.modalities["image"].index.ntotal == n - 1 and searcher.modalities["image"].ids is not None

    _, found = searcher.search(txt[1:2] / np.linalg.norm(txt[1]), 1, modality="text", query_modality="text")
    assert found[0, 0] == 1  # the text side retrieves row 1
    rows = np.array([0, 1, 2, 3])
    a, b = NearDuplicates(searcher).edges(rows, 0.94)
    assert sorted(zip(a.tolist(), b.tolist())) == [(2, 3), (3, 2)]
    # /knn-service's dedup reads the same vectors: row 1 has none, so it matches nothing there either.
    vecs, has = NearDuplicates(searcher)._vectors(rows)
    assert has.tolist() == [True, False, True, True] and not vecs[1].any()


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW16"])  # the index's own quantizer / k-means over the set
def test_cell_search_finds_every_pair_all_pairs_finds(tmp_path, factory, monkeypatch):
    """Above SMALL rows the retrieved set is compared cell by cell; planted groups of near-copies
    (cosine 0.999) beside far copies (0.86) must come out exactly as the exact
    all-pairs comparison gives them."""
    from retrieval_service import dedup

    rng = np.random.default_rng(1)
    n, dim = 3000, 32
    img = rng.standard_normal((n, dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    for g in range(0, 600, 6):  # 100 groups of 3 copies, and a far pair
        for j in (1, 2):
            noise = rng.standard_normal(dim).astype(np.float32)
            img[g + j] = img[g] + (0.05 if j == 1 else 0.6) * noise / np.linalg.norm(noise)
    emb = tmp_path / "emb"
    write_embedding_folder(emb, img, rng.standard_normal((n, dim)).astype(np.float32), part_size=n)
    build_index(emb, tmp_path / "index", factory=factory, n_queries=10, k=5)
    searcher = Searcher(tmp_path / "index")
    rows = rng.permutation(n)[:2500]
    exact = NearDuplicates(searcher).edges(rows, 0.94)
    monkeypatch.setattr(dedup, "SMALL", 100)
    monkeypatch.setattr(dedup, "CHUNK", 700)  # several blocks
    cells = NearDuplicates(searcher).edges(rows, 0.94)
    want, got = set(zip(*map(np.ndarray.tolist, exact))), set(zip(*map(np.ndarray.tolist, cells)))
    assert len(want) > 100 and got == want
