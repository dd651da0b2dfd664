"""The ``react`` command: assembles the sub-commands the stages register
(entry point group ``react.commands``, see react.plugins), so the core never
names a stage.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from react import plugins
from react.errors import ReactError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="react",
        description="REACT: customize CLIP with image-text knowledge retrieved from a web-scale corpus.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `react COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version="react 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in plugins.registered(plugins.COMMANDS).values():
        entry.load()(sub)  # add_parsers(subparsers); each command sets ``func`` via set_defaults
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

