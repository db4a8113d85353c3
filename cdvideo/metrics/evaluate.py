"""Run selected metrics over videos: per-metric unavailability and per-file errors never stop the others."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdvideo.errors import CdVideoError, ModelNotAvailableError
from cdvideo.metrics.base import EvalContext, MetricResult, MetricUnavailableError, Video
from cdvideo.metrics.inputs import load_video
from cdvideo.metrics.registry import get_metric


@dataclass
class Unavailable:
    """A metric that could not run for a reason outside the video (missing weights, prompt or references)."""

    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"unavailable": self.reason}


@dataclass
class VideoScores:
    """Every selected metric of one video, or the one error that kept the video from being read."""

    video: str  # as given or as listed in the manifest
    metrics: dict[str, MetricResult | Unavailable] = field(default_factory=dict)
    error: str | None = None
    num_frames: int | None = None
    size: tuple[int, int] | None = None  # (h, w)
    prompt: str | None = None
    manifest_record: dict[str, Any] | None = None  # the batch manifest line this video came from

    def value(self, name: str) -> float | None:
        result = self.metrics.get(name)
        if isinstance(result, MetricResult) and math.isfinite(result.value):
            return result.value
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "error": self.error,
            "frames": self.num_frames,
            "size": list(self.size) if self.size else None,
            "prompt": self.prompt,
            "metrics": {name: result.to_json() for name, result in self.metrics.items()},
        }


def evaluate_video(video: Video, names: list[str], context: EvalContext) -> dict[str, MetricResult | Unavailable]:
    """Each named metric on one video; missing weights or inputs make that metric Unavailable."""
    results: dict[str, MetricResult | Unavailable] = {}
    for name in names:
        try:
            results[name] = get_metric(name)(video, context)
        except (MetricUnavailableError, ModelNotAvailableError) as error:
            results[name] = Unavailable(str(error))
    return results


def evaluate_path(
    path: str | os.PathLike,
    names: list[str],
    context: EvalContext,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    prompt: str | None = None,
    label: str | None = None,
) -> VideoScores:
    """Read one video and score it; a bad file becomes `error` in the result instead of an exception."""
    scores = VideoScores(video=label or str(path))
    try:
        video = load_video(Path(path), stride=stride, max_frames=max_frames, prompt=prompt)
    except (CdVideoError, OSError, ValueError) as error:  # OSError: a frame Pillow cannot identify
        scores.error = _one_line(error)
        return scores
    scores.num_frames = video.num_frames
    scores.size = tuple(int(s) for s in video.frames.shape[1:3])
    scores.prompt = video.prompt
    try:
        scores.metrics = evaluate_video(video, names, context)
    except (CdVideoError, ValueError, RuntimeError, cv2_error()) as error:  # a 2x2 video: OpenCV refuses it
        scores.error = _one_line(error)
    return scores


def cv2_error() -> type[BaseException]:
    """OpenCV's exception class, which is not one of Python's (a stand-in where cv2 is not installed)."""
    try:
        import cv2

        return cv2.error
    except ImportError:
        return CdVideoError


def _one_line(error: BaseException) -> str:
    """The error's message on one line, without OpenCV's source location, cut to a readable length."""
    text = " ".join(str(error).split())
    if isinstance(error, cv2_error()) and not isinstance(error, CdVideoError):
        # "OpenCV(5.0.0) /io/.../dis_flow.cpp:1471: error: (-201:...) The input image must ..."
        return "OpenCV: " + text.split(") ", 2)[-1][:300]
    return text[:300] if isinstance(error, CdVideoError) else f"{type(error).__name__}: {text[:300]}"


def aggregate(all_scores: list[VideoScores], names: list[str]) -> dict[str, dict[str, Any]]:
    """Mean of each metric over the videos that have it (for dynamic_degree: the fraction of dynamic videos)."""
    summary = {}
    for name in names:
        values = [v for v in (scores.value(name) for scores in all_scores) if v is not None]
        summary[name] = {"mean": sum(values) / len(values) if values else None, "videos": len(values)}
    return summary
