"""``react report``'s writers: one list of blocks rendered twice, as Markdown
that links its PNGs beside it and as HTML with every PNG inlined as a base64
data URI (one file to mail or archive: no external reference of any kind)."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from downstream.report.results import Table


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Figure:
    """A PNG inside the report directory, named relative to it."""

    filename: str
    caption: str


Block = Union[Heading, Paragraph, Bullets, Table, Figure]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _numeric_columns(table: Table) -> list[bool]:
    """Columns whose cells are all numbers (or "—") get right-aligned."""
    def numeric(cell: str) -> bool:
        return cell == "—" or re.match(r"^[+-]?\d", cell) is not None

    return [bool(table.rows) and all(numeric(row[i]) for row in table.rows if i < len(row))
            for i in range(len(table.header))]


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = [f"**{block.title}**", ""] if block.title else []
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("|" + "|".join(" ---: " if right else " --- " for right in _numeric_columns(block)) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            if block.caption:
                lines += ["", f"_{block.caption}_"]
            out.append("\n".join(lines))
        elif isinstance(block, Figure):
            out.append(f"![{block.caption}]({block.filename})\n\n_{block.caption}_")
        else:  # a new block type without a writer is a bug
            raise TypeError(f"unknown report block {type(block).__name__}")
    return "\n\n".join(out) + "\n"


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #212121; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f1f1f1; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td.text { text-align: left; }
caption { caption-side: top; font-weight: 600; text-align: left; padding-bottom: 0.3em; }
.note { color: #555; font-style: italic; margin-top: 0.2em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
figcaption { color: #555; font-style: italic; }
"""


def to_html(blocks: list[Block], directory: Path, title: str) -> str:
    """``directory`` holds the figures' PNGs, which are read and inlined."""
    esc = html.escape
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            rows = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.header) + "</tr>"]
            align = ["" if right else ' class="text"' for right in _numeric_columns(block)]
            rows += ["<tr>" + "".join(f"<td{a}>{esc(c)}</td>" for a, c in zip(align, row)) + "</tr>"
                     for row in block.rows]
            caption = f"<caption>{esc(block.title)}</caption>" if block.title else ""
            body.append(f"<table>{caption}{''.join(rows)}</table>")
            if block.caption:
                body.append(f'<p class="note">{esc(block.caption)}</p>')
        elif isinstance(block, Figure):
            data = base64.b64encode((Path(directory) / block.filename).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(block.caption)}</figcaption></figure>")
        else:
            raise TypeError(f"unknown report block {type(block).__name__}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
