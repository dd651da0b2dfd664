"""Index candidates: which faiss factories to try, what they cost, how to build them.

Memory per vector (float32 d-dim, M graph links), the figures docs/index.md's
scale table comes from:

- ``HNSW{M}`` (Flat codes): ``4d + 8M·1.1`` bytes (level-0 links are 2M int32;
  upper levels add ~10 %) -- 2.3 KB at d=512, M=32.
- ``IVF{nlist}_HNSW32,Flat``: ``4d + 8`` bytes (codes + id) plus the quantizer.
- ``IVF{nlist}_HNSW32,SQ8``: ``d + 8``.
- ``OPQ{m}_{4m},IVF{nlist}_HNSW32,PQ{m}x8``: ``m + 8`` -- 136 B at m=128; inverted
  lists can live on disk and be memory-mapped.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import faiss
import numpy as np

from react.errors import ReactError

EF_CONSTRUCTION = 200  # faiss' default 40 builds a graph that out-of-distribution queries get lost in
MIN_IVF_ROWS = 20_000  # below this an inverted file has too few lists to pay for itself
TRAIN_PER_LIST = 50  # k-means wants >= 39 points per centroid; a little more is cheap
QUANTIZER_EF = 64  # the coarse HNSW's efSearch floor; searches use max(this, 2 * nprobe)


@dataclass
class Candidate:
    """A factory string plus what it needs at build time and which knob tunes it."""

    factory: str
    build_params: dict = field(default_factory=dict)
    fixed_params: dict = field(default_factory=dict)  # search params that are set, not tuned
    on_disk: bool = False  # inverted lists merged into an .ivfdata file (index.ondisk), memory-mapped

    @property
    def knob(self) -> str | None:
        if "IVF" in self.factory:
            return "nprobe"
        if "HNSW" in self.factory:
            return "efSearch"
        return None

    @property
    def nlist(self) -> int | None:
        match = re.search(r"IVF(\d+)", self.factory)
        return int(match.group(1)) if match else None

    @property
    def exact_codes(self) -> bool:
        """Whether the index stores the vectors themselves (re-ranking can use it)."""
        return not re.search(r"(SQ\d|PQ\d|LSH|RaBitQ)", self.factory)

    @property
    def inverted_file(self) -> bool:
        return self.nlist is not None

    def to_json(self) -> dict:
        return {"factory": self.factory, "build_params": self.build_params, "fixed_params": self.fixed_params,
                "on_disk": self.on_disk}


def bytes_per_vector(factory: str, dim: int) -> float:
    """Rough resident bytes per indexed vector (see the module docstring)."""
    graph = re.match(r"^HNSW(\d+)", factory)
    if graph:
        return 4 * dim + 8 * int(graph.group(1)) * 1.1
    pq = re.search(r"PQ(\d+)", factory)
    if pq:
        return int(pq.group(1)) + 8
    if "SQ8" in factory:
        return dim + 8
    if "SQ4" in factory:
        return dim / 2 + 8
    return 4 * dim + 8


def default_nlist(n: int) -> int:
    """A power of two near 4·sqrt(n), with enough training points per list."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 64)))
    while nlist > 64 and n < TRAIN_PER_LIST * nlist:
        nlist //= 2
    return nlist


