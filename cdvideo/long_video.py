"""Longer and steadier videos: FreeNoise context windows, prompt travel, FreeInit and motion LoRAs.

All of it is diffusers' own machinery, switched on for one render and off again after it:

- FreeNoise (Qiu et al. 2023; `pipe.enable_free_noise`): the motion module attends within windows of
  `context_length` frames every `context_stride` frames and blends the overlaps (`context_weighting`);
  the initial noise repeats or shuffles across windows (`context_noise`). With windows on, the spatial
  layers also run `context_length` frames at a time (`enable_free_noise_split_inference`), so the
  largest activations are those of one window however long the video is.
- Prompt travel: with FreeNoise on, diffusers takes `{frame: prompt}` and blends the text embeddings
  linearly from each given frame to the next; frames after the last given one keep its prompt.
- FreeInit (Wu et al. 2023; `pipe.enable_free_init`): N denoising passes, each restarting from the
  low frequencies of the last result; N x the time.
- Motion LoRAs (cdvideo.motion_lora): merged into the motion module and taken off exactly.

Windows turn on by themselves when a video has more frames than the motion module takes, or when
the prompt travels; `window_note` says so in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import Iterator

from cdvideo.config import RenderSettings
from cdvideo.errors import ConfigError

WEIGHTINGS = ("flat", "pyramid", "delayed_reverse_sawtooth")
NOISE_TYPES = ("shuffle_context", "repeat_context", "random")
# AnimateDiff modules are trained on 16-frame clips (their position tables are longer: 24 or 32).
TRAINED_FRAMES = 16


@dataclass(frozen=True)
class Windows:
    length: int
    stride: int
    weighting: str
    noise: str


def parse_prompt_travel(value) -> dict[int, str] | None:
    """`"0: a dog sitting | 24: a dog running"` or a mapping (keys may be digit strings, as JSON has them) -> {frame: prompt}."""
    if value is None or value == {} or value == "":
        return None
    if isinstance(value, str):
        pairs = []
        for part in value.split("|"):
            frame, sep, prompt = part.partition(":")
            if not sep or not frame.strip().isdigit():
                raise ConfigError(
                    f"prompt_travel: {part.strip()!r} is not 'FRAME: prompt'; write \"0: a dog sitting | 24: a dog running\""
                )
            pairs.append((frame.strip(), prompt))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise ConfigError(f"prompt_travel must be a mapping of frame to prompt or 'FRAME: prompt | ...', got {value!r}")
    travel: dict[int, str] = {}
    for frame, prompt in pairs:
        if isinstance(frame, str) and frame.strip().isdigit():
            frame = int(frame)
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise ConfigError(f"prompt_travel: frame {frame!r} is not a frame number (0, 1, 2, ...)")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"prompt_travel: frame {frame} has an empty prompt")
        if frame in travel:
            raise ConfigError(f"prompt_travel: frame {frame} is given twice")
        travel[frame] = re.sub(r"\s+", " ", prompt).strip()
    return dict(sorted(travel.items()))


def resolve_long_video(settings: RenderSettings) -> RenderSettings:
    """Parse prompt travel into {frame: prompt}; `prompt` becomes frame 0's prompt if it was not given."""
    travel = parse_prompt_travel(settings.prompt_travel)
    prompt = settings.prompt
    if travel and 0 in travel:
        if prompt and prompt.strip() and prompt.strip() != travel[0]:
            raise ConfigError(
                f"prompt {prompt!r} and prompt_travel frame 0 {travel[0]!r} differ: give frame 0's prompt once"
            )
        prompt = travel[0]
    return dataclasses.replace(settings, prompt_travel=travel, prompt=prompt)


def windows_for(settings: RenderSettings, max_frames: int) -> Windows | None:
    """The FreeNoise windows a render uses, or None for a plain render of all frames at once."""
    length = settings.context_length
    if length is None:
        if settings.num_frames <= max_frames and not settings.prompt_travel:
            return None
        length = min(TRAINED_FRAMES, max_frames)
    # A window longer than the video is the whole video.
    length = min(length, settings.num_frames)
    return Windows(length, min(settings.context_stride, length), settings.context_weighting, settings.context_noise)


