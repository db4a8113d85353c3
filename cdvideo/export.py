"""Frames to files (mp4, webm, gif, webp, a folder of PNGs) and files back to frames.

Frames are always uint8 arrays of shape (f, h, w, 3). Every write goes to a temporary name in
the destination folder and is renamed when complete, so an interrupted or failed write (a full disk,
an encoder error) never leaves a truncated file under the final name, nor touches the file there. This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cdvideo.errors import VideoIOError
from cdvideo.files import atomic_path

FORMATS = ("mp4", "webm", "gif", "webp", "frames")
DEFAULT_QUALITY = 8  # 0..10, imageio's scale: 10 is best

# ffmpeg settings per container. H.264 in yuv420p is what browsers play; `+faststart` moves the
# index to the front so a browser can start before the whole file has arrived.
_FFMPEG = {
    "mp4": dict(codec="libx264", pixelformat="yuv420p", ffmpeg_params=["-movflags", "+faststart"]),
    "webm": dict(codec="libvpx-vp9", pixelformat="yuv420p", ffmpeg_params=["-row-mt", "1"]),
}


def format_from_path(path: str | os.PathLike) -> str:
    """The export format a path asks for: its extension, or `frames` for a path without one."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix == "":
        return "frames"
    if suffix in FORMATS and suffix != "frames":
        return suffix
    raise VideoIOError(
        f"cannot tell the video format of {str(path)!r}: use one of .mp4, .webm, .gif, .webp, "
        "or a path without extension for a folder of PNG frames"
    )


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8, rounding as diffusers' `numpy_to_pil` does."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoIOError(
            f"frames must be uint8 of shape (frames, height, width, 3), got {frames.dtype} {frames.shape}"
        )
    if frames.shape[0] == 0:
        raise VideoIOError("there are no frames to write")


def write_video(
    frames: np.ndarray,
    path: str | os.PathLike,
    fps: float,
    format: str | None = None,
    quality: int = DEFAULT_QUALITY,
) -> Path:
    """Write uint8 frames (f, h, w, 3) to `path` atomically and return the path written.

    A failed write (a full disk, an encoder error) raises VideoIOError and leaves what was at `path` as it was.
    """
    path = Path(path)
    format = format or format_from_path(path)
    _check_frames(frames)
    with atomic_path(path, directory=format == "frames") as tmp:
        encode_video(frames, tmp, fps, format, quality)
    return path


def encode_video(frames: np.ndarray, path: Path, fps: float, format: str, quality: int = DEFAULT_QUALITY) -> None:
    """Write uint8 frames (f, h, w, 3) to `path` (an empty folder for `frames`) in place, not atomically:
    `write_video` and render_to_file call it on a temporary path. Any failure is a VideoIOError."""
    _check_frames(frames)
    if not 0 <= quality <= 10:
        raise VideoIOError(f"quality must be between 0 and 10, got {quality}")
    try:
        if format == "frames":
            _write_frames_folder(frames, path)
        elif format in _FFMPEG:
            _write_ffmpeg(frames, path, fps, format, quality)
        else:
            _write_pillow(frames, path, fps, format, quality)
    except (VideoIOError, KeyboardInterrupt):
        raise
    except Exception as error:
        raise VideoIOError(f"could not write {path.name}: {error}".splitlines()[0]) from error
    if format != "frames" and path.stat().st_size == 0:
        raise VideoIOError(f"could not write {path.name}: the encoder wrote nothing")


def _write_ffmpeg(frames: np.ndarray, path: Path, fps: float, format: str, quality: int) -> None:
    """ffmpeg reading raw RGB from a pipe, with imageio-ffmpeg's command for these settings (so the same
    bytes as imageio's writer), but its exit status and stderr checked: imageio ignores both, and a full
    disk then passes for a finished video."""
    import subprocess
    import tempfile
    from fractions import Fraction

    import imageio_ffmpeg

    settings = _FFMPEG[format]
    _, height, width, _ = frames.shape
    crf_or_q = (["-crf", str(int((1 - quality / 10) * 51))] if settings["codec"] == "libx264"
                else ["-qscale:v", str(int((1 - quality / 10) * 30) + 1)])
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
        "-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
        "-vcodec", settings["codec"], "-pix_fmt", settings["pixelformat"], *crf_or_q,
        "-v", "error", *settings["ffmpeg_params"], str(path),
    ]
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty ffmpeg cannot block on it
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            for frame in frames:
                process.stdin.write(np.ascontiguousarray(frame).tobytes())
            process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped reading: its exit status and stderr say why
        except BaseException:
            process.kill()
            process.wait()
            raise
        code = process.wait()
        if code != 0:
            stderr.seek(0)
            lines = [line.strip() for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
            import signal

            stopped = f"stopped by {signal.Signals(-code).name}" if -code in signal.valid_signals() else ""
            why = lines[-1][:200] if lines else stopped or f"exit status {code}"
            raise VideoIOError(f"could not write {path.name}: ffmpeg failed: {why}")


def _write_pillow(frames: np.ndarray, path: Path, fps: float, format: str, quality: int) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    duration_ms = int(round(1000 / fps))
    if format == "gif":
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    else:
        images[0].save(
            path,
            format="WEBP",
            save_all=True,
            append_images=images[1:],
            duration=duration_ms,
            loop=0,
            quality=quality * 10,
            lossless=quality == 10,
        )


def _write_frames_folder(frames: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.mkdir(exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(path / f"{index:05d}.png")


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a video file or PNG-frame folder back as uint8 frames (f, h, w, 3) and its fps.

    mp4/webm are read with decord where installed, else imageio; gif/webp with Pillow. A folder
    of frames has no fps of its own and reports 0.
    """
    path = Path(path)
    if not path.exists():
        raise VideoIOError(f"video not found: {path}")
    format = "frames" if path.is_dir() else format_from_path(path)
    try:
        if format == "frames":
            return _read_frames_folder(path), 0.0
        if format in _FFMPEG:
            try:
                return _read_decord(path)
            except ImportError:
                return _read_imageio(path)
        return _read_pillow(path)
    except VideoIOError:
        raise
    except Exception as error:
        raise VideoIOError(f"could not read {path}: {error}") from error


def _read_decord(path: Path) -> tuple[np.ndarray, float]:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    if len(reader) == 0:
        raise VideoIOError(f"{path} has no frames")
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    return frames, float(reader.get_avg_fps())


def _read_imageio(path: Path) -> tuple[np.ndarray, float]:
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        fps = float(reader.get_meta_data().get("fps", 0.0))
        frames = np.stack([frame for frame in reader])
    return frames, fps


def _read_pillow(path: Path) -> tuple[np.ndarray, float]:
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
        duration = image.info.get("duration") or 0
    return np.stack(frames), (1000.0 / duration if duration else 0.0)


def _read_frames_folder(path: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(path.glob("*.png"))
    if not files:
        raise VideoIOError(f"{path} holds no PNG frames")
    frames = [np.asarray(Image.open(file).convert("RGB")) for file in files]
    sizes = sorted({frame.shape for frame in frames})
    if len(sizes) > 1:
        raise VideoIOError(f"{path} holds PNG frames of different sizes {sizes}: a video needs one size")
    return np.stack(frames)
