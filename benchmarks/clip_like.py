"""Synthetic CLIP-like paired embeddings for index benchmarks.

``generate(n, dim=512, n_queries=1000, seed=0) -> (image_vecs, text_vecs, query_vecs)``
returns float32, L2-normalised arrays of shapes [n, dim], [n, dim], [n_queries, dim].
Row j of image_vecs and text_vecs is one image-caption pair; query_vecs are held-out
class-name-like *text* vectors (T2I queries against the image side).

Model (all "directions" are unit vectors, g ~ N(0, I/dim) has norm ~1):
- ``mu_img``, ``mu_txt``: the two modality cones, cos(mu_img, mu_txt) = MU_COS.
  Image row = normalize(A_IMG*mu_img + u_img), text row = normalize(A_TXT*mu_txt + u_txt).
- semantics: N_SUPER super-categories -> n_concepts = max(50, 4*sqrt(n)) concepts
  (direction = normalize(SUPER_W*super + g)), each with 1..MAX_SUB sub-concepts
  (normalize(concept + SUB_SPREAD*g)). Concept frequencies are Zipf(ZIPF) over a
  random rank order; each concept has its own noise scale sigma ~ U(SIGMA_LO, SIGMA_HI).
- the pair/image noise g is anisotropic: variance ~ rank**-SPECTRUM along a random
  orthonormal basis (SPECTRUM=1: participation-ratio dim ~30, like real CLIP's decaying
  spectrum; SPECTRUM=0: isotropic, a much harder stress case for ANN).
- pair latent z = sub_dir + sigma*g; u_img = normalize(z + TAU_IMG*g'),
  u_txt = normalize(z + TAU_TXT*g'') (caption text carries much non-visual content,
  which is what keeps matched image-text cos ~0.3 while same-concept images are ~0.75).
- query = normalize(A_TXT*mu_txt + normalize(concept + Q_NOISE*g)): the concept's text
  side plus a held-out text-specific component; concept drawn with probability
  ~ frequency**Q_POW (class names are common concepts). Q_NOISE sets how weak the
  visual signal is, hence the flat top-50 (top1 - top50 ~0.04, as for real class names).
Rows are generated in CHUNK-sized pieces (no n x dim temporaries besides the outputs).
Calibrated statistics (n=200k): see ``describe()`` and benchmarks/FINDINGS.md.
"""
from __future__ import annotations

import numpy as np

MU_COS, A_IMG, A_TXT = 0.35, 0.85, 0.85
N_SUPER, SUPER_W, MAX_SUB, SUB_SPREAD = 40, 0.6, 8, 0.55
ZIPF, SIGMA_LO, SIGMA_HI = 1.0, 0.45, 0.9
TAU_IMG, TAU_TXT, Q_NOISE, Q_POW = 0.35, 3.5, 2.5, 1.0
SPECTRUM = 1.0  # image-side noise variance ~ rank**-SPECTRUM in a random basis; 0 = isotropic
CHUNK = 65536


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x


def _gauss(rng: np.random.Generator, shape, dim: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(dim))


def _world(n: int, dim: int, rng: np.random.Generator) -> dict:
    mu_img = _unit(_gauss(rng, (dim,), dim))
    r = _gauss(rng, (dim,), dim)
    r = _unit(r - (r @ mu_img) * mu_img)
    mu_txt = _unit(MU_COS * mu_img + np.sqrt(1 - MU_COS**2) * r)
    n_c = max(50, int(4 * np.sqrt(n)))
    sup = _unit(_gauss(rng, (N_SUPER, dim), dim))
    concepts = _unit(SUPER_W * sup[rng.integers(0, N_SUPER, n_c)] + _gauss(rng, (n_c, dim), dim))
    n_sub = rng.integers(1, MAX_SUB + 1, n_c)
    sub_owner = np.repeat(np.arange(n_c), n_sub)
    subs = _unit(concepts[sub_owner] + SUB_SPREAD * _gauss(rng, (len(sub_owner), dim), dim))
    sub_start = np.concatenate([[0], np.cumsum(n_sub)[:-1]])
    freq = 1.0 / rng.permutation(np.arange(1, n_c + 1)) ** ZIPF
    freq /= freq.sum()
    sigma = rng.uniform(SIGMA_LO, SIGMA_HI, n_c).astype(np.float32)
    lam = np.arange(1, dim + 1, dtype=np.float64) ** -SPECTRUM
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T  # rows: orthonormal directions
    shape = (np.sqrt(lam / lam.mean())[:, None] * basis).astype(np.float32)  # E|g @ shape|^2 = E|g|^2
    return dict(shape=shape, mu_img=mu_img, mu_txt=mu_txt, concepts=concepts, subs=subs, n_sub=n_sub,
                sub_start=sub_start, freq=freq, sigma=sigma)