def check_long_video(settings: RenderSettings, max_frames: int) -> None:
    """Validate the long-video settings of resolved `settings`; each message names the setting."""
    if settings.context_length is not None and not 1 <= settings.context_length <= max_frames:
        raise ConfigError(
            f"context_length must be between 1 and {max_frames} (the motion module's maximum), got {settings.context_length}"
        )
    if settings.context_stride < 1:
        raise ConfigError(f"context_stride must be at least 1, got {settings.context_stride}")
    if settings.context_weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown context_weighting {settings.context_weighting!r}; choose from {', '.join(WEIGHTINGS)}")
    if settings.context_noise not in NOISE_TYPES:
        raise ConfigError(f"unknown context_noise {settings.context_noise!r}; choose from {', '.join(NOISE_TYPES)}")
    if not isinstance(settings.free_init, int) or settings.free_init < 0:
        raise ConfigError(f"free_init must be a number of passes (0 is off), got {settings.free_init!r}")
    travel = parse_prompt_travel(settings.prompt_travel) or {}
    late = [frame for frame in travel if frame >= settings.num_frames]
    if late:
        raise ConfigError(
            f"prompt_travel: frame {late[0]} is past the last frame ({settings.num_frames - 1}); "
            f"raise num_frames or move the prompt earlier"
        )
    for spec in settings.motion_loras:
        from cdvideo.motion_lora import resolve_motion_lora

        resolve_motion_lora(spec.path)


def window_note(settings: RenderSettings, max_frames: int) -> str | None:
    """One line when windows were turned on without being asked for."""
    windows = windows_for(settings, max_frames)
    if windows is None or settings.context_length is not None:
        return None
    reason = (f"{settings.num_frames} frames are more than the motion module's {max_frames}"
              if settings.num_frames > max_frames else "prompt travel needs FreeNoise")
    return (f"{reason}: rendering in FreeNoise windows of {windows.length} frames every {windows.stride} "
            "(set context_length / context_stride to choose)")


def pipeline_prompt(settings: RenderSettings) -> str | dict[int, str]:
    """What the pipeline is given as its prompt: the plain prompt, or {frame: prompt} when it travels."""
    travel = parse_prompt_travel(settings.prompt_travel)
    if not travel:
        return settings.prompt
    return {0: settings.prompt, **travel}


def pipeline_max_frames(pipeline) -> int:
    return int(pipeline.motion_adapter.config.motion_max_seq_length)


def needs_one_by_one(pipeline, settings: RenderSettings) -> bool:
    """FreeNoise renders one prompt (or one travel mapping) per call: no batched calls with windows on."""
    return windows_for(settings, pipeline_max_frames(pipeline)) is not None


def _motion_blocks(unet) -> list:
    return [b for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks) if getattr(b, "motion_modules", None)]


@contextlib.contextmanager
def free_noise_enabled(pipeline, windows: Windows) -> Iterator[None]:
    """FreeNoise on for a `with` block, then the plain motion blocks back (weights copied back as they are)."""
    pipeline.enable_free_noise(context_length=windows.length, context_stride=windows.stride,
                               weighting_scheme=windows.weighting, noise_type=windows.noise)
    try:
        yield
    finally:
        # Not pipeline.disable_free_noise(): in diffusers 0.42 it fails on modules without a motion mid block.
        for block in _motion_blocks(pipeline.unet):
            pipeline._disable_free_noise_in_block(block)
        pipeline._free_noise_context_length = None


@contextlib.contextmanager
def split_inference(pipeline, frames: int) -> Iterator[None]:
    """Spatial layers and motion modules in chunks (`enable_free_noise_split_inference`), unwrapped again after.

    The wrappers rename parameters (`...proj_in.module.weight`), so nothing that finds weights by
    name may run inside this block: concepts and LoRAs are applied outside it.
    """
    from diffusers.pipelines.free_noise_utils import SplitInferenceModule

    pipeline.enable_free_noise_split_inference(spatial_split_size=256, temporal_split_size=frames)
    try:
        yield
    finally:
        for parent in list(pipeline.unet.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, SplitInferenceModule):
                    setattr(parent, name, child.module)


@contextlib.contextmanager
def free_init_enabled(pipeline, passes: int) -> Iterator[None]:
    pipeline.enable_free_init(num_iters=passes)
    try:
        yield
    finally:
        pipeline.disable_free_init()


@contextlib.contextmanager
def long_video_applied(pipeline, settings: RenderSettings) -> Iterator[Windows | None]:
    """Windows, FreeInit and motion LoRAs of resolved `settings` for one render; the pipeline is as before after it.

    Order matters: FreeNoise rebuilds the motion blocks (copying their weights), so motion LoRAs are
    merged after it and taken off before it is undone; split inference wraps modules last.
    """
    from cdvideo.inject import loras_applied
    from cdvideo.motion_lora import load_motion_loras

    windows = windows_for(settings, pipeline_max_frames(pipeline))
    with contextlib.ExitStack() as stack:
        if windows is not None:
            stack.enter_context(free_noise_enabled(pipeline, windows))
        if settings.free_init > 1:
            stack.enter_context(free_init_enabled(pipeline, settings.free_init))
        if settings.motion_loras:
            stack.enter_context(loras_applied(pipeline, load_motion_loras(pipeline, settings.motion_loras)))
        if windows is not None:
            stack.enter_context(split_inference(pipeline, windows.length))
        yield windows