def memory_budget() -> int:
    """Default budget for one index in RAM: 60 % of physical memory."""
    try:
        return int(0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 8 << 30


def resident_bytes(factory: str, dim: int) -> float:
    """What an on-disk inverted file keeps in RAM besides its lists: the coarse
    quantizer (an HNSW32 graph over the centroids) and its list directory."""
    nlist = int(re.search(r"IVF(\d+)", factory).group(1))
    return nlist * (4 * dim + 8 * 32 * 1.1 + 64)


def fits(candidate: Candidate, n: int, dim: int, budget: int) -> bool:
    """Whether the part of ``candidate`` that lives in RAM fits ``budget``: every code for an
    in-memory index; the quantizer alone (half the budget; training and chunks use the rest) on disk."""
    if candidate.on_disk:
        return resident_bytes(candidate.factory, dim) <= budget / 2
    return n * bytes_per_vector(candidate.factory, dim) <= budget


def auto_candidates(n: int, dim: int, budget: int, on_disk: bool = False, ivf_only: bool = False
                    ) -> list[Candidate]:
    """What ``--factory auto`` measures: the graph, the inverted file with Flat
    and with SQ8 codes (SQ8 re-ranks exactly; on CLIP-like T2I queries it gave
    the Flat recall at 1.5-2x the speed in a quarter of the memory), and PQ
    codes only when nothing else fits ``budget`` bytes.

    Compressed codes that do not fit in RAM are built with on-disk inverted
    lists instead (all inverted files are with ``on_disk``; ``ivf_only`` drops
    the graph, for builds whose partial indices are merged). Flat codes never
    go to disk: the float16 embeddings already hold those vectors at half the
    size, and the compressed indices re-rank from them."""
    options = [] if ivf_only else [Candidate("HNSW32", {"efConstruction": EF_CONSTRUCTION})]
    compressed: list[Candidate] = []
    if n >= MIN_IVF_ROWS or ivf_only:
        nlist = default_nlist(n)
        quantizer = {"quantizer_efSearch": QUANTIZER_EF}
        options.append(Candidate(f"IVF{nlist}_HNSW32,Flat", {}, quantizer, on_disk=on_disk))
        m = pq_m(dim)
        compressed = [Candidate(f"IVF{nlist}_HNSW32,SQ8", {}, quantizer, on_disk=on_disk),
                      Candidate(f"OPQ{m}_{4 * m},IVF{nlist}_HNSW32,PQ{m}x8", {}, quantizer, on_disk=on_disk)]
    out = [c for c in options + compressed[:1] if fits(c, n, dim, budget)]
    if not out and compressed and fits(compressed[1], n, dim, budget):
        out = [compressed[1]]
    if len(out) <= (0 if ivf_only else 1) and compressed:
        # Nothing (or only the graph, which a large corpus outgrows) fits in RAM: the compressed codes on disk.
        have = {c.factory for c in out}
        out += [c for c in map(_on_disk, compressed) if c.factory not in have and fits(c, n, dim, budget)]
    if not out:
        raise ReactError(f"no index type fits {n:,} x {dim} vectors in a {budget / 2**30:.1f} GiB budget "
                         f"(even on disk, the coarse quantizer needs more); raise --memory-gb")
    return out


def _on_disk(candidate: Candidate) -> Candidate:
    return Candidate(candidate.factory, candidate.build_params, candidate.fixed_params, on_disk=True)


def pq_m(dim: int) -> int:
    """PQ sub-quantizers: one per 4 dimensions (128 at d=512). Measured on 300k
    CLIP-like rows (docs/scale.md): PQ64 at d=512 tops out near recall@50 0.88
    with a 10x re-rank however many lists are probed; PQ128 reaches what the
    inverted file allows (0.98 at nprobe 64 of 1024, as SQ8 does) in a quarter
    of SQ8's bytes."""
    return max(4, dim // 4)


def parse_factory(factory: str, dim: int, n: int | None = None, budget: int | None = None,
                  on_disk: bool = False) -> Candidate:
    """A user's ``--factory`` string, checked by faiss itself before any work starts.
    An inverted file whose codes exceed ``budget`` is built on disk; anything
    else that does not fit is refused."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ReactError(f"--factory {factory!r}: faiss rejects it ({str(exc).strip().splitlines()[-1]})") from None
    del index
    build = {"efConstruction": EF_CONSTRUCTION} if factory.startswith("HNSW") else {}
    fixed = {"quantizer_efSearch": QUANTIZER_EF} if re.search(r"IVF\d+_HNSW", factory) else {}
    cand = Candidate(factory, build, fixed)
    if on_disk and not cand.inverted_file:
        raise ReactError(f"--factory {factory!r}: on-disk builds need an inverted file (IVF...)")
    cand.on_disk = on_disk
    if n is not None and budget is not None and not fits(cand, n, dim, budget):
        if cand.inverted_file and not cand.on_disk:
            cand.on_disk = True
        if not fits(cand, n, dim, budget):
            raise ReactError(f"--factory {factory!r} does not fit {n:,} x {dim} vectors in a "
                             f"{budget / 2**30:.1f} GiB budget; raise --memory-gb or pick a compressed inverted file")
    return cand


def new_index(candidate: Candidate, dim: int) -> faiss.Index:
    index = faiss.index_factory(dim, candidate.factory, faiss.METRIC_INNER_PRODUCT)
    if "efConstruction" in candidate.build_params:
        faiss.downcast_index(index).hnsw.efConstruction = int(candidate.build_params["efConstruction"])
    return index


def with_knob(candidate: Candidate, value: int | None) -> dict:
    """Search params at one knob value; an HNSW coarse quantizer searches at
    least 2 x nprobe wide, or it would hand back fewer good lists than asked."""
    params = dict(candidate.fixed_params)
    if value is None or candidate.knob is None:
        return params
    params[candidate.knob] = value
    if candidate.knob == "nprobe" and "quantizer_efSearch" in params:
        params["quantizer_efSearch"] = max(int(params["quantizer_efSearch"]), 2 * value)
    return params


def set_search_params(index: faiss.Index, params: dict) -> None:
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name in ("rerank", "shift", "scan", "probes"):
            continue  # applied by the searcher, not by faiss
        space.set_index_parameter(index, name, value)


def train_rows(candidate: Candidate, n: int) -> int:
    """How many vectors training needs (0: the index needs none)."""
    nlist = candidate.nlist
    if nlist is None and "PQ" not in candidate.factory and "SQ" not in candidate.factory:
        return 0
    need = TRAIN_PER_LIST * (nlist or 0)
    if "PQ" in candidate.factory:
        need = max(need, 256 * 40)
    return min(n, max(need, 10_000))


def knob_grid(candidate: Candidate, k: int, n: int) -> list[int]:
    """Values of the tuning knob, cheapest first."""
    if candidate.knob == "efSearch":
        grid = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]
        return sorted({max(v, k) for v in grid if v <= max(k, n)})
    if candidate.knob == "nprobe":
        nlist = candidate.nlist or 1
        # steps of ~1.25-1.5x: between 32 and 48 lists lie recall 0.90 and a third of the scan time at 10M rows
        grid = [1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 80, 96, 128, 192, 256, 384, 512, 768, 1024, 2048]
        return [v for v in grid if v <= nlist]
    return []


def as_float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)
