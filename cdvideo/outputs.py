"""Where a render may write: a video and its sidecar, and never over anything cdvideo did not write.

A render's output is two names, the video (`dog.mp4`, or a folder of PNG frames `dog`) and its
sidecar (`dog.json`). Both are checked before any model is loaded: an existing video may be replaced
only if a cdvideo sidecar names it (or it is a frames folder cdvideo marked, or it lies in a batch
folder cdvideo owns), an existing sidecar only if it is a cdvideo sidecar, and the folder must be
writable. The write itself then goes through cdvideo.files.atomic_path, which refuses once more.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cdvideo.errors import UnsafeOutputError
from cdvideo.files import OUTPUT_MARKER, check_replaceable
from cdvideo.sidecar import is_cdvideo_sidecar, sidecar_path

# A batch output folder holds this lock file (cdvideo.batch): every item name in it is cdvideo's.
BATCH_LOCK_NAME = ".cdvideo-batch.lock"
BATCH_MANIFEST_NAME = "manifest.jsonl"


def _in_batch_folder(path: Path) -> bool:
    return (path.parent / BATCH_LOCK_NAME).is_file()


def check_output(video: str | os.PathLike, format: str) -> None:
    """Refuse, before any work, a video path (and its sidecar) that cdvideo may not write."""
    video = Path(video)
    if video.name in ("", ".", "..") or video.resolve() == Path(video.anchor or "/").resolve():
        raise UnsafeOutputError(f"--out {str(video)!r} names a folder, not a video: give a new name such as "
                                f"{video / 'dog.mp4'}")
    sidecar = sidecar_path(video)
    suffix = video.suffix.lower().lstrip(".")
    if format == "frames" and suffix:
        raise UnsafeOutputError(f"--out {video.name!r}: a folder of PNG frames takes a path without an extension "
                                f"(such as {video.with_suffix('')}), or pass --format {suffix}")
    if format != "frames" and suffix != format:
        raise UnsafeOutputError(f"--out {video.name!r} does not end in .{format} (--format {format}): "
                                f"name it {video.with_suffix('.' + format).name}")
    in_batch = _in_batch_folder(video)
    if os.path.lexists(video):
        check_replaceable(video, directory=format == "frames")
        if format != "frames" and not in_batch and not is_cdvideo_sidecar(sidecar, video.name):
            raise UnsafeOutputError(f"{video} exists and cdvideo did not write it (no sidecar {sidecar.name} names "
                                    "it): it is left as it is; choose a new output path")
    if os.path.lexists(sidecar):
        check_replaceable(sidecar)
        if not is_cdvideo_sidecar(sidecar):
            raise UnsafeOutputError(f"{sidecar} exists and is not a cdvideo sidecar: a render of {video.name} would "
                                    "replace it; choose another output name")
    check_writable(video.parent)


def check_writable(folder: Path) -> None:
    """The nearest existing folder at or above `folder` takes new files (tried, not guessed from modes)."""
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UnsafeOutputError(f"cannot write under {folder}: {existing} is not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".cdvideo-probe.", dir=existing)
        os.rmdir(probe)
    except OSError as error:
        raise UnsafeOutputError(f"cannot write in {existing}: {error.strerror or error}; choose another --out") from None


def check_batch_folder(out_dir: str | os.PathLike) -> None:
    """A batch writes into a new or empty folder, or one an earlier batch wrote (it resumes there)."""
    out_dir = Path(out_dir)
    if not os.path.lexists(out_dir):
        check_writable(out_dir)
        return
    if out_dir.is_symlink() and not out_dir.is_dir() or not out_dir.is_dir():
        raise UnsafeOutputError(f"--out {out_dir} exists and is not a folder: a batch writes a folder of videos; "
                                "choose a new folder name")
    try:
        entries = {entry.name for entry in os.scandir(out_dir)}
    except OSError as error:
        raise UnsafeOutputError(f"cannot read the folder {out_dir}: {error.strerror or error}") from None
    if entries and not entries & {BATCH_LOCK_NAME, BATCH_MANIFEST_NAME, OUTPUT_MARKER}:
        raise UnsafeOutputError(f"--out {out_dir} is a folder of other files, not an earlier batch's: it is left as "
                                "it is; choose a new or empty folder")
    check_writable(out_dir)
