"""The stage's command line: ``react eval TASK`` and ``react report``.

Only parsers live here (every option, its help and its default, the defaults
read from downstream.defaults); each command's ``func`` is in
downstream.runners. Nothing heavy is imported, so ``react --help`` stays fast.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from downstream.defaults import (BACKGROUND_MODES, DEFAULT_BACKGROUND_THRESHOLD, DEFAULT_BATCH_SIZE,
                                 DEFAULT_DENOISE_THRESHOLD, DEFAULT_IGNORE_INDEX, DEFAULT_NMS_IOU,
                                 DEFAULT_SCENE_SEED, DEFAULT_SCENES, DEFAULT_SEEDS, DEFAULT_SHOTS, DEFAULT_SPLIT,
                                 DEFAULT_TRAIN_SPLIT, DENSE_MODES, REGION_MODES)
from downstream.report.build import REPORT_TITLE
from downstream.suite import SUITE_TASKS, run_suite
from downstream.runners import (run_detection, run_linear_probe, run_report, run_retrieval, run_segmentation,
                                run_zeroshot)
from react.templates import DEFAULT_TEMPLATES

LINEAR_PROBE_EPILOG = """\
Protocol: images are encoded once per split; each few-shot run draws SHOTS images per
class from the train split with its seed (classes with fewer use all theirs; the result
counts them), carves ~20% of those per class off as validation, picks the L2 strength
lambda there by a coarse sweep (1e-6..1e6, every 2 decades) and a finer one (every half
decade around the best), refits on all its images and scores the test split. The
full-shot run does the same with the whole train split.

The embedded corpus (downstream.parquet) has one split, as has an ImageFolder without
train/ and test/ (or val/) folders: each class is shuffled with seed 0, floor(n/2) of its
images train, the rest test; --train-split/--split are then ignored.
"""

RETRIEVAL_EPILOG = """\
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

DETECTION_DATASET_HELP = (
    "one of: a directory with instances.json (COCO instances) and images/; a COCO instances "
    "JSON file (images from --images, default: images/ beside it); or the embedded corpus "
    "directory, whose composed scenes (held-out stamp cut-outs on generated backgrounds) are "
    "built once and cached under CORPUS/scenes/"
)
SCENE_SPLIT_HELP = (
    f"embedded corpus: which half of the held-out stamps composes the scenes -- val for every "
    f"choice, test for the report (default: {DEFAULT_SPLIT}); an instances file has no splits and "
    "ignores it"
)


# --- react eval ---------------------------------------------------------------------

def add_common_args(parser: argparse.ArgumentParser, **helps: str) -> None:
    """Options every evaluation task takes: which model, which data, where to write.
    ``helps``: a task's own help text for some of them, by destination."""
    def help_for(dest: str, default: str) -> str:
        return helps.get(dest, default)

    parser.add_argument("--model", required=True, metavar="MODEL",
                        help=help_for("model", "open_clip model name (with --pretrained), a model directory "
                                               "(open_clip_config.json + open_clip_model.safetensors)"))
    parser.add_argument("--pretrained", default=None, metavar="TAG|PATH",
                        help=help_for("pretrained", "pretrained tag or checkpoint file for an open_clip model name"))
    parser.add_argument("--dataset", required=True, metavar="DATASET",
                        help=help_for("dataset", "corpus directory (downstream.parquet), ImageFolder directory, "
                                                 "or CLIP_benchmark webdataset directory (classnames.txt + "
                                                 "SPLIT/*.tar)"))
    parser.add_argument("--split", default=DEFAULT_SPLIT, metavar="SPLIT",
                        help=help_for("split", f"dataset split to evaluate (default: {DEFAULT_SPLIT}; ImageFolder "
                                               f"falls back to val)"))
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=help_for("batch_size", f"images per forward pass (default: {DEFAULT_BATCH_SIZE})"))
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help=help_for("workers", "image-decoding worker processes (default: 0 on CPU, up to 8 "
                                                 "on GPU)"))
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help=help_for("device", "torch device, e.g. cpu or cuda:0 (default: cuda if available)"))
    parser.add_argument("--out", default=None, metavar="RESULT.json",
                        help=help_for("out", "write the result JSON here (atomically); without it, only print"))


