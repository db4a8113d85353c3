"""Pieces shared by subcommands that load diffusion models: quiet library logging, warnings as lines."""

from __future__ import annotations

import sys
import warnings

from cdvideo.files import slugify  # noqa: F401  (re-exported: subcommands name files with it)


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
