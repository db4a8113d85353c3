"""A source video for video-to-video renders: read, checked, fitted to the render size, fingerprinted.

`cdvideo render --video walk.mp4 --strength 0.6` re-renders a clip the user has: the source's frames
are encoded, noised to `video_strength` of the way and denoised with the prompt (and concepts), so
the layout and motion of the source stay while the subject is the prompt's (SDEdit, Meng et al. 2022;
diffusers' `AnimateDiffVideoToVideoPipeline`).

Rules, stated once:
- The source is anything `cdvideo.export.read_video` reads: mp4, webm, gif, webp, a folder of PNGs.
- Frames are fitted to the render size (height x width, the preset's unless given): scaled, keeping
  their aspect ratio, until they cover it, then cut to it about the centre (Lanczos).
- Frame count: all of the source's frames unless `num_frames` is given (then its first `num_frames`);
  more frames than the source has is an error. fps: the source's unless given (a PNG folder has none:
  the preset's).

This module imports neither torch nor diffusers: everything here is checked before a model loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
from pathlib import Path

import numpy as np

from cdvideo.config import RenderSettings
from cdvideo.errors import ConfigError, InputFileError, VideoIOError

def read_source(path: str, what: str = "source video") -> tuple[np.ndarray, float]:
    """The clip's uint8 frames (f, h, w, 3) and fps, or one line naming `what`, the file and what is wrong."""
    from cdvideo.export import read_video

    if not Path(path).exists():
        raise InputFileError(f"{what} not found: {path}")
    try:
        with _native_stderr_silenced():  # decord / ffmpeg print their own lines for a broken file
            frames, fps = read_video(path)
    except VideoIOError as error:
        why = str(error).removeprefix(f"could not read {path}: ")
        raise VideoIOError(f"{what} {path} cannot be read: {why}") from None
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise VideoIOError(f"{what} {path} has no frames")
    return frames, fps


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null for the block: native decoders write there directly, past Python, and an
    unreadable clip must be one line (the error cdvideo raises)."""
    import sys

    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frames (f, h, w, 3) scaled to cover height x width (aspect ratio kept), then cut about the centre."""
    from PIL import Image

    _, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    size = (max(width, math.ceil(w * scale - 1e-9)), max(height, math.ceil(h * scale - 1e-9)))  # PIL: (w, h)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    fitted = [np.asarray(Image.fromarray(frame).resize(size, Image.LANCZOS))[top:top + height, left:left + width]
              for frame in frames]
    return np.stack(fitted)  # (f, height, width, 3)


def source_sha256(path: str) -> str:
    """SHA-256 of a source file; of a PNG folder, over its frames' names and contents in order."""
    from cdvideo.concept import file_sha256

    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for frame in sorted(path.glob("*.png")):
        digest.update(frame.name.encode() + b"\0" + file_sha256(frame).encode())
    return digest.hexdigest()


def resolve_source(settings: RenderSettings, preset) -> RenderSettings:
    """The source path made absolute, frame count and fps taken from the source where not given, and the
    strength from the model preset (`ModelPreset.video_strength`) where not given."""
    if not settings.video:
        return settings
    path = str(Path(settings.video).expanduser().absolute())
    frames, fps = read_source(path)
    return dataclasses.replace(
        settings, video=path,
        video_strength=preset.video_strength if settings.video_strength is None else settings.video_strength,
        num_frames=frames.shape[0] if settings.num_frames is None else settings.num_frames,
        fps=settings.fps if settings.fps is not None else (round(fps) if fps > 0 else preset.fps))


def check_source(settings: RenderSettings) -> None:
    """A resolved video-to-video request is one the pipeline can render (one line naming the setting)."""
    if not settings.video:
        if settings.video_strength is not None:
            raise ConfigError("video_strength is the strength of a source video: give --video too")
        return
    strength = settings.video_strength
    if not math.isfinite(strength) or not 0 < strength <= 1:
        raise ConfigError(f"video_strength must be above 0 and at most 1 (1 repaints the source entirely), got {strength}")
    # At least one denoising step must remain: diffusers runs int(steps * strength) of them.
    if int(settings.steps * strength) < 1:
        raise ConfigError(f"video_strength {strength} with {settings.steps} steps leaves no denoising step "
                          f"(int(steps * strength) = 0): raise --strength or --steps")
    frames, _ = read_source(settings.video)
    if settings.num_frames > frames.shape[0]:
        raise ConfigError(f"num_frames {settings.num_frames} is more than the {frames.shape[0]} frames of the source "
                          f"video {settings.video}: give at most {frames.shape[0]}, or leave it out")
    if settings.free_init > 1:  # FreeInit restarts from noise of its own: the source would be lost
        raise ConfigError("free_init is not available with a source video (--video)")


def source_frames(settings: RenderSettings) -> np.ndarray:
    """The uint8 frames (num_frames, height, width, 3) a resolved video-to-video render starts from."""
    frames, _ = read_source(settings.video)
    return fit_frames(frames[:settings.num_frames], settings.height, settings.width)
