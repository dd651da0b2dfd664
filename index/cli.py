"""``react embed`` and ``react index {build,tune,eval}``. Every default is read
from ``index.defaults`` (or ``react.config``), where the code takes it from too."""
from __future__ import annotations

import argparse
from pathlib import Path

from index import defaults as D
from react.config import DECODERS, DEFAULT_DECODER


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_embed_parser(sub)
    _add_index_parsers(sub)


def _add_embed_parser(sub: argparse._SubParsersAction) -> None:
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
    embed.add_argument("--part-size", type=int, default=D.PART_SIZE, metavar="N",
                       help=f"rows per part (default: {D.PART_SIZE})")
    embed.add_argument("--batch-size", type=int, default=None, metavar="B",
                       help=f"images per batch (default: {D.EMBED_BATCH_CPU} on CPU, {D.EMBED_BATCH_GPU} on a GPU)")
    embed.add_argument("--decoder", default=DEFAULT_DECODER, choices=DECODERS,
                       help="image decoding: gpu = nvjpeg + batched resize/crop/normalize on the GPU, cpu = "
                            "libjpeg-turbo in the workers + batched resize, pil = PIL per image; auto = gpu on CUDA, "
                            f"else pil (printed; default: {DEFAULT_DECODER})")
    embed.add_argument("--workers", type=int, default=None, metavar="W",
                       help=f"image-decoding worker processes (default: 0 on CPU, min({D.EMBED_GPU_WORKERS}, cpus) "
                            f"on CUDA)")
    embed.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    mode = embed.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep finished, valid parts; redo the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace embeddings already in EMB_DIR")
    embed.set_defaults(func=_embed)


def _add_query_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queries", default=None, metavar="QUERY.npy|EMB_DIR",
                   help="query vectors (.npy [n, dim]) or an embedding folder whose text side is sampled; "
                        "default: held-out caption embeddings of this corpus (T2I for the image index, T2T for text)")
    p.add_argument("--n-queries", type=int, default=D.N_QUERIES, metavar="N",
                   help=f"queries to sample (default: {D.N_QUERIES})")
    p.add_argument("--seed", type=int, default=D.SEED, help=f"sampling seed (default: {D.SEED})")


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-recall", type=float, default=D.TARGET_RECALL, metavar="R",
                   help=f"recall@k against exact search that the tuned setting must reach (default: {D.TARGET_RECALL})")
    p.add_argument("--k", type=int, default=D.K,
                   help=f"the k of recall@k; REACT retrieves top-k per query (default: {D.K})")


