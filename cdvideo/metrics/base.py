"""The shapes every metric shares: the video it reads, the context it runs in, the result it returns.

Every metric is a function `metric(video: Video, context: EvalContext) -> MetricResult`, as
VBench's dimensions share one shape; `cdvideo.metrics.registry` looks them up by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cdvideo.errors import CdVideoError, VideoIOError
from cdvideo.metrics.backbones import DEFAULT_MODELS, BackboneLoader


class MetricUnavailableError(CdVideoError):
    """A metric cannot run for this video (no prompt, no reference images); the others still do."""


class VideoTooShortError(VideoIOError):
    """A video has fewer frames than temporal metrics need (two)."""


@dataclass
class Video:
    """Sampled uint8 frames (f, h, w, 3) of one video, its prompt and a per-video cache."""

    frames: np.ndarray  # (f, h, w, 3) uint8, already sampled by stride / max_frames
    path: Path | None = None
    prompt: str | None = None
    fps: float = 0.0
    frame_indices: list[int] | None = None  # positions of the sampled frames in the file
    # Embeddings and flows shared by several metrics of the same video, keyed by what produced them.
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class EvalContext:
    """What metrics need beyond the video: settings, reference images and the model loader."""

    device: str = "cpu"
    batch_size: int = 16  # frames per forward pass of an embedding model
    flow_method: str = "dis"  # see cdvideo.metrics.flow.FLOW_METHODS
    all_pairs: bool = False  # clip_temporal_consistency over all frame pairs (Tune-A-Video) instead of consecutive
    identity_window: int = 4  # frames in the sliding window whose lowest mean is the worst identity stretch
    models: dict[str, str] = field(default_factory=dict)  # metric name -> hub id or local dir (overrides defaults)
    reference_images: list[np.ndarray] | None = None  # uint8 (h, w, 3) each, any sizes
    loader: BackboneLoader | None = None  # created on first use
    # Reference-image embeddings, shared by every video of a run.
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def model_for(self, metric: str) -> str:
        """The model id a metric uses: the user's override for that metric, else its default."""
        return self.models.get(metric, DEFAULT_MODELS[metric])

    def backbones(self) -> BackboneLoader:
        """The run's model loader (one load per model id and device, failures remembered)."""
        if self.loader is None:
            self.loader = BackboneLoader(device=self.device)
        return self.loader


@dataclass
class MetricResult:
    """One metric's score for one video, with the per-pair / per-frame values behind it."""

    value: float  # the video's score; NaN when no pair could be scored
    per_pair: list[float] | None = None  # one value per consecutive frame pair (t, t+1)
    per_frame: list[float] | None = None  # one value per sampled frame
    details: dict[str, Any] = field(default_factory=dict)  # method, model id, thresholds, ...

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": _finite_or_none(self.value)}
        if self.per_pair is not None:
            out["per_pair"] = [_finite_or_none(v) for v in self.per_pair]
        if self.per_frame is not None:
            out["per_frame"] = [_finite_or_none(v) for v in self.per_frame]
        out.update(self.details)
        return out


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN; a pair that could not be scored (fully occluded) is written as null.
    value = float(value)
    return value if math.isfinite(value) else None

