"""Settings dataclasses and their YAML/JSON form.

Every YAML key is a dataclass field name, every CLI flag the kebab-case form of it, and unknown
keys are errors (a misspelt setting silently ignored is a wasted render). This module imports
neither torch nor diffusers, so validation runs before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cdvideo.errors import ConfigError, InputFileError

T = TypeVar("T")

DEFAULT_MODEL = "sd15-animatediff-v2"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")


def from_dict(cls: type[T], data: dict[str, Any], source: str) -> T:
    """Build dataclass `cls` from a mapping, refusing keys that are not its fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(names))}"
        )
    return cls(**data)


def from_dicts(cls: type[T], items: list | None, source: str) -> list[T]:
    """A list of `cls` from mappings (or ready instances), each checked by `from_dict`."""
    return [item if isinstance(item, cls) else from_dict(cls, item, source) for item in items or []]


def read_yaml(path: str | os.PathLike) -> Any:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from error


@dataclass
class ConceptSpec:
    """One concept file applied to a render, with the strength of its key/value changes."""

    path: str
    # Scales the key/value deltas only; the learned token embedding is used as trained.
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "ConceptSpec":
        """Parse `path` or `path:strength` (the CLI's `--concept dog.safetensors:0.8`)."""
        path, sep, strength = text.rpartition(":")
        if sep and path and not strength.startswith(("/", "\\")):
            try:
                return cls(path=path, strength=float(strength))
            except ValueError:
                pass  # a colon that is part of the path (a Windows drive, say)
        return cls(path=text)


@dataclass
class LoraSpec(ConceptSpec):
    """One SD 1.5 LoRA file applied to a render; the strength scales its change (`--lora style.safetensors:0.6`)."""


@dataclass
class MotionLoraSpec(ConceptSpec):
    """A motion LoRA (file, or registry name like v2-zoom-in) merged into the motion module (`--motion-lora v2-pan-left:0.8`)."""


@dataclass
class RenderSettings:
    """Everything one render needs. `None` means "the model preset's default"."""

    prompt: str = ""
    negative_prompt: str | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    # Guidance rescale phi in [0, 1] (Lin et al. 2024; cdvideo.guidance): for zero-terminal-SNR models at high guidance.
    guidance_rescale: float | None = None
    fps: int | None = None
    # None draws a random seed, which is recorded in the sidecar so the render can be repeated.
    seed: int | None = None
    scheduler: str | None = None
    concepts: list[ConceptSpec] = field(default_factory=list)
    # Share of the denoising steps run before the concepts' key/value changes go on (cdvideo.inject.deltas_delayed).
    concept_start: float = 0.0
    # Where the concepts' key/value changes act (cdvideo.binding.BINDINGS): "merged" into the weights, for
    # every word and the unconditional branch too (the ClassDiffusion paper's way); "token" only at the
    # positions of each concept's own token(s). None: as each concept was trained (its file says).
    concept_binding: str | None = None
    # Strength of the key/value changes over the denoising steps, "share:strength, ..." (e.g. "0:0, 0.2:0.4,
    # 0.3:1": held from each share of the steps to the next; cdvideo.binding.parse_schedule). None: full
    # strength throughout (after concept_start, which is the schedule "0:0, S:1").
    concept_schedule: str | None = None
    # LoRAs merged into the spatial UNet and text encoder for the render, taken off after it.
    loras: list[LoraSpec] = field(default_factory=list)
    model: str = DEFAULT_MODEL
    # Overrides the preset's motion module: a registry name, hub id, MotionAdapter directory or original file.
    motion_adapter: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    # Output container; None takes it from the output path's extension.
    format: str | None = None
    quality: int = 8
    # Long videos (cdvideo.long_video): FreeNoise windows of context_length frames every context_stride
    # frames. None turns windows on only when needed (more frames than the motion module takes, or travel).
    context_length: int | None = None
    context_stride: int = 4
    context_weighting: str = "pyramid"  # flat, pyramid, delayed_reverse_sawtooth
    context_noise: str = "shuffle_context"  # shuffle_context, repeat_context, random
    # {frame: prompt} (the CLI's "0: a dog sitting | 24: a dog running" is parsed into it when resolved);
    # text embeddings blend from each given frame to the next.
    prompt_travel: dict[int, str] | None = None
    # FreeInit passes: N x the time for steadier motion; 0 or 1 is off.
    free_init: int = 0
    motion_loras: list[MotionLoraSpec] = field(default_factory=list)
    # VAE slicing (tiling above its tile size) and, on CUDA, model CPU offload for this render; same frames.
    low_vram: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> "RenderSettings":
        data = dict(data)
        data["concepts"] = from_dicts(ConceptSpec, data.get("concepts"), f"{source}: concepts")
        data["loras"] = from_dicts(LoraSpec, data.get("loras"), f"{source}: loras")
        data["motion_loras"] = from_dicts(MotionLoraSpec, data.get("motion_loras"), f"{source}: motion_loras")
        return from_dict(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
