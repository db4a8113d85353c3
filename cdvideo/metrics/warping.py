"""Flow-compensated temporal error."""

from __future__ import annotations

import numpy as np

from cdvideo.metrics.base import EvalContext, MetricResult, Video
from cdvideo.metrics.flow import flow_method_label, occlusion_mask, pair_flows, warp


def warping_error(video: Video, context: EvalContext) -> MetricResult:
    """Implements the warping error of Lai et al. (2018): `sum M ||I_t - warp(I_t+1)||^2 / sum M`, RGB in [0, 1]."""
    method = context.flow_method
    forward = pair_flows(video, method, "forward")
    backward = pair_flows(video, method, "backward")
    frames = video.frames.astype(np.float32) / 255.0  # (f, h, w, 3)
    per_pair, visible = [], []
    for t, (flow_fw, flow_bw) in enumerate(zip(forward, backward)):
        mask = occlusion_mask(flow_fw, flow_bw)  # (h, w) bool
        warped = warp(frames[t + 1], flow_fw)  # (h, w, 3): frame t+1 seen from frame t
        squared = np.sum((frames[t] - warped) ** 2, axis=-1)  # (h, w)
        # A pair with every pixel occluded has nothing to compare: NaN, left out of the mean.
        per_pair.append(float(squared[mask].mean()) if mask.any() else float("nan"))
        visible.append(float(mask.mean()))
    scored = [v for v in per_pair if np.isfinite(v)]
    return MetricResult(
        value=float(np.mean(scored)) if scored else float("nan"),
        per_pair=per_pair,
        details={
            "flow_method": flow_method_label(method),
            "visible_fraction": float(np.mean(visible)),
            "range": "0..3, 0 = every visible pixel explained by the motion",
        },
    )
