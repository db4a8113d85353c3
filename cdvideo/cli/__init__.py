"""The `cdvideo` command: a thin entry point that only registers subcommands.

Each subcommand module has `add_parser(subparsers)` and `run(args) -> int`. Known errors
(CdVideoError) and the expected failures of bad input (undecodable text, wrong types, OS errors such
as a full disk) become one line on stderr and exit code 2; anything else one line and a pointer to
CDVIDEO_DEBUG=1, which shows the traceback.
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
        importlib.import_module(f"cdvideo.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("CDVIDEO_DEBUG"):
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2


LINE_LIMIT = 300


def one_line(error: BaseException) -> str:
    """One line for any exception: cdvideo's own as they are, an OS or decoding failure (a full disk, a
    binary file given as text) named plainly, anything else with a pointer to the traceback."""
    if isinstance(error, CdVideoError):
        return str(error)  # written to be read (a prompt file's problems are listed one per line)
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > LINE_LIMIT:  # a message quoting a huge value stays one readable line
        text = text[:LINE_LIMIT] + "..."
    if isinstance(error, OSError):
        return f"{error.filename}: {error.strerror}" if error.filename and error.strerror else text
    if isinstance(error, UnicodeError):
        return f"a file is not UTF-8 text: {text}"
    if isinstance(error, MemoryError):
        return "out of memory: use smaller settings (frames, size) or --low-vram"
    return f"{type(error).__name__}: {text} (unexpected: run with CDVIDEO_DEBUG=1 for the traceback)"