def add_zeroshot(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "zeroshot", help="zero-shot classification with prompt-ensemble class embeddings",
        description="Zero-shot classification: top-1, top-5 and mean per-class recall.",
    )
    add_common_args(p)
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help="prompt templates: imagenet, simple, classname, or a file with one template per "
                        f"line using {{}} or {{c}} (default: the dataset's own if it has them, else "
                        f"{DEFAULT_TEMPLATES})")
    p.set_defaults(func=run_zeroshot)


def add_linear_probe(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "linear-probe", help="few-shot and full-shot logistic regression on frozen image features",
        description="Linear probe (ELEVATER protocol): top-1 and mean per-class recall, full-shot "
                    "and few-shot (mean and sample std over seeds).",
        epilog=LINEAR_PROBE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    p.add_argument("--train-split", default=DEFAULT_TRAIN_SPLIT, metavar="SPLIT",
                   help=f"split the classifier is trained on (default: {DEFAULT_TRAIN_SPLIT})")
    p.add_argument("--shots", type=int, nargs="*", default=list(DEFAULT_SHOTS), metavar="K",
                   help=f"few-shot sizes, images per class (default: {' '.join(map(str, DEFAULT_SHOTS))}; "
                        f"none: full-shot only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[DEFAULT_SEEDS], metavar="S",
                   help=f"one number N: seeds 0..N-1; several numbers: those seeds (default: {DEFAULT_SEEDS})")
    p.add_argument("--text-init", action="store_true",
                   help="language-augmented head: start from and regularize towards the class-name "
                        "text embeddings x the model's logit scale (large lambda = zero-shot)")
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help=f"prompt templates for --text-init (default: the dataset's own, else {DEFAULT_TEMPLATES})")
    p.set_defaults(func=run_linear_probe)


def add_retrieval(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "retrieval", help="image->text and text->image recall@1/5/10 on a captioned image set",
        description="Image-text retrieval: image_to_text_R@{1,5,10} and text_to_image_R@{1,5,10}.",
        epilog=RETRIEVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    p.add_argument("--images", default=None, metavar="DIR",
                   help="image root for a Karpathy-split JSON --dataset (default: the JSON's folder)")
    p.set_defaults(func=run_retrieval)


def add_dense_mode(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--dense-mode", choices=DENSE_MODES, default=DENSE_MODES[0],
                   help=f"{prefix}the last block's path to patch features: maskclip = value projection + "
                        "residual + MLP as MaskCLIP's code; value = value and output projection only; "
                        "tokens = the block as it runs, attention included (towers trained for dense "
                        f"features, e.g. the embedded base with --mosaic-weight) (default: {DENSE_MODES[0]})")


def add_detection(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "detection", help="zero-shot detection with given boxes (RegionCLIP's zero-shot setting)",
        description="Zero-shot detection with given boxes: each box is scored against prompt-ensembled "
                    "class text embeddings (softmax over classes), per-class NMS, COCO AP50 and "
                    "AP@[.5:.95] via pycocotools. Boxes outside their image are clipped, boxes with no "
                    "area skipped; both counted in the result.",
    )
    add_common_args(p, dataset=DETECTION_DATASET_HELP,
                    split=SCENE_SPLIT_HELP,
                    batch_size="crop only: boxes per forward pass (default: %(default)s)",
                    workers="ignored (images are decoded one at a time, next to their boxes)")
    p.set_defaults(func=run_detection)
    p.add_argument("--images", default=None, metavar="DIR",
                   help="images folder for an instances JSON given as --dataset (default: images/ beside it)")
    p.add_argument("--boxes", default="gt", metavar="gt|FILE",
                   help="boxes to score: gt (the ground-truth boxes, default) or a COCO-format "
                        "proposals/results JSON ([{image_id, bbox [x,y,w,h], score?}]; scores and "
                        "categories in it are ignored)")
    p.add_argument("--region-features", default=REGION_MODES[0], choices=REGION_MODES,
                   help="roi: RoIAlign over the image tower's dense (MaskCLIP value-path) patch "
                        "features, one forward pass per image (default); crop: encode each box cut "
                        "from the image and padded square, one forward pass per box")
    p.add_argument("--dense-size", type=int, default=None, metavar="PIXELS",
                   help="roi only: the longer image side fed to the tower, rounded to whole patches "
                        "(default: the tower's training size)")
    add_dense_mode(p, "roi only: ")
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help="prompt templates: imagenet, simple, classname, or a file with one template per "
                        f"line (default: the embedded corpus' own, else {DEFAULT_TEMPLATES})")
    p.add_argument("--classnames", default=None, metavar="FILE",
                   help="class names to prompt with, one per line in category-id order "
                        "(default: the categories' names); must have one name per category")
    p.add_argument("--nms-iou", type=float, default=DEFAULT_NMS_IOU, metavar="IOU",
                   help=f"IoU threshold of the per-class NMS (default: {DEFAULT_NMS_IOU})")
    p.add_argument("--scenes", type=int, default=DEFAULT_SCENES, metavar="N",
                   help=f"embedded corpus only: number of composed scenes (default: {DEFAULT_SCENES})")
    p.add_argument("--scene-seed", type=int, default=DEFAULT_SCENE_SEED, metavar="SEED",
                   help=f"embedded corpus only: seed of the composed scenes (default: {DEFAULT_SCENE_SEED})")


