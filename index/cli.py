"""``react embed`` (``react index ...`` is added here as it is built)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser(
        "embed",
        help="CLIP image and text embeddings of a corpus, in the clip-retrieval / LAION layout",
        description="Embed every image-caption pair of CORPUS (a corpus directory or parquet with image_path, "
        "a folder of webdataset .tar shards, or an image folder with a .txt caption per image) into "
        "EMB_DIR/img_emb/img_emb_{i}.npy, text_emb/text_emb_{i}.npy (float16, L2-normalized) and "
        "metadata/metadata_{i}.parquet, row-aligned per part. Parts are written atomically; --resume skips "
        "finished ones. Under `accelerate launch` each process embeds the parts i with i %% N == rank.",
    )
    embed.add_argument("corpus", type=Path, metavar="CORPUS", help="corpus directory, parquet, shards or image folder")
    embed.add_argument("--model", required=True,
                       help="open_clip model name (with --pretrained) or a model directory")
    embed.add_argument("--pretrained", default=None, metavar="TAG|PATH", help="open_clip pretrained tag or checkpoint")
    embed.add_argument("--out", type=Path, required=True, metavar="EMB_DIR", help="output embedding folder")
    embed.add_argument("--part-size", type=int, default=100_000, metavar="N", help="rows per part (default: 100000)")
    embed.add_argument("--batch-size", type=int, default=256, metavar="B", help="images per batch (default: 256)")
    embed.add_argument("--workers", type=int, default=None, metavar="W",
                       help="image-decoding worker processes (default: 0 on CPU, min(8, cpus) on CUDA)")
    embed.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    mode = embed.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep finished, valid parts; redo the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace embeddings already in EMB_DIR")
    embed.set_defaults(func=_embed)


def _embed(args: argparse.Namespace) -> int:
    from index.embed import embed_corpus
    from react.progress import console

    result = embed_corpus(args.corpus, args.model, args.out, pretrained=args.pretrained, part_size=args.part_size,
                          batch_size=args.batch_size, workers=args.workers, device=args.device,
                          resume=args.resume, overwrite=args.overwrite)
    console.print(f"embedded {len(result['embedded'])} part(s), kept {len(result['skipped'])}: "
                  f"{result['count']} pairs, dim {result['dim']}, model {result['model']}")
    print(args.out)
    return 0
