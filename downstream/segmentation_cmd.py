"""``react eval segmentation``: the sub-command (parser + run); the work is in
downstream.segmentation. Heavy imports stay inside ``run_segmentation``."""
from __future__ import annotations

import argparse

from react.errors import ReactError

# Mirrors downstream.segmentation's defaults without importing torch at --help time.
DENOISE_THRESHOLD = 0.5
BACKGROUND_THRESHOLD = 0.3


def add_segmentation(tasks: argparse._SubParsersAction) -> None:
    from downstream.cli import add_common_args

    p = tasks.add_parser(
        "segmentation", help="zero-shot semantic segmentation from MaskCLIP dense features (mIoU)",
        description="Zero-shot semantic segmentation the MaskCLIP way: per-patch features from the last "
                    "image block's value path, scored against prompt-ensembled class text embeddings, "
                    "upsampled bilinearly to pixels. Reports mIoU, pixel accuracy, mean accuracy and "
                    "per-class IoU. DATASET: a directory with images/, masks/ (PNG label maps, same "
                    "stems), classes.txt (line i = class i) and optional SPLIT.txt / templates.txt / "
                    "meta.json; or an embedded corpus directory, which stands for its composed scenes.",
    )
    add_common_args(p)
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help="prompt templates: imagenet, simple, classname, or a file with one template per "
                        "line (default: the dataset's own templates.txt, the embedded corpus's, else imagenet)")
    p.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="resize each image so its shorter side is about PX pixels (whole patches) before "
                        "the image tower; the positional embedding is resized to match (default: the "
                        "model's own image size, e.g. 224 for ViT-B/16, 64 for the embedded base)")
    p.add_argument("--dense-mode", choices=("maskclip", "value"), default="maskclip",
                   help="last-block path: maskclip = value projection + residual + MLP as MaskCLIP's code; "
                        "value = value and output projection only (default: maskclip)")
    p.add_argument("--key-smoothing", action="store_true",
                   help="MaskCLIP key smoothing: average patch class probabilities weighted by the "
                        "cosine affinity of the last block's keys")
    p.add_argument("--prompt-denoising", action="store_true",
                   help="MaskCLIP prompt denoising: drop from an image's candidates every class whose "
                        "best patch probability is below --denoise-threshold")
    p.add_argument("--denoise-threshold", type=float, default=DENOISE_THRESHOLD, metavar="P",
                   help=f"probability threshold for --prompt-denoising (default: {DENOISE_THRESHOLD})")
    p.add_argument("--background", choices=("threshold", "prompts", "class"), default="threshold",
                   help="how a class named 'background' in classes.txt is scored: threshold = background "
                        "where no object class reaches --background-threshold; prompts = backdrop words "
                        "(background, sky, wall, floor, texture, ...) each competing as a candidate; "
                        "class = the word 'background' through the templates (default: threshold)")
    p.add_argument("--background-threshold", type=float, default=BACKGROUND_THRESHOLD, metavar="P",
                   help=f"class probability (with the model's logit scale) below which a pixel is background, for "
                        f"--background threshold (default: {BACKGROUND_THRESHOLD})")
    p.add_argument("--ignore-index", type=int, default=None, metavar="LABEL",
                   help="mask label that is not scored (default: meta.json's ignore_index, else 255)")
    p.set_defaults(func=run_segmentation)


def print_segmentation_table(result: dict, worst: int = 5) -> None:
    from downstream.cli import print_result

    m = result["metrics"]
    print_result(result, {"mIoU %": f"{100 * m['mIoU']:.2f}", "pixel acc %": f"{100 * m['pixel_accuracy']:.2f}",
                          "mean acc %": f"{100 * m['mean_accuracy']:.2f}", "images": str(m["num_images"]),
                          "classes": str(m["num_classes"])}, "IoU", worst)


def run_segmentation(args: argparse.Namespace) -> int:
    from downstream.cli import check_device, write_result
    from downstream.segdata import build_segmentation_dataset
    from downstream.segmentation import evaluate_segmentation
    from react.templates import DEFAULT_TEMPLATES, describe_templates, get_templates
    from react.models import load_model
    from react.progress import console

    # Cheap inputs first, before a model is loaded.
    if args.input_size is not None and args.input_size < 1:
        raise ReactError(f"--input-size must be >= 1, got {args.input_size}")
    for name, value in (("--denoise-threshold", args.denoise_threshold),
                        ("--background-threshold", args.background_threshold)):
        if not 0 < value < 1:
            raise ReactError(f"{name} must lie in (0, 1), got {value}")
    device = check_device(args.device)
    dataset = build_segmentation_dataset(args.dataset, split=args.split, ignore_index=args.ignore_index)
    if args.templates:
        templates, label = get_templates(args.templates), describe_templates(args.templates)
    elif dataset.templates:
        templates, label = dataset.templates, f"{dataset.name} (dataset's own)"
    else:
        templates, label = get_templates(DEFAULT_TEMPLATES), DEFAULT_TEMPLATES
    model = load_model(args.model, pretrained=args.pretrained, device=device)
    result = evaluate_segmentation(
        model, dataset, templates, templates_label=label, input_size=args.input_size, mode=args.dense_mode,
        key_smoothing=args.key_smoothing, prompt_denoising=args.prompt_denoising,
        denoise_threshold=args.denoise_threshold, background=args.background,
        background_threshold=args.background_threshold,
    )
    if args.out:
        path = write_result(result, args.out)
        console.log(f"wrote {path}")
    print_segmentation_table(result)
    return 0
