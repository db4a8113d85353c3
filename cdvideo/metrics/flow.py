"""Dense optical flow between frames, warping by a flow, and the forward-backward occlusion mask.

Flow comes from OpenCV (DIS by default, Farneback as an alternative); `none` is the zero flow,
i.e. no motion compensation, the baseline that shows what the flow contributes. Flows are
cached on the video so warping error, motion magnitude and dynamic degree compute them once.
"""

from __future__ import annotations

import numpy as np

from cdvideo.errors import ConfigError
from cdvideo.metrics.base import MetricUnavailableError, Video

FLOW_METHODS = ("dis", "farneback", "none")


def _cv2():
    try:
        import cv2
    except ImportError as error:
        # A dependency, but an install may lack it (a broken wheel, a headless image): only the flow metrics are lost.
        raise MetricUnavailableError(
            "optical flow needs OpenCV: pip install opencv-python-headless"
        ) from error
    return cv2


def flow_method_label(method: str) -> str:
    """The method name recorded beside every flow-based score, library version included."""
    if method == "none":
        return "none (no motion compensation)"
    return f"opencv-{method} {_cv2().__version__}"


def estimate_flow(source: np.ndarray, target: np.ndarray, method: str) -> np.ndarray:
    """Flow (h, w, 2) in pixels (dx, dy) with `source(x) ~ target(x + flow(x))`."""
    if method not in FLOW_METHODS:
        raise ConfigError(f"flow_method must be one of {', '.join(FLOW_METHODS)}, got {method!r}")
    h, w = source.shape[:2]
    if method == "none":
        return np.zeros((h, w, 2), np.float32)
    cv2 = _cv2()
    a = cv2.cvtColor(source, cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)
    if method == "dis":
        # MEDIUM preset: the accuracy/speed point OpenCV recommends for general video.
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return dis.calc(a, b, None)
    # Farneback with the parameters of OpenCV's own sample (pyr 0.5, 3 levels, window 15).
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def pair_flows(video: Video, method: str, direction: str) -> list[np.ndarray]:
    """Flows of every consecutive pair, `forward` (t -> t+1) or `backward` (t+1 -> t), cached."""
    key = ("flow", method, direction)
    if key not in video.cache:
        frames = video.frames
        pairs = zip(frames[:-1], frames[1:])
        if direction == "forward":
            video.cache[key] = [estimate_flow(a, b, method) for a, b in pairs]
        else:
            video.cache[key] = [estimate_flow(b, a, method) for a, b in pairs]
    return video.cache[key]


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)  # (h, w) each
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image(x + flow(x))` by bilinear sampling: brings frame t+1 back onto frame t's grid."""
    cv2 = _cv2()
    map_x, map_y = _sample_grid(flow)
    return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def inside_mask(flow: np.ndarray) -> np.ndarray:
    """Pixels whose flow target lies inside the frame (bool (h, w)); the rest left the view."""
    h, w = flow.shape[:2]
    map_x, map_y = _sample_grid(flow)
    return (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)


def occlusion_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Visible pixels (bool (h, w)) by the forward-backward check of Ruder et al. (2016), used by Lai et al. (2018).

    A pixel is occluded when `|F_fw + F_bw(x + F_fw)|^2 > 0.01 (|F_fw|^2 + |F_bw(x + F_fw)|^2) + 0.5`,
    and also when its flow leaves the frame (nothing there to compare with).
    """
    backward_at_target = warp(backward, forward)  # (h, w, 2)
    mismatch = np.sum((forward + backward_at_target) ** 2, axis=-1)
    magnitude = np.sum(forward**2, axis=-1) + np.sum(backward_at_target**2, axis=-1)
    return (mismatch <= 0.01 * magnitude + 0.5) & inside_mask(forward)
