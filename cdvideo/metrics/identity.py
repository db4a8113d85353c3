"""Identity over time: how a per-frame fidelity curve drifts, and its worst stretch."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def identity_over_time(curve: Sequence[float], frame_indices: Sequence[int], window: int) -> dict[str, Any]:
    """Least-squares slope per source frame and the lowest mean over `window` consecutive sampled frames."""
    values = np.asarray(curve, dtype=np.float64)  # (f,)
    positions = np.asarray(frame_indices, dtype=np.float64)  # (f,) frame numbers in the file
    # Slope against file frame numbers, so clips sampled with different strides stay comparable.
    slope = float(np.polyfit(positions, values, 1)[0]) if len(values) >= 2 else 0.0
    window = max(1, min(window, len(values)))
    means = np.convolve(values, np.ones(window) / window, mode="valid")  # (f - window + 1,)
    start = int(np.argmin(means))
    return {
        "slope_per_frame": slope,
        "worst_window": {
            "first_frame": int(frame_indices[start]),
            "last_frame": int(frame_indices[start + window - 1]),
            "frames": window,
            "mean": float(means[start]),
        },
    }
