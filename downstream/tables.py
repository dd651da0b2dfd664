"""What ``react eval TASK`` prints: a result's headline figures as rich tables
(the result JSON itself is written by downstream.runners)."""
from __future__ import annotations


def print_result(result: dict, headline: dict[str, str], per_class: str, worst: int = 5) -> None:
    """A result's headline figures (column -> formatted value), then its
    ``worst`` classes by the per-class metric named ``per_class``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['task']}: {result['model']} on {result['dataset']}")
    for column in headline:
        table.add_column(column, justify="right")
    table.add_row(*headline.values())
    console = Console()
    console.print(table)
    ranked = sorted(result["per_class"].items(), key=lambda kv: (kv[1], kv[0]))[:worst]
    if ranked:
        low = Table(title=f"{len(ranked)} worst classes")
        low.add_column("class")
        low.add_column(f"{per_class} %", justify="right")
        for name, value in ranked:
            low.add_row(name, f"{100 * value:.1f}")
        console.print(low)


def print_classification_table(result: dict, worst: int = 5) -> None:
    """Zero-shot: headline metrics in %, then the classes the model gets wrong most."""
    m = result["metrics"]
    print_result(result, {"top-1 %": f"{100 * m['top1']:.2f}", "top-5 %": f"{100 * m['top5']:.2f}",
                          "mean per-class recall %": f"{100 * m['mean_per_class_recall']:.2f}",
                          "images": str(m["num_images"]), "classes": str(m["num_classes"])}, "recall", worst)


def print_linear_probe_table(result: dict) -> None:
    """One row per shot count (mean ± std over seeds, the chosen lambdas), then full-shot."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"linear-probe: {result['model']} on {result['dataset']}")
    for column in ("shots", "top-1 %", "mean per-class recall %", "lambda"):
        table.add_column(column, justify="right")
    for run in result["fewshot"]:
        lams = ", ".join(f"{x:.0e}" for x in run["lambda"])
        table.add_row(str(run["shots"]), f"{100 * run['top1_mean']:.2f} ± {100 * run['top1_std']:.2f}",
                      f"{100 * run['mean_per_class_recall_mean']:.2f} ± "
                      f"{100 * run['mean_per_class_recall_std']:.2f}", lams)
    m = result["metrics"]
    table.add_row("full", f"{100 * m['top1']:.2f}", f"{100 * m['mean_per_class_recall']:.2f}",
                  f"{result['linear_probe']['full_shot_lambda']:.0e}")
    Console().print(table)


def print_retrieval_table(result: dict) -> None:
    """Recall@1/5/10 in both directions."""
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


def print_detection_table(result: dict, worst: int = 5) -> None:
    """AP50 / AP / AP75 and counts, then the worst classes by AP50."""
    m = result["metrics"]
    print_result(result, {"AP50 %": f"{100 * m['AP50']:.2f}", "AP %": f"{100 * m['AP']:.2f}",
                          "AP75 %": f"{100 * m['AP75']:.2f}", "images": str(m["num_images"]),
                          "boxes scored": str(m["num_boxes_scored"]), "classes": str(m["num_classes"])}, "AP50", worst)


def print_segmentation_table(result: dict, worst: int = 5) -> None:
    """mIoU / pixel and mean accuracy, then the worst classes by IoU."""
    m = result["metrics"]
    print_result(result, {"mIoU %": f"{100 * m['mIoU']:.2f}", "pixel acc %": f"{100 * m['pixel_accuracy']:.2f}",
                          "mean acc %": f"{100 * m['mean_accuracy']:.2f}", "images": str(m["num_images"]),
                          "classes": str(m["num_classes"])}, "IoU", worst)
