"""Metrics by name. Adding a metric is writing one function of the shared shape and naming it here."""

from __future__ import annotations

from typing import Callable

from cdvideo.errors import ConfigError
from cdvideo.metrics.base import EvalContext, MetricResult, Video
from cdvideo.metrics.consistency import background_consistency, clip_temporal_consistency, subject_consistency
from cdvideo.metrics.fidelity import clip_i, clip_t, dino_i
from cdvideo.metrics.motion import dynamic_degree, motion_magnitude
from cdvideo.metrics.pixel import temporal_flickering
from cdvideo.metrics.shapes import shapes_caption_match
from cdvideo.metrics.warping import warping_error

Metric = Callable[[Video, EvalContext], MetricResult]

# In report order: pixel and flow metrics first, then the Shapes judge (no weights, always available offline).
METRICS: dict[str, Metric] = {
    "temporal_flickering": temporal_flickering,
    "warping_error": warping_error,
    "motion_magnitude": motion_magnitude,
    "dynamic_degree": dynamic_degree,
    "shapes": shapes_caption_match,
    "clip_temporal_consistency": clip_temporal_consistency,
    "subject_consistency": subject_consistency,
    "background_consistency": background_consistency,
    "clip_t": clip_t,
    "clip_i": clip_i,
    "dino_i": dino_i,
}

# Metrics that need no model weights.
OFFLINE_METRICS = ("temporal_flickering", "warping_error", "motion_magnitude", "dynamic_degree", "shapes")


def get_metric(name: str) -> Metric:
    """The metric function registered under `name`."""
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None


def parse_metric_names(spec: str | None) -> list[str]:
    """`a,b` -> ["a", "b"] checked against the registry; None or `all` -> every metric."""
    if spec is None or spec.strip() == "all":
        return list(METRICS)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--metrics is empty ({spec!r}): name metrics separated by commas, or `all`")
    for name in names:
        get_metric(name)
    return list(dict.fromkeys(names))
