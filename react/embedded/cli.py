"""``react corpus fetch-embedded`` and ``react base train-embedded``."""
from __future__ import annotations

import argparse
from pathlib import Path

from react.config import cache_dir


def add_parsers(sub: argparse._SubParsersAction) -> None:
    corpus = sub.add_parser("corpus", help="the embedded default corpus")
    csub = corpus.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    fetch = csub.add_parser(
        "fetch-embedded",
        help="build (once) and print the embedded corpus directory",
        description="Fetch Tux Paint stamps (Debian) and Noto emoji (npm) by package name, verify their "
        "checksums, convert and split them into pretraining / retrieval / downstream parts. Cached: a second "
        "run only prints the directory.",
    )
    fetch.add_argument("--cache", type=Path, default=None,
                       help=f"cache root (default: $REACT_CACHE or {cache_dir()})")
    fetch.add_argument("--fraction", type=float, default=1.0,
                       help="keep this fraction of every category, for quick tests (default: 1.0)")
    fetch.add_argument("--seed", type=int, default=0, help="seed of the deterministic split (default: 0)")
    fetch.add_argument("--pretraining-stride", type=int, default=None, metavar="N",
                       help="one web stamp in N of each folder is also pretraining material; 0: none is, so "
                       "only the retrieval corpus knows the stamps' domain (default: 4, the demo's corpus)")
    fetch.add_argument("--force", action="store_true", help="rebuild even if a cached corpus exists")
    fetch.set_defaults(func=_fetch)

    base = sub.add_parser("base", help="the embedded base CLIP")
    bsub = base.add_subparsers(dest="base_command", metavar="ACTION", required=True)
    train = bsub.add_parser(
        "train-embedded",
        help="train (or reuse) the embedded base CLIP and print its directory",
        description="Train a small open_clip ViT image tower against the locked MiniLM text encoder on the "
        "pretraining part of the embedded corpus. Deterministic for a seed; reused if already trained.",
    )
    train.add_argument("--out", type=Path, default=None,
                       help="model directory (default: <cache>/base/embedded-base-s<seed>)")
    train.add_argument("--corpus", type=Path, default=None,
                       help="corpus directory (default: the embedded corpus, fetched if needed)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    train.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    train.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's)")
    train.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's, 1e-3)")
    # The image tower's shape; defaults stay in BaseRecipe (react/embedded/base.py), the one definition.
    for flag, what in (("--image-size", "input side in pixels, a whole number of patches"),
                       ("--patch-size", "ViT patch side in pixels"),
                       ("--width", "ViT width, a multiple of 64"), ("--layers", "ViT blocks")):
        train.add_argument(flag, type=int, default=None, metavar="N", help=f"{what} (default: the recipe's)")
    train.add_argument("--pool", default=None, choices=("tok", "avg"),
                       help="image embedding: tok = the class token (as CLIP), avg = the mean patch token "
                            "(default: the recipe's)")
    train.add_argument("--mosaic-weight", type=float, default=None, metavar="W",
                       help="weight of the mosaic loss: 2x2 mosaics of training images, each quadrant's mean "
                            "output patch token contrasted with its image's caption, so patch features say "
                            "what they cover; 0 = off (default: the recipe's, 1)")
    train.add_argument("--photo-weight", type=int, default=None,
                       help="how many times more often stamps (photos, clip-art) are drawn than emoji "
                            "(default: the recipe's, 4; 1 samples uniformly)")
    train.add_argument("--force", action="store_true", help="retrain even if the output exists")
    train.set_defaults(func=_train)


def _fetch(args: argparse.Namespace) -> int:
    from react.embedded.corpus import fetch_embedded

    print(fetch_embedded(args.cache, fraction=args.fraction, seed=args.seed, force=args.force,
                         stride=args.pretraining_stride))
    return 0


def _train(args: argparse.Namespace) -> int:
    from react.embedded.base import BaseRecipe, check_mosaic_grid, is_current, train_base
    from react.embedded.corpus import fetch_embedded
    from react.errors import ReactError
    from react.models import CONFIG_FILE
    from react.progress import console

    recipe = BaseRecipe(seed=args.seed)
    if args.steps is not None:
        if args.steps < 1:
            raise ReactError(f"--steps must be positive, got {args.steps}")
        recipe.steps = args.steps
        recipe.warmup = min(recipe.warmup, max(1, args.steps // 10))
    if args.batch_size is not None:
        if args.batch_size < 2:
            raise ReactError(f"--batch-size must be at least 2, got {args.batch_size}")
        recipe.batch_size = args.batch_size
    if args.lr is not None:
        if not args.lr > 0:
            raise ReactError(f"--lr must be positive, got {args.lr}")
        recipe.lr = args.lr
    for name in ("image_size", "patch_size", "width", "layers"):
        value = getattr(args, name)
        if value is None:
            continue
        if value < 1:
            raise ReactError(f"--{name.replace('_', '-')} must be positive, got {value}")
        setattr(recipe, name, value)
    if args.pool is not None:
        recipe.pool_type = args.pool
    if args.mosaic_weight is not None:
        if not args.mosaic_weight >= 0:
            raise ReactError(f"--mosaic-weight must be 0 or more, got {args.mosaic_weight}")
        recipe.mosaic_weight = args.mosaic_weight
    if recipe.image_size % recipe.patch_size:
        raise ReactError(f"--image-size {recipe.image_size} is not a whole number of {recipe.patch_size}-px patches")
    check_mosaic_grid(recipe)  # before minutes of loading, not after
    if recipe.width % 64:
        raise ReactError(f"--width must be a multiple of 64 (the head width), got {recipe.width}")
    if args.photo_weight is not None:
        if args.photo_weight < 1:
            raise ReactError(f"--photo-weight must be at least 1, got {args.photo_weight}")
        recipe.photo_weight = args.photo_weight
    out = args.out or cache_dir() / "base" / f"embedded-base-s{args.seed}"
    corpus = args.corpus or fetch_embedded()
    if not (corpus / "pretraining.parquet").is_file():
        raise ReactError(f"not a corpus directory (no pretraining.parquet): {corpus}")
    if not args.force and is_current(out, corpus, recipe):
        print(out)
        return 0
    if (out / CONFIG_FILE).is_file() and not args.force:
        console.log(f"{out} was trained on another corpus version or recipe: retraining")
    train_base(corpus, out, recipe)
    print(out)
    return 0