def add_segmentation(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "segmentation", help="zero-shot semantic segmentation from MaskCLIP dense features (mIoU)",
        description="Zero-shot semantic segmentation the MaskCLIP way: per-patch features from the last "
                    "image block's value path, scored against prompt-ensembled class text embeddings, "
                    "upsampled bilinearly to pixels. Reports mIoU, pixel accuracy, mean accuracy and "
                    "per-class IoU. DATASET: a directory with images/, masks/ (PNG label maps, same "
                    "stems), classes.txt (line i = class i) and optional SPLIT.txt / templates.txt / "
                    "meta.json; or an embedded corpus directory, which stands for its composed scenes.",
    )
    add_common_args(p, split=f"split list SPLIT.txt to read (default: {DEFAULT_SPLIT}; without it, every "
                              "image). " + SCENE_SPLIT_HELP)
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help="prompt templates: imagenet, simple, classname, or a file with one template per "
                        "line (default: the dataset's own templates.txt, the embedded corpus's, else "
                        f"{DEFAULT_TEMPLATES})")
    p.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="resize each image so its shorter side is about PX pixels (whole patches) before "
                        "the image tower; the positional embedding is resized to match (default: the "
                        "model's own image size, e.g. 224 for ViT-B/16, 64 for the embedded base)")
    add_dense_mode(p)
    p.add_argument("--key-smoothing", action="store_true",
                   help="MaskCLIP key smoothing: average patch class probabilities weighted by the "
                        "cosine affinity of the last block's keys")
    p.add_argument("--prompt-denoising", action="store_true",
                   help="MaskCLIP prompt denoising: drop from an image's candidates every class whose "
                        "best patch probability is below --denoise-threshold")
    p.add_argument("--denoise-threshold", type=float, default=DEFAULT_DENOISE_THRESHOLD, metavar="P",
                   help=f"probability threshold for --prompt-denoising (default: {DEFAULT_DENOISE_THRESHOLD})")
    p.add_argument("--background", choices=BACKGROUND_MODES, default=BACKGROUND_MODES[0],
                   help="how a class named 'background' in classes.txt is scored: threshold = background "
                        "where no object class reaches --background-threshold; prompts = backdrop words "
                        "(background, sky, wall, floor, texture, ...) each competing as a candidate; "
                        f"class = the word 'background' through the templates (default: {BACKGROUND_MODES[0]})")
    p.add_argument("--background-threshold", type=float, default=DEFAULT_BACKGROUND_THRESHOLD, metavar="P",
                   help=f"class probability (with the model's logit scale) below which a pixel is background, for "
                        f"--background threshold (default: {DEFAULT_BACKGROUND_THRESHOLD})")
    p.add_argument("--ignore-index", type=int, default=None, metavar="LABEL",
                   help=f"mask label that is not scored (default: meta.json's ignore_index, else "
                        f"{DEFAULT_IGNORE_INDEX})")
    p.set_defaults(func=run_segmentation)


