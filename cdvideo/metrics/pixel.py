"""Pixel metrics that need no model and no flow."""

from __future__ import annotations

import numpy as np

from cdvideo.metrics.base import EvalContext, MetricResult, Video


def temporal_flickering(video: Video, context: EvalContext) -> MetricResult:
    """Implements VBench's temporal flickering: `(255 - mean_t MAE(I_t, I_t+1)) / 255` (Huang et al., 2024)."""
    frames = video.frames.astype(np.int16)  # (f, h, w, 3); int16 so differences do not wrap around
    mae = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))  # (f-1,)
    per_pair = (255.0 - mae) / 255.0
    return MetricResult(value=float(per_pair.mean()), per_pair=per_pair.tolist(), details={"range": "0..1, 1 = no change"})
