"""The identity-over-time plot: per-frame CLIP-I / DINO-I curves of one video as a PNG, drawn with Pillow."""

from __future__ import annotations

import io
from pathlib import Path

from cdvideo.metrics.base import MetricResult
from cdvideo.metrics.report import atomic_write_bytes

WIDTH, HEIGHT = 640, 360
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 56, 40
COLORS = {"dino_i": (31, 119, 180), "clip_i": (255, 127, 14)}  # matplotlib's first two, familiar to readers
WORST_ALPHA = 48  # translucent bands, so overlapping worst windows of two curves stay visible


def identity_curves(metrics: dict[str, object]) -> dict[str, MetricResult]:
    """The metrics of a video that carry an identity curve (clip_i / dino_i with per-frame values)."""
    return {
        name: result
        for name, result in metrics.items()
        if name in COLORS and isinstance(result, MetricResult) and result.per_frame
    }


def draw_identity_plot(curves: dict[str, MetricResult], title: str, path: Path) -> Path:
    """Draw each curve against source frame numbers, shade each worst window, write the PNG atomically."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (WIDTH, HEIGHT), "white")
    left, right, top, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM

    frames = [i for result in curves.values() for i in result.details["frame_indices"]]
    values = [v for result in curves.values() for v in result.per_frame]
    x_min, x_max = min(frames), max(max(frames), min(frames) + 1)
    # Pad the value range so a flat curve is drawn mid-plot instead of on an edge.
    y_min, y_max = min(values), max(values)
    pad = max((y_max - y_min) * 0.1, 0.01)
    y_min, y_max = y_min - pad, y_max + pad

    def to_xy(frame: float, value: float) -> tuple[float, float]:
        x = left + (frame - x_min) / (x_max - x_min) * (right - left)
        y = bottom - (value - y_min) / (y_max - y_min) * (bottom - top)
        return x, y

    bands = Image.new("RGBA", image.size, (0, 0, 0, 0))
    for name, result in curves.items():
        worst = result.details["worst_window"]
        x0, _ = to_xy(worst["first_frame"], y_min)
        x1, _ = to_xy(worst["last_frame"], y_min)
        ImageDraw.Draw(bands).rectangle([x0, top, max(x1, x0 + 1), bottom], fill=(*COLORS[name], WORST_ALPHA))
    image = Image.alpha_composite(image, bands)
    draw = ImageDraw.Draw(image)

    draw.rectangle([left, top, right, bottom], outline="black")
    for fraction in (0.0, 0.5, 1.0):
        value = y_min + fraction * (y_max - y_min)
        _, y = to_xy(x_min, value)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((4, y - 6), f"{value:.3f}", fill="black")
    for frame in (x_min, (x_min + x_max) // 2, x_max):
        x, _ = to_xy(frame, y_min)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 6, bottom + 6), str(frame), fill="black")
    draw.text(((left + right) // 2 - 16, HEIGHT - 16), "frame", fill="black")
    draw.text((left, 6), title[-90:], fill="black")

    for row, (name, result) in enumerate(curves.items()):
        points = [to_xy(f, v) for f, v in zip(result.details["frame_indices"], result.per_frame)]
        draw.line(points, fill=COLORS[name], width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLORS[name])
        worst = result.details["worst_window"]
        label = (
            f"{name}: mean {result.value:.3f}, slope {result.details['slope_per_frame']:+.2e}/frame, "
            f"worst {worst['frames']}-frame window {worst['first_frame']}-{worst['last_frame']} (shaded) {worst['mean']:.3f}"
        )
        y = 24 + 14 * row
        draw.line([left, y + 6, left + 16, y + 6], fill=COLORS[name], width=2)
        draw.text((left + 22, y), label, fill="black")

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
