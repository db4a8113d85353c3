"""Crash-safe writing: every output goes to a temporary name beside it and is renamed when complete.

A killed process therefore never leaves a truncated file under the final name, and a file that
already exists is replaced only by a complete new one. A folder is replaced only if cdvideo wrote
it (it holds the OUTPUT_MARKER file), and never anything that is not a plain file or folder: a
user's folder or a device named as an output is refused, never emptied.
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

from cdvideo.errors import UnsafeOutputError

# Written into every folder cdvideo writes (PNG frames, converted models): only such a folder may be replaced.
OUTPUT_MARKER = ".cdvideo-output"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_replaceable(path: Path, directory: bool = False) -> None:
    """Refuse to replace what cdvideo did not write: a folder without OUTPUT_MARKER, a device, a link."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not (path.is_dir() or path.is_file()):
        raise UnsafeOutputError(f"{path} exists and is not a plain file or folder: cdvideo will not replace it; "
                                "choose another output path")
    if path.is_dir() and not (path / OUTPUT_MARKER).is_file():
        raise UnsafeOutputError(f"{path} is an existing folder that cdvideo did not write: it is left as it is; "
                                "choose a new output path")
    if path.is_dir() != directory:
        kind = "a folder" if path.is_dir() else "a file"
        raise UnsafeOutputError(f"{path} exists as {kind}; choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path in a hidden `.NAME.*.partial` folder beside `path`.

    On success the temporary is renamed to `path` (a folder gets OUTPUT_MARKER); on failure, or after
    the rename, the private folder goes, and whatever was at `path` before is left as it was.

    The temporary name keeps the extension, since writers such as ffmpeg choose the format by it.
    """
    path = Path(path)
    check_replaceable(path, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file is written inside a private folder, not beside its final name: a writer that outlives a
    # killed process (imageio-ffmpeg starts ffmpeg in its own process group, and +faststart reopens the
    # output by name) cannot re-create anything once the next run has removed the folder.
    partial = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    tmp = partial / path.name
    try:
        if directory:
            tmp.mkdir()
            (tmp / OUTPUT_MARKER).touch()
        else:
            tmp.touch()
        yield tmp
        # mkdtemp creates folders readable by the owner only; give the result the usual permissions.
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        check_replaceable(path, directory)  # again: something may have appeared there meanwhile
        if directory and path.exists():
            aside = partial / ".replaced"  # the old folder goes only once the new one is in place
            os.replace(path, aside)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(aside, path)
                raise
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # after a success: the empty private folder


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        # allow_nan=False: NaN/Infinity are not JSON, and a file other tools cannot read is no record.
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
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