def add_suite(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "suite", help="zero-shot on every task of the embedded suite; with --customized, an ELEVATER-style report",
        description="Zero-shot top-1 on each task of the embedded evaluation suite (stamps: the held-out "
                    "stamps customization targets; emoji-twemoji: Twitter's emoji, a vendor held out of "
                    "pretraining, in 20 classes; stamp-scenes: the held-out stamps on textured scenes). With "
                    "--customized, the base and each run are scored and OUT/suite_report.{md,json} gives per "
                    "task the gain with its 95 % interval, the average over tasks, and wins/ties/losses "
                    "(tie: the interval contains 0).",
        epilog="example: react eval suite --model out/demo/base --customized out/demo/run "
               "out/demo/runs/gated-s1 out/demo/runs/gated-s2 --split val --out out/suite-val",
    )
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="the base: a model directory, a customization run folder, or an open_clip name")
    p.add_argument("--pretrained", default=None, metavar="TAG|PATH",
                   help="pretrained tag or checkpoint file, for an open_clip model name as --model")
    p.add_argument("--customized", nargs="+", default=None, metavar="RUN",
                   help="customized models or run folders, one per seed: each is scored and compared with "
                        "--model (needs --out)")
    p.add_argument("--corpus", default=None, metavar="CORPUS_DIR",
                   help="embedded corpus directory; the suite's tasks are built from it and cached under "
                        "CORPUS_DIR/suite/ (default: the cached embedded corpus, built on first use)")
    p.add_argument("--split", default=DEFAULT_SPLIT, choices=("val", "test"),
                   help="half of every task to score: val for choosing anything, test for the final report "
                        f"(default: {DEFAULT_SPLIT})")
    p.add_argument("--tasks", nargs="+", default=list(SUITE_TASKS), metavar="TASK",
                   help=f"tasks to score (default: all: {' '.join(SUITE_TASKS)})")
    p.add_argument("--label", default="base", metavar="NAME", help="name of --model in the report (default: base)")
    p.add_argument("--customized-label", default="customized", metavar="NAME",
                   help="name of the --customized runs in the report (default: customized)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"images per forward pass (default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="image-decoding worker processes (default: 0 on CPU, up to 8 on GPU)")
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write each model's suite result (NAME.json) and, with --customized, "
                        "suite_report.{md,json} here (atomically); without it, only print")
    p.set_defaults(func=run_suite)


# The tasks of ``react eval``, in the order --help lists them.
TASKS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_zeroshot, add_linear_probe, add_retrieval, add_detection, add_segmentation, add_suite]


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` and its task sub-commands on the top-level subparsers."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a model on a downstream task",
        description="Evaluate a model on a downstream task; writes a result JSON (see --out).",
    )
    tasks = parser.add_subparsers(dest="eval_task", metavar="TASK", required=True)
    for add in TASKS:
        add(tasks)
    return parser


# --- react report -------------------------------------------------------------------

def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` on the top-level subparsers."""
    p = subparsers.add_parser(
        "report", help="compare models' result files in a Markdown + HTML report",
        description="Put the results of several models (base, customized, controls) side by side: one table "
                    "per task and dataset with each model's gain over the base (in points), a sorted per-class "
                    "gain chart for classification (and any task with per-class numbers), few-shot curves for "
                    "linear-probe results, and per-class similarity histograms of the retrieved subset. Writes "
                    "REPORT_DIR/report.md (PNGs beside it) and REPORT_DIR/report.html (figures inlined, no "
                    "external references).",
        epilog="example: react report base=out/demo/results/base_zeroshot.json "
               "gated=out/demo/results/customized_zeroshot.json --subset out/demo/subset.parquet "
               "--summary out/demo/summary.json --out out/demo/report",
    )
    p.add_argument("results", nargs="+", metavar="[LABEL=]RESULT.json",
                   help="result files from `react eval` (any tasks, any models); LABEL= names the model "
                        "in the report (default: the result's \"model\" field, or --label)")
    p.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR",
                   help="report directory; replaced atomically if it already holds a report")
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="model label for the result files without LABEL=, in order; repeat once per such file")
    p.add_argument("--base", default=None, metavar="LABEL",
                   help="the model the gains are measured against (default: the first result's model)")
    p.add_argument("--subset", type=Path, default=None, metavar="SUBSET.parquet",
                   help="retrieved subset (`react retrieve` output: similarity + classes columns): adds the "
                        "per-class similarity histograms")
    p.add_argument("--summary", type=Path, default=None, metavar="SUMMARY.json",
                   help="the run's summary.json (`react demo`): adds its headline (corpus sizes, index, "
                        "subset rows, timings) at the top")
    p.add_argument("--title", default=REPORT_TITLE, metavar="TEXT",
                   help="report title (default: %(default)s)")
    p.set_defaults(func=run_report)
    return p


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """The spelling react/cli.py looks for on every stage (entry point group
    ``react.commands``): ``eval`` and ``report``."""
    add_eval_parser(subparsers)
    add_report_parser(subparsers)
