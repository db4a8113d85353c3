"""How much a video moves, reported beside consistency scores so that a still video is noticed."""

from __future__ import annotations

import numpy as np

from cdvideo.metrics.base import EvalContext, MetricResult, Video
from cdvideo.metrics.flow import flow_method_label, pair_flows


def _magnitudes(flow: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(flow**2, axis=-1))  # (h, w) pixels


def motion_magnitude(video: Video, context: EvalContext) -> MetricResult:
    """Mean optical-flow magnitude between consecutive frames, in pixels per frame pair."""
    per_pair = [float(_magnitudes(flow).mean()) for flow in pair_flows(video, context.flow_method, "forward")]
    return MetricResult(
        value=float(np.mean(per_pair)),
        per_pair=per_pair,
        details={"flow_method": flow_method_label(context.flow_method), "unit": "pixels per frame pair"},
    )


def top_motion(flow: np.ndarray, fraction: float = 0.05) -> float:
    """Mean of the largest `fraction` of flow magnitudes in one pair, as VBench's dynamic degree scores a pair."""
    magnitudes = np.sort(_magnitudes(flow).ravel())[::-1]
    count = max(1, int(magnitudes.size * fraction))
    return float(magnitudes[:count].mean())


def dynamic_degree(video: Video, context: EvalContext) -> MetricResult:
    """Implements VBench's dynamic degree (Huang et al., 2024): 1.0 if enough pairs move more than `6 min(h, w) / 256`."""
    per_pair = [top_motion(flow) for flow in pair_flows(video, context.flow_method, "forward")]
    h, w = video.frames.shape[1:3]
    threshold = 6.0 * min(h, w) / 256.0
    # VBench asks for round(4 f / 16) moving pairs; at least one, or a 2-frame clip would always be dynamic.
    required = max(1, round(4 * video.num_frames / 16.0))
    moving = sum(score > threshold for score in per_pair)
    return MetricResult(
        value=1.0 if moving >= required else 0.0,
        per_pair=per_pair,
        details={
            "flow_method": flow_method_label(context.flow_method),
            "threshold_pixels": threshold,
            "moving_pairs": int(moving),
            "required_pairs": int(required),
            "per_pair_unit": "top-5% flow, pixels",
            "range": "1 = dynamic, 0 = static; its mean over videos is VBench's dynamic degree",
        },
    )
