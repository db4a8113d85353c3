"""What eval reads: a video's frames (sampled by stride and count), its sidecar prompt, reference images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cdvideo.errors import CdVideoError, ConfigError, InputFileError, VideoIOError
from cdvideo.export import read_video
from cdvideo.metrics.base import Video, VideoTooShortError
from cdvideo.sidecar import sidecar_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def check_sampling(stride: int, max_frames: int | None) -> None:
    """Reject sampling settings that could never give a frame pair, before any video is read."""
    if stride < 1:
        raise ConfigError(f"--stride must be 1 or more, got {stride}")
    if max_frames is not None and max_frames < 2:
        raise ConfigError(f"--max-frames must be 2 or more (temporal metrics need pairs), got {max_frames}")


def sample_indices(num_frames: int, stride: int = 1, max_frames: int | None = None) -> list[int]:
    """Frame numbers kept: every `stride`-th frame from the first, at most `max_frames` of them."""
    check_sampling(stride, max_frames)
    return list(range(0, num_frames, stride))[:max_frames]


def load_video(path: str | os.PathLike, stride: int = 1, max_frames: int | None = None, prompt: str | None = None) -> Video:
    """Read and sample a video file or PNG-frame folder; the prompt defaults to the sidecar's."""
    path = Path(path)
    if path.is_dir():
        _check_frame_sizes(path)
    elif path.is_file() and path.stat().st_size == 0:
        # Decoders only say "error reading"; an interrupted render leaves exactly this.
        raise VideoIOError(f"{path} is empty (0 bytes)")
    try:
        frames, fps = read_video(path)  # (f, h, w, 3) uint8
    except CdVideoError:
        raise
    except Exception as error:  # a decoder's own exception for a corrupt file
        raise VideoIOError(f"could not read {path}: {error}") from error
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise VideoIOError(f"{path} has no frames")
    indices = sample_indices(len(frames), stride, max_frames)
    if len(indices) < 2:
        raise VideoTooShortError(
            f"{path} gives {len(indices)} frame(s) after sampling ({len(frames)} in the file, stride {stride}): "
            "temporal metrics need at least 2"
        )
    return Video(
        frames=np.ascontiguousarray(frames[indices]),
        path=path,
        prompt=prompt if prompt is not None else sidecar_prompt(path),
        fps=fps,
        frame_indices=indices,
    )


def _check_frame_sizes(folder: Path) -> None:
    # A frames folder is the one input whose frames can disagree in size; name the first odd one.
    from PIL import Image

    sizes = {}
    for file in sorted(folder.glob("*.png")):
        with Image.open(file) as image:
            sizes[file.name] = image.size
    if len(set(sizes.values())) > 1:
        (first, first_size), *rest = sizes.items()
        odd, odd_size = next((name, size) for name, size in rest if size != first_size)
        raise VideoIOError(
            f"{folder}: frames differ in size ({first} is {first_size[0]}x{first_size[1]}, "
            f"{odd} is {odd_size[0]}x{odd_size[1]})"
        )


def sidecar_prompt(video_path: Path) -> str | None:
    """The render prompt from the JSON sidecar: `settings.prompt`, else a top-level `prompt`; None if absent."""
    path = sidecar_path(video_path)
    if not path.is_file():
        return None
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputFileError(f"unreadable sidecar {path}: {error}") from error
    settings = sidecar.get("settings") if isinstance(sidecar, dict) else None
    prompt = settings.get("prompt") if isinstance(settings, dict) else None
    if prompt is None and isinstance(sidecar, dict):
        prompt = sidecar.get("prompt")
    # Prompt travel stores {frame: prompt}; CLIP-T scores against the first prompt.
    if isinstance(prompt, dict):
        prompt = next(iter(prompt.values()), None)
    return prompt if isinstance(prompt, str) else None


def load_reference_images(paths: list[str | os.PathLike]) -> list[np.ndarray]:
    """Reference images of the concept (files or folders of images) as uint8 (h, w, 3) arrays."""
    from PIL import Image, UnidentifiedImageError

    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            try:
                found = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            except OSError as error:
                raise InputFileError(f"cannot list reference folder {entry}: {error}") from error
            if not found:
                raise InputFileError(f"reference folder {entry} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif entry.is_file():
            files.append(entry)
        else:
            raise InputFileError(f"reference images not found: {entry}")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(np.asarray(image.convert("RGB")))
        except (OSError, UnidentifiedImageError) as error:
            raise InputFileError(f"unreadable reference image {file}: {error}") from error
    return images
