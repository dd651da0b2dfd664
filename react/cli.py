"""The ``react`` command: assembles the stages' sub-commands.

Stage packages are imported only when their command runs, so ``react --help``
is instant and the core never depends on a stage at import time.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from react.errors import ReactError

# Modules that each expose ``add_parsers(subparsers)``; their commands set
# ``func`` via set_defaults.
STAGES: tuple[str, ...] = ("react.embedded.cli", "downstream.cli", "index.cli", "retrieval_service.cli",
                           "index.download.cli", "customize.cli", "react.demo", "downstream.report_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="react",
        description="REACT: customize CLIP with image-text knowledge retrieved from a web-scale corpus.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `react COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version="react 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in STAGES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; ReactError becomes one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return int(func(args) or 0)
    except ReactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def main() -> None:
    sys.exit(run())

