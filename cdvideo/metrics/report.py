"""Eval results out: the printed tables, JSON, CSV and the `scores.jsonl` beside a batch manifest.

Every file is written to a temporary name in its folder and renamed when complete, so an
interrupted run never leaves a truncated report or annotation.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cdvideo.files import atomic_path
from cdvideo.metrics.base import MetricResult
from cdvideo.metrics.evaluate import Unavailable, VideoScores

SCORES_NAME = "scores.jsonl"


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file beside it, renamed when complete."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _number(value: float) -> str:
    # Fixed 4 decimals read best in a column, but would print small warping errors as 0.0000.
    if value != value:
        return "nan"
    return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3e}"


def _cell(result: MetricResult | Unavailable | None) -> str:
    if result is None:
        return ""
    if isinstance(result, Unavailable):
        return "n/a"
    return _number(result.value)


def _note(result: MetricResult | Unavailable) -> str:
    if isinstance(result, Unavailable):
        return f"unavailable: {result.reason}"
    parts = [str(result.details[key]) for key in ("flow_method", "model") if key in result.details]
    worst = result.details.get("worst_window")
    if worst:
        parts.append(
            f"slope {result.details['slope_per_frame']:+.2e}/frame, worst frames "
            f"{worst['first_frame']}-{worst['last_frame']} mean {worst['mean']:.4f}"
        )
    return "; ".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_video(scores: VideoScores, per_pair: bool = False) -> str:
    """One video's table: a row per metric (value and how it was measured), optionally a row per frame pair."""
    if scores.error:
        return f"{scores.video}\n  error: {scores.error}"
    h, w = scores.size or (0, 0)
    title = f"{scores.video}  ({scores.num_frames} frames, {w}x{h})"
    rows = [[name, _cell(result), _note(result)] for name, result in scores.metrics.items()]
    text = f"{title}\n{_table(['metric', 'value', 'notes'], rows)}"
    # A per-pair value can differ in kind from the video's value (dynamic_degree: pixels vs 0/1).
    pair_metrics = {
        name + (f" [{result.details['per_pair_unit']}]" if "per_pair_unit" in result.details else ""): result.per_pair
        for name, result in scores.metrics.items()
        if isinstance(result, MetricResult) and result.per_pair is not None
    }
    if per_pair and pair_metrics:
        pair_rows = [
            [f"{t}-{t + 1}", *(_number(values[t]) for values in pair_metrics.values())]
            for t in range(len(next(iter(pair_metrics.values()))))
        ]
        text += "\n\n" + _table(["pair", *pair_metrics], pair_rows)
    return text


def format_aggregate(summary: dict[str, dict[str, Any]], total: int, failed: int) -> str:
    """The run's table: each metric's mean over the videos that have it."""
    rows = [
        [name, "" if s["mean"] is None else _number(s["mean"]), f"{s['videos']}/{total}"] for name, s in summary.items()
    ]
    title = f"aggregate over {total - failed} of {total} videos" + (f" ({failed} failed)" if failed else "")
    return f"{title}\n{_table(['metric', 'mean', 'videos'], rows)}"


def write_json(path: Path, all_scores: list[VideoScores], summary: dict, settings: dict) -> Path:
    """Everything: settings, per-video results with per-pair / per-frame values, and the aggregate."""
    document = {
        "settings": settings,
        "videos": [scores.to_json() for scores in all_scores],
        "aggregate": summary,
    }
    return atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def write_csv(path: Path, all_scores: list[VideoScores], summary: dict, names: list[str]) -> Path:
    """One row per video (empty cell = unavailable or failed, see `notes`), then a `mean` row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["video", "frames", *names, "error", "notes"])
    for scores in all_scores:
        values = ["" if scores.value(name) is None else f"{scores.value(name):.6g}" for name in names]
        unavailable = [
            f"{name}: {result.reason}" for name, result in scores.metrics.items() if isinstance(result, Unavailable)
        ]
        writer.writerow([scores.video, scores.num_frames or "", *values, scores.error or "", "; ".join(unavailable)])
    means = ["" if summary[name]["mean"] is None else f"{summary[name]['mean']:.6g}" for name in names]
    writer.writerow(["mean", "", *means, "", ""])
    return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def annotate_manifest(manifest: Path, all_scores: list[VideoScores]) -> Path:
    """Write `scores.jsonl` beside the manifest: each scored manifest line plus `scores` and `eval_error`.

    The manifest itself is never modified, so a batch can be resumed or re-scored.
    """
    lines = []
    for scores in all_scores:
        if scores.manifest_record is None:
            continue
        record = dict(scores.manifest_record)
        record["scores"] = {name: scores.value(name) for name in scores.metrics}
        record["eval_error"] = scores.error
        lines.append(json.dumps(record))
    return atomic_write_bytes(manifest.parent / SCORES_NAME, ("\n".join(lines) + "\n").encode("utf-8"))


def refresh_gallery(batch_folder: Path) -> Path | None:
    """Rebuild the batch's `index.html` so it shows the new scores; only where `cdvideo batch` made one."""
    from cdvideo.gallery import INDEX_HTML, write_index_html
    from cdvideo.manifest import read_manifest

    if not (batch_folder / INDEX_HTML).is_file():
        return None
    return write_index_html(batch_folder, read_manifest(batch_folder))