def world(n: int, dim: int = 512, seed: int = 0) -> tuple[dict, np.random.Generator]:
    """The concept world of an ``n``-row corpus and the generator its rows and queries come from."""
    rng = np.random.default_rng(seed)
    return _world(n, dim, rng), rng


def pairs(w: dict, rng: np.random.Generator, n: int, dim: int = 512):
    """Yield ``(image_vecs, text_vecs)`` float32 unit rows, CHUNK rows at a time, ``n`` in all
    (a corpus larger than memory streams to disk from here)."""
    for s in range(0, n, CHUNK):
        m = min(CHUNK, n - s)
        c = rng.choice(len(w["freq"]), size=m, p=w["freq"])
        sub = w["sub_start"][c] + (rng.random(m) * w["n_sub"][c]).astype(np.int64)
        z = w["subs"][sub] + w["sigma"][c, None] * (_gauss(rng, (m, dim), dim) @ w["shape"])
        out = []
        for a, mu, tau, sh in ((A_IMG, w["mu_img"], TAU_IMG, w["shape"]), (A_TXT, w["mu_txt"], TAU_TXT, None)):
            g = _gauss(rng, (m, dim), dim)
            u = _unit(z + tau * (g if sh is None else g @ sh))
            u += a * mu
            out.append(_unit(u))
        yield out[0], out[1]


def queries(w: dict, rng: np.random.Generator, n_queries: int, dim: int = 512) -> np.ndarray:
    """Held-out class-name-like text queries, [n_queries, dim] float32 unit rows."""
    qp = w["freq"] ** Q_POW
    qc = rng.choice(len(qp), size=n_queries, p=qp / qp.sum())
    q = _unit(w["concepts"][qc] + Q_NOISE * _gauss(rng, (n_queries, dim), dim))
    q = _unit(q + A_TXT * w["mu_txt"])
    return q.astype(np.float32)


def generate(n: int, dim: int = 512, n_queries: int = 1000, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (image_vecs [n,dim], text_vecs [n,dim], query_vecs [n_queries,dim]), float32 unit rows."""
    w, rng = world(n, dim, seed)
    img = np.empty((n, dim), np.float32)
    txt = np.empty((n, dim), np.float32)
    for s, (a, b) in zip(range(0, n, CHUNK), pairs(w, rng, n, dim)):
        img[s:s + len(a)], txt[s:s + len(b)] = a, b
    return img, txt, queries(w, rng, n_queries, dim)


def describe(img: np.ndarray, txt: np.ndarray, q: np.ndarray, k: int = 50,
             sample: int = 2000, seed: int = 1, verbose: bool = True) -> dict:
    """Statistics that should look like CLIP: cone, modality gap, flat top-k for class-name queries."""
    rng = np.random.default_rng(seed)
    i = rng.choice(len(img), size=min(sample, len(img)), replace=False)
    a = img[i]
    ii = a @ a.T
    off = ~np.eye(len(i), dtype=bool)
    # same-concept proxy: each sampled image's nearest other image among a 20k-row block
    blk = img[: min(len(img), 20000)]
    nn = np.sort(a[:200] @ blk.T, axis=1)[:, -2]
    sims = np.empty((len(q), k), np.float32)
    for s in range(0, len(q), 100):  # exact top-k image similarities per query
        p = q[s:s + 100] @ img.T
        sims[s:s + 100] = -np.sort(-np.partition(p, -k, axis=1)[:, -k:], axis=1)
    gap = sims[:, 0] - sims[:, -1]
    st = {
        "img_img_cos": float(ii[off].mean()),
        "txt_txt_cos": float((txt[i] @ txt[i].T)[off].mean()),
        "img_txt_random_cos": float((a @ txt[i].T)[off].mean()),
        "img_txt_matched_cos": float(np.einsum("ij,ij->i", a, txt[i]).mean()),
        "img_img_top1pct_cos": float(np.quantile(ii[off], 0.99)),
        "img_nn_cos_in_20k": float(nn.mean()),
        "query_top1_sim": float(sims[:, 0].mean()),
        "query_top50_sim": float(sims[:, -1].mean()),
        "query_top1_minus_top50": float(gap.mean()),
        "query_gap_p10_p90": (float(np.quantile(gap, 0.1)), float(np.quantile(gap, 0.9))),
    }
    if verbose:
        for key, v in st.items():
            print(f"{key:26s} {v if isinstance(v, tuple) else round(v, 4)}")
    return st
