"""Pieces shared by subcommands that load diffusion models: quiet library logging, warnings as lines."""

from __future__ import annotations

import re
import sys
import warnings


def quiet_libraries() -> None:
    """Keep the terminal for cdvideo's own progress: library chatter only on errors."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def warnings_as_lines() -> None:
    """Print `warnings.warn` messages as one `warning: ...` line each."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def slugify(text: str, limit: int = 60) -> str:
    """A safe file-name stem from free text: lowercase words joined by '-', nothing else."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "video"
