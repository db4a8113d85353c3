"""The `cdvideo` command: a thin entry point that only registers subcommands.

Each subcommand module has `add_parser(subparsers)` and `run(args) -> int`. Known errors
(CdVideoError) become one line on stderr and exit code 2; CDVIDEO_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from cdvideo import __version__
from cdvideo.errors import CdVideoError

# Module names under cdvideo.cli, in the order `cdvideo --help` lists them. A subcommand is
# added by writing its module and naming it here.
SUBCOMMANDS = ["render", "batch", "concept", "motion", "train", "eval", "env"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdvideo",
        description="Personalized video generation with ClassDiffusion concepts and AnimateDiff.",
    )
    parser.add_argument("--version", action="version", version=f"cdvideo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"cdvideo.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"cdvideo.cli.{name}":
                continue  # subcommand not written yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    try:
        return int(args.run(args) or 0)
    except CdVideoError as error:
        if os.environ.get("CDVIDEO_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
