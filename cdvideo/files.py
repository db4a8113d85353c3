"""Crash-safe writing: every output goes to a temporary name beside it and is renamed when complete.

A killed process therefore never leaves a truncated file under the final name, and a file that
already exists is replaced only by a complete new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path in a hidden `.NAME.*.partial` folder beside `path`.

    On success the temporary is renamed to `path`; on failure, or after the rename, the folder goes.

    The temporary name keeps the extension, since writers such as ffmpeg choose the format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file is written inside a private folder, not beside its final name: a writer that outlives a
    # killed process (imageio-ffmpeg starts ffmpeg in its own process group, and +faststart reopens the
    # output by name) cannot re-create anything once the next run has removed the folder.
    partial = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    tmp = partial if directory else partial / path.name
    try:
        if not directory:
            tmp.touch()
        yield tmp
        # mkdtemp creates folders readable by the owner only; give the result the usual permissions.
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        if directory and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # after a success: the empty private folder


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)


def write_yaml_atomic(data: Any, path: str | os.PathLike) -> Path:
    """YAML in the order given (dataclass fields stay in their declared order)."""
    import yaml

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return Path(path)


def slugify(text: str, limit: int = 60) -> str:
    """A safe file-name stem from free text: lowercase words joined by '-', nothing else."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "video"
