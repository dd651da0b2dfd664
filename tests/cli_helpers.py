"""The ``react eval`` argument parser, as the CLI builds it, for tests that
parse a command line and call its function in-process."""
from __future__ import annotations

import argparse


def eval_parser() -> argparse.ArgumentParser:
    from downstream.cli import add_eval_parser

    parser = argparse.ArgumentParser(prog="react")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser
