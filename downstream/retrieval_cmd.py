"""``react eval retrieval``: the command line of image-text retrieval."""
from __future__ import annotations

import argparse

from react.errors import ReactError

EPILOG = """\
Dataset forms (--dataset):
  CORPUS_DIR                 the embedded corpus (downstream.parquet, column caption): one
                             caption per image, split test only
  KARPATHY.json [--images DIR]
                             a COCO/Flickr30K Karpathy-split JSON (dataset_coco.json,
                             dataset_flickr30k.json); images at DIR/filepath/filename
                             (DIR defaults to the JSON's folder); --split train includes restval
  DIR                        a folder with one dataset_*.json and the images under it
  WDS_DIR                    CLIP_benchmark retrieval webdataset: WDS_DIR/SPLIT/*.tar whose
                             samples hold an image and a .txt with one caption per line

Recall@k: image->text counts a hit when any of the image's captions is in its top k;
text->image when the caption's own image is. Ties count against the model.
"""


def add_retrieval(tasks: argparse._SubParsersAction) -> None:
    from downstream.cli import add_common_args

    p = tasks.add_parser(
        "retrieval", help="image->text and text->image recall@1/5/10 on a captioned image set",
        description="Image-text retrieval: image_to_text_R@{1,5,10} and text_to_image_R@{1,5,10}.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    p.add_argument("--images", default=None, metavar="DIR",
                   help="image root for a Karpathy-split JSON --dataset (default: the JSON's folder)")
    p.set_defaults(func=run_retrieval)


def print_retrieval_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["metrics"]
    table = Table(title=f"retrieval: {result['model']} on {result['dataset']} "
                        f"({m['num_images']} images, {m['num_captions']} captions)")
    table.add_column("direction")
    for k in (1, 5, 10):
        table.add_column(f"R@{k} %", justify="right")
    for direction, label in (("image_to_text", "image -> text"), ("text_to_image", "text -> image")):
        table.add_row(label, *(f"{100 * m[f'{direction}_R@{k}']:.2f}" for k in (1, 5, 10)))
    Console().print(table)


def run_retrieval(args: argparse.Namespace) -> int:
    from downstream.captioned import build_captioned_dataset
    from downstream.cli import check_device, resolve_workers, write_result
    from downstream.retrieval import evaluate_retrieval
    from react.models import load_model
    from react.progress import console

    if args.batch_size < 1:
        raise ReactError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = check_device(args.device)
    workers = resolve_workers(args.workers, device)
    dataset = build_captioned_dataset(args.dataset, split=args.split, images=args.images)
    model = load_model(args.model, pretrained=args.pretrained, device=device)
    result = evaluate_retrieval(model, dataset, batch_size=args.batch_size, num_workers=workers)
    if args.out:
        console.log(f"wrote {write_result(result, args.out)}")
    print_retrieval_table(result)
    return 0
