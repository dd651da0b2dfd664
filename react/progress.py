"""One look for every progress bar in the project."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class RateColumn(TextColumn):
    """Items per second, labelled with the unit of the task (``unit`` field)."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # noqa: ANN001
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return f"[cyan]{speed:,.1f} {unit}/s" if speed else ""


def progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )
