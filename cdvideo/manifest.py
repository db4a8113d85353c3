"""The batch manifest: one JSON line per item with its status, paths, seed, timings and error.

Each process appends its own records to `.manifest.partN.jsonl` (flushed line by line, so a killed
process loses at most the line it was writing); process 0 merges every part into `manifest.jsonl`,
in item order, with an atomic rename. The manifest is a report, not the source of truth: whether an
item is finished is read from its sidecar (see `cdvideo.batch.finished_sidecar`), so a stale or
missing manifest never makes a batch skip or redo work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from cdvideo.files import atomic_path

MANIFEST_NAME = "manifest.jsonl"
PART_GLOB = ".manifest.part*.jsonl"
# done: rendered by this run; skipped: finished by an earlier run; failed: see `error`;
# pending: not reached (the run was interrupted, or another process has not finished yet).
STATUSES = ("done", "skipped", "failed", "pending")


def part_path(out_dir: Path, process: int) -> Path:
    return out_dir / f".manifest.part{process}.jsonl"


class ManifestPart:
    """This process's records, appended and flushed one line at a time."""

    def __init__(self, out_dir: Path, process: int):
        self.path = part_path(out_dir, process)
        self._file = open(self.path, "a", encoding="utf-8")

    def add(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_records(paths: Iterable[Path]) -> dict[int, dict[str, Any]]:
    """Item index -> its latest record; a torn last line (a killed writer) is ignored."""
    records: dict[int, dict[str, Any]] = {}
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
                records[int(record["index"])] = record
            except (ValueError, KeyError, TypeError):
                continue
    return records


def merge_manifest(out_dir: Path, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write `manifest.jsonl` from every process's part; items without a record get their `pending` one.

    `pending` holds one record per planned item, in order, each with status "pending".
    """
    records = read_records(sorted(out_dir.glob(PART_GLOB)))
    merged = [records.get(record["index"], record) for record in pending]
    with atomic_path(out_dir / MANIFEST_NAME) as tmp:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in merged), encoding="utf-8")
    return merged


def remove_parts(out_dir: Path) -> None:
    for path in out_dir.glob(PART_GLOB):
        path.unlink(missing_ok=True)


def read_manifest(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return []
    return list(read_records([path]).values())
