"""Which videos an eval run covers: files, PNG-frame folders, plain folders and batch folders with a manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".webp")
MANIFEST_NAME = "manifest.jsonl"
# Manifest statuses of items with no video to score (`cdvideo batch`: the render failed or never ran).
NOT_RENDERED = ("failed", "pending")


@dataclass
class EvalItem:
    """One video to score, or a per-file error found before reading it (missing, unlistable, bad manifest line)."""

    path: Path
    label: str
    error: str | None = None
    skipped: str | None = None  # why it is not scored and not an error: the batch never rendered it
    manifest: Path | None = None  # the batch manifest that listed it
    record: dict[str, Any] | None = None  # its manifest line


def _is_frames_folder(folder: Path) -> bool:
    # Videos or a manifest win over PNGs: eval's own identity plots may sit beside the videos.
    try:
        names = [entry.name.lower() for entry in folder.iterdir()]
    except OSError:
        return False
    has_png = any(name.endswith(".png") for name in names)
    has_videos = any(name.endswith(VIDEO_SUFFIXES) for name in names)
    return has_png and not has_videos and MANIFEST_NAME not in names


def find_videos(inputs: list[str]) -> list[EvalItem]:
    """Expand command-line inputs into videos, in the order given (folders sorted by name)."""
    items: list[EvalItem] = []
    for given in inputs:
        path = Path(given)
        if not path.exists():
            items.append(EvalItem(path, given, error=f"not found: {given}"))
        elif path.is_file() or _is_frames_folder(path):
            items.append(EvalItem(path, given))
        elif (path / MANIFEST_NAME).is_file():
            items.extend(manifest_items(path / MANIFEST_NAME))
        else:
            items.extend(_folder_videos(path, given))
    return items


def _folder_videos(folder: Path, given: str) -> list[EvalItem]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        return [EvalItem(folder, given, error=f"cannot list folder {given}: {error.strerror or error}")]
    found = [
        EvalItem(entry, str(entry))
        for entry in entries
        if (entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES) or (entry.is_dir() and _is_frames_folder(entry))
    ]
    if not found:
        return [EvalItem(folder, given, error=f"no videos in {given} ({', '.join(VIDEO_SUFFIXES)} or PNG-frame folders)")]
    return found


def manifest_items(manifest: Path) -> list[EvalItem]:
    """Videos of a batch manifest (one JSON object per line with a `video` path relative to its folder)."""
    items = []
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        return [EvalItem(manifest, str(manifest), error=f"cannot read {manifest}: {error.strerror or error}")]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            video = record["video"]
        except (ValueError, KeyError, TypeError):
            items.append(
                EvalItem(manifest, f"{manifest}:{number}", error=f"{manifest} line {number}: not a JSON object with a \"video\" key")
            )
            continue
        item = EvalItem(manifest.parent / video, str(manifest.parent / video), manifest=manifest, record=record)
        if record.get("status") in NOT_RENDERED:
            item.skipped = f"not rendered (manifest status {record['status']})"
        items.append(item)
    return items
