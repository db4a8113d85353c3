"""ControlNet inputs: which kinds there are, their SD 1.5 models, control frames read or computed, checks.

`cdvideo render --control canny:walk.mp4 --prompt "a <new1> dog walking"` steers every frame with the
edges of `walk.mp4`'s frames (diffusers' `AnimateDiffControlNetPipeline`; with `--video` too, its
`AnimateDiffVideoToVideoControlNetPipeline`). `canny` is computed here (OpenCV's Canny, thresholds
100 / 200 as in the ControlNet paper's examples) on the frames fitted to the render size; every other
kind takes control frames already made by a detector the user runs (a PNG folder or a video), fitted
to the render size by the same rule as a source video (cdvideo.source_video: cover, cut about the centre).
A control clip gives its first `num_frames` frames; fewer is an error. Without `--video` and
`--num-frames`, the first control's frame count is the render's.

This module imports neither torch nor diffusers: everything here is checked before a model loads.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from cdvideo.config import ControlSpec, RenderSettings
from cdvideo.errors import ConfigError, InputFileError
from cdvideo.hub import check_cached
from cdvideo.source_video import fit_frames, read_source

# kind -> the SD 1.5 ControlNet (v1.1, lllyasviel) used when a control names no model.
KINDS = {
    "canny": "lllyasviel/control_v11p_sd15_canny",  # edges computed by cdvideo from an ordinary clip
    "canny-map": "lllyasviel/control_v11p_sd15_canny",  # edge maps already made
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "openpose": "lllyasviel/control_v11p_sd15_openpose",
    "lineart": "lllyasviel/control_v11p_sd15_lineart",
    "softedge": "lllyasviel/control_v11p_sd15_softedge",
    "scribble": "lllyasviel/control_v11p_sd15_scribble",
    "normal": "lllyasviel/control_v11p_sd15_normalbae",
    "seg": "lllyasviel/control_v11p_sd15_seg",
    "mlsd": "lllyasviel/control_v11p_sd15_mlsd",
    "tile": "lllyasviel/control_v11f1e_sd15_tile",
}
CANNY_THRESHOLDS = (100, 200)


def canny(frames: np.ndarray, low: int = CANNY_THRESHOLDS[0], high: int = CANNY_THRESHOLDS[1]) -> np.ndarray:
    """Canny edge maps (Canny 1986; OpenCV) of uint8 frames (f, h, w, 3), as white-on-black RGB frames."""
    import cv2

    edges = [cv2.Canny(np.ascontiguousarray(frame), low, high) for frame in frames]  # each (h, w)
    return np.repeat(np.stack(edges)[..., None], 3, axis=-1)  # (f, h, w, 3)


def resolve_controls(settings: RenderSettings) -> RenderSettings:
    """Control paths made absolute, each control's model filled from its kind, and the frame count from the
    first control where neither a source video nor `num_frames` gives it."""
    if not settings.controls:
        return settings
    controls = [dataclasses.replace(c, path=str(Path(c.path).expanduser().absolute()),
                                    model=_model_source(c.model) or KINDS.get(c.kind)) for c in settings.controls]
    num_frames = settings.num_frames
    if num_frames is None:
        num_frames = read_source(controls[0].path, f"{controls[0].kind} control")[0].shape[0]
    return dataclasses.replace(settings, controls=controls, num_frames=num_frames)


def _model_source(model: str | None) -> str | None:
    """A local ControlNet made absolute (the sidecar then works from anywhere); a hub id as it is."""
    if model and Path(model).expanduser().exists():
        return str(Path(model).expanduser().absolute())
    return model


def check_controls(settings: RenderSettings) -> None:
    """Each control of resolved `settings` names a known kind, a readable clip of enough frames, a sane
    scale and start/end, and a model that is there (one line naming the control)."""
    for spec in settings.controls:
        name = f"control {spec.kind}:{spec.path}"
        if spec.kind not in KINDS and not spec.model:
            raise ConfigError(f"unknown control kind {spec.kind!r}: choose from {', '.join(KINDS)}, or give its "
                              "ControlNet (model) for a kind of your own")
        if not math.isfinite(spec.scale) or spec.scale < 0:
            raise ConfigError(f"{name}: scale must be a finite number >= 0, got {spec.scale}")
        if not (math.isfinite(spec.start) and math.isfinite(spec.end) and 0 <= spec.start < spec.end <= 1):
            raise ConfigError(f"{name}: start and end are shares of the steps, 0 <= start < end <= 1; "
                              f"got {spec.start} and {spec.end}")
        model = str(spec.model)
        if model.startswith((".", "/", "~")) and not Path(model).expanduser().exists():
            raise InputFileError(f"{name}: ControlNet not found: {model}")
        frames, _ = read_source(spec.path, f"{spec.kind} control")
        if frames.shape[0] < settings.num_frames:
            raise ConfigError(f"{name} has {frames.shape[0]} frames, fewer than the {settings.num_frames} rendered: "
                              "give a control clip of at least as many frames (or fewer --num-frames)")
    if settings.controls and settings.step_cache > 1:
        raise ConfigError("step_cache is not available with ControlNets (--control): their residuals enter "
                          "the deep blocks a cached step skips")
    for spec in settings.controls:  # the user's own inputs first, then whether the models are there
        check_cached(str(spec.model), f"control {spec.kind}:{spec.path}: ControlNet")


def control_frames(spec: ControlSpec, settings: RenderSettings) -> np.ndarray:
    """The uint8 control frames (num_frames, height, width, 3) a control of resolved `settings` gives."""
    frames, _ = read_source(spec.path, f"{spec.kind} control")
    frames = fit_frames(frames[:settings.num_frames], settings.height, settings.width)
    return canny(frames) if spec.kind == "canny" else frames