def _add_index_parsers(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="FAISS indices over an embedding folder: build, tune, eval",
                           description="Approximate nearest-neighbour indices over CLIP embeddings, chosen and tuned "
                           "by measured recall on the real (text-side) query distribution.")
    isub = index.add_subparsers(dest="index_command", metavar="{build,tune,eval}", required=True)

    build = isub.add_parser(
        "build", help="build and tune one index per modality",
        description="Build an index per modality over EMB_DIR. With --factory auto the candidates that fit the "
        "memory budget (HNSW32 graph; IVF{nlist}_HNSW32 inverted file; SQ8/OPQ+PQ codes when nothing else fits) "
        "are built on a sample, swept to the recall target, and the fastest that meets it is built over all rows "
        "and tuned again at full size. NaN and zero-norm rows are counted and skipped. The folder is written "
        "under a temporary name and renamed when complete.")
    build.add_argument("emb_dir", type=Path, metavar="EMB_DIR", help="embedding folder (react embed output or LAION's)")
    build.add_argument("--out", type=Path, required=True, metavar="INDEX_DIR", help="index folder to write")
    build.add_argument("--modality", default=D.MODALITY, choices=(*D.MODALITIES, "both"),
                       help=f"which embeddings to index: image (T2I), text (T2T) or both (default: {D.MODALITY})")
    build.add_argument("--factory", default=D.FACTORY, metavar="auto|FAISS_FACTORY",
                       help=f"'auto' to choose by measurement, or any faiss factory string, e.g. HNSW32, "
                            f"IVF4096_HNSW32,Flat, OPQ64_256,IVF65536_HNSW32,PQ64x8 (default: {D.FACTORY})")
    _add_target_args(build)
    _add_query_args(build)
    build.add_argument("--memory-gb", type=float, default=None, metavar="GB",
                       help="RAM budget for one index when choosing candidates (default: 60%% of physical memory)")
    build.add_argument("--sample-size", type=int, default=D.SAMPLE_SIZE, metavar="N",
                       help=f"rows the candidates are compared on before the full build (default: {D.SAMPLE_SIZE})")
    build.add_argument("--on-disk", action="store_true",
                       help="build inverted files in bounded memory: partial indices per chunk of rows, merged "
                            "into memory-mapped INDEX_DIR/<modality>.ivfdata lists (automatic for compressed codes "
                            "that exceed --memory-gb); an interrupted build resumes from its partial indices")
    build.add_argument("--spark-master", default=None, metavar="URL",
                       help="build the partial indices on Spark (spark://HOST:PORT, yarn, k8s://..., or local[N]); "
                            "executors must see EMB_DIR and INDEX_DIR's parent at the same paths. Implies --on-disk")
    build.add_argument("--overwrite", action="store_true", help="replace an existing INDEX_DIR")
    build.set_defaults(func=_index_build)

    tune = isub.add_parser("tune", help="re-pick the search parameters of a built index for a recall target",
                           description="Measure recall@k against exact search along efSearch/nprobe and store the "
                           "smallest setting that reaches the target in INDEX_DIR/index.json.")
    tune.add_argument("index_dir", type=Path, metavar="INDEX_DIR")
    _add_target_args(tune)
    _add_query_args(tune)
    tune.add_argument("--embeddings", type=Path, default=None, metavar="EMB_DIR",
                      help="the embedding folder the index was built from, if it moved")
    tune.set_defaults(func=_index_tune)

    ev = isub.add_parser("eval", help="recall@1/10/50 and queries/s along the search knob, next to exact search",
                         description="For each index in INDEX_DIR, sweep efSearch (or nprobe) and print recall@1/10/50 "
                         "and queries/s against exact IndexFlatIP search on the same queries, measured in this run.")
    ev.add_argument("index_dir", type=Path, metavar="INDEX_DIR")
    _add_query_args(ev)
    ev.add_argument("--embeddings", type=Path, default=None, metavar="EMB_DIR",
                    help="the embedding folder the index was built from, if it moved")
    ev.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="also write the tables as JSON")
    ev.set_defaults(func=_index_eval)


def _index_build(args: argparse.Namespace) -> int:
    from index.build import build_index

    build_index(args.emb_dir, args.out, modality=args.modality, factory=args.factory,
                target_recall=args.target_recall, k=args.k, queries=args.queries, n_queries=args.n_queries,
                memory_gb=args.memory_gb, sample_size=args.sample_size, seed=args.seed, overwrite=args.overwrite,
                on_disk=args.on_disk, spark_master=args.spark_master)
    print(args.out)
    return 0


def _index_tune(args: argparse.Namespace) -> int:
    from index.evaluate import retune_index

    retune_index(args.index_dir, target_recall=args.target_recall, k=args.k, queries=args.queries,
                 n_queries=args.n_queries, embeddings=args.embeddings, seed=args.seed)
    return 0


def _index_eval(args: argparse.Namespace) -> int:
    import json

    from index.evaluate import evaluate_index, print_report
    from react.schemas import write_text

    report = evaluate_index(args.index_dir, queries=args.queries, n_queries=args.n_queries,
                            embeddings=args.embeddings, seed=args.seed)
    print_report(report)
    if args.json:
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from index.embed import embed_corpus
    from react.progress import console

    result = embed_corpus(args.corpus, args.model, args.out, pretrained=args.pretrained, part_size=args.part_size,
                          batch_size=args.batch_size, workers=args.workers, decoder=args.decoder, device=args.device,
                          resume=args.resume, overwrite=args.overwrite)
    console.print(f"embedded {len(result['embedded'])} part(s), kept {len(result['skipped'])}: "
                  f"{result['count']} pairs, dim {result['dim']}, model {result['model']}")
    print(args.out)
    return 0
