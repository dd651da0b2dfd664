"""``react eval detection``: the command line of downstream/detection.py."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from react.errors import ReactError

DATASET_HELP = (
    "one of: a directory with instances.json (COCO instances) and images/; a COCO instances "
    "JSON file (images from --images, default: images/ beside it); or the embedded corpus "
    "directory, whose composed scenes (held-out stamp cut-outs on generated backgrounds) are "
    "built once and cached under CORPUS/scenes/"
)


def add_detection_parser(tasks: argparse._SubParsersAction) -> None:
    from downstream.cli import add_common_args

    p = tasks.add_parser(
        "detection", help="zero-shot detection with given boxes (RegionCLIP's zero-shot setting)",
        description="Zero-shot detection with given boxes: each box is scored against prompt-ensembled "
                    "class text embeddings (softmax over classes), per-class NMS, COCO AP50 and "
                    "AP@[.5:.95] via pycocotools. Boxes outside their image are clipped, boxes with no "
                    "area skipped; both counted in the result.",
    )
    add_common_args(p)
    p.set_defaults(func=run_detection)
    # --dataset from add_common_args: explain the detection forms here.
    for action in p._actions:
        if action.dest == "dataset":
            action.help = DATASET_HELP
        if action.dest == "split":
            action.help = "ignored (a detection dataset is one instances file)"
        if action.dest == "batch_size":
            action.help = "crop only: boxes per forward pass (default: %(default)s)"
        if action.dest == "workers":
            action.help = "ignored (images are decoded one at a time, next to their boxes)"
    p.add_argument("--images", default=None, metavar="DIR",
                   help="images folder for an instances JSON given as --dataset (default: images/ beside it)")
    p.add_argument("--boxes", default="gt", metavar="gt|FILE",
                   help="boxes to score: gt (the ground-truth boxes, default) or a COCO-format "
                        "proposals/results JSON ([{image_id, bbox [x,y,w,h], score?}]; scores and "
                        "categories in it are ignored)")
    p.add_argument("--region-features", default="roi", choices=("roi", "crop"),
                   help="roi: RoIAlign over the image tower's dense (MaskCLIP value-path) patch "
                        "features, one forward pass per image (default); crop: encode each box cut "
                        "from the image and padded square, one forward pass per box")
    p.add_argument("--dense-size", type=int, default=None, metavar="PIXELS",
                   help="roi only: the longer image side fed to the tower, rounded to whole patches "
                        "(default: the tower's training size)")
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help="prompt templates: imagenet, simple, classname, or a file with one template per "
                        "line (default: the embedded corpus' own, else imagenet)")
    p.add_argument("--classnames", default=None, metavar="FILE",
                   help="class names to prompt with, one per line in category-id order "
                        "(default: the categories' names); must have one name per category")
    p.add_argument("--nms-iou", type=float, default=0.5, metavar="IOU",
                   help="IoU threshold of the per-class NMS (default: 0.5)")
    p.add_argument("--scenes", type=int, default=200, metavar="N",
                   help="embedded corpus only: number of composed scenes (default: 200)")
    p.add_argument("--scene-seed", type=int, default=0, metavar="SEED",
                   help="embedded corpus only: seed of the composed scenes (default: 0)")


def _read_classnames(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReactError(f"cannot read --classnames {path}: {exc.__class__.__name__}") from None
    return [line.strip() for line in lines if line.strip()]


def print_detection_table(result: dict, worst: int = 5) -> None:
    from downstream.cli import print_result

    m = result["metrics"]
    print_result(result, {"AP50 %": f"{100 * m['AP50']:.2f}", "AP %": f"{100 * m['AP']:.2f}",
                          "AP75 %": f"{100 * m['AP75']:.2f}", "images": str(m["num_images"]),
                          "boxes scored": str(m["num_boxes_scored"]), "classes": str(m["num_classes"])}, "AP50", worst)


def run_detection(args: argparse.Namespace) -> int:
    from downstream.cli import check_device, write_result
    from downstream.cocodata import load_instances, load_proposals, resolve_detection_dataset
    from downstream.detection import evaluate_detection
    from downstream.scenes import ensure_scenes, is_embedded_corpus
    from react.templates import describe_templates, get_templates
    from downstream.zeroshot import class_embeddings
    from react.models import load_model
    from react.progress import console
    from react.schemas import TEMPLATES_FILE

    # The cheap checks first, before scenes or a model are built.
    if args.batch_size < 1:
        raise ReactError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.dense_size is not None and args.dense_size < 1:
        raise ReactError(f"--dense-size must be >= 1, got {args.dense_size}")
    if not 0.0 < args.nms_iou <= 1.0:
        raise ReactError(f"--nms-iou must be in (0, 1], got {args.nms_iou}")
    device = check_device(args.device)
    classnames = _read_classnames(args.classnames) if args.classnames else None
    templates_arg = args.templates
    dataset_name = None
    if is_embedded_corpus(args.dataset):
        corpus = Path(args.dataset)
        scenes = ensure_scenes(corpus, n=args.scenes, seed=args.scene_seed)
        instances, images = resolve_detection_dataset(scenes)
        dataset_name = f"{corpus.resolve().name}-scenes"
        if templates_arg is None and (corpus / TEMPLATES_FILE).is_file():
            templates_arg = str(corpus / TEMPLATES_FILE)
    else:
        instances, images = resolve_detection_dataset(args.dataset, args.images)
    templates = get_templates(templates_arg)
    data = load_instances(instances, images, classnames)
    if dataset_name:
        data.name = dataset_name
    proposals, proposal_counts = (None, {}) if args.boxes == "gt" else load_proposals(args.boxes, data)

    model = load_model(args.model, pretrained=args.pretrained, device=device)
    start = time.perf_counter()
    text = class_embeddings(model, data.classnames, templates)
    metrics, per_class, details = evaluate_detection(
        model, data, text, boxes=proposals, region_features=args.region_features,
        dense_size=args.dense_size, nms_iou=args.nms_iou, batch_size=args.batch_size)
    result = {
        "task": "detection", "model": model.name, "dataset": data.name,
        "metrics": metrics, "per_class": per_class,
        "settings": {"boxes": args.boxes, "region_features": args.region_features,
                     "dense_size": details.pop("dense_size"), "nms_iou": args.nms_iou,
                     "templates": describe_templates(templates_arg), "num_templates": len(templates)},
        "counts": {**data.counts, **proposal_counts, **details},
        "seconds": round(time.perf_counter() - start, 2),
    }
    if args.out:
        path = write_result(result, args.out)
        console.log(f"wrote {path}")
    print_detection_table(result)
    return 0
