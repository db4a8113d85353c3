"""Model presets: a base SD 1.5 model, a motion module and the render defaults that suit them.

A preset comes from one of four sources: a YAML file (`configs/models/NAME.yaml`, by name or path),
a diffusers model directory (with the defaults its `cdvideo.yaml` carries), or a single-file SD 1.5
checkpoint (with the default preset's). No torch import: presets are read before anything heavy.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdvideo.config import DEFAULT_MODEL, LoraSpec, from_dict, read_yaml
from cdvideo.errors import ConfigError, ModelNotAvailableError
from cdvideo.hub import hub_weight_file
from cdvideo.schedule import check_binding, parse_schedule

MOTION_ADAPTER_SUBFOLDER = "motion_adapter"

# Render defaults a model directory may carry (preset keys, `base` left out): `--model DIR` uses them.
MODEL_DIR_PRESET = "cdvideo.yaml"

# The components cdvideo reads from a base model, and the file that proves each is present.
BASE_COMPONENTS = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "tokenizer": "tokenizer/tokenizer_config.json",
    "scheduler": "scheduler/scheduler_config.json",
}

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lcm": "LCMScheduler",
}


@dataclass
class ModelPreset:
    """A base model, a motion module and the render defaults that suit them."""

    base: str
    motion_adapter: str
    scheduler: str = "ddim"
    # Passed to the scheduler on top of the base model's own scheduler config.
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    height: int = 512
    width: int = 512
    num_frames: int = 16
    # The motion module's temporal position-encoding length: more frames cannot be rendered at once.
    max_frames: int = 32
    steps: int = 25
    # Distilled samplers (AnimateLCM, Lightning) work only at the step counts they were made for; empty: any.
    allowed_steps: list[int] = field(default_factory=list)
    # LoRAs that belong to the model, merged before the user's: [{path: FILE or owner/repo/FILE, strength: 0.8}].
    loras: list[dict[str, Any]] = field(default_factory=list)
    guidance_scale: float = 7.5
    # Video-to-video: how far a source is noised (--strength) when a render does not say; diffusers' default.
    video_strength: float = 0.8
    # The concepts' strength over the denoising steps (cdvideo.schedule) for a text-to-video render that gives
    # neither --concept-schedule nor --concept-start; empty: full strength. A concept weakened for the first
    # steps leaves the layout and the motion to the prompt (CustomCrafter's observation); Shapes measures it.
    concept_schedule: str = ""
    # How one concept trained token-bound (`cdvideo train`'s default binding) renders in a text-to-video render
    # that names no --concept-binding (cdvideo.binding); empty: as trained. Shapes measures "region"
    # (docs/personalization.md); several concepts at once render as trained.
    concept_binding: str = ""
    # Video-aware training: the frames of the still clips `cdvideo train` denoises through the motion module when
    # --frames is not given; 0 (or 1): single images through the 2D UNet, the paper's way. Shapes measures 8
    # (docs/personalization.md, session 11); SD 1.5 presets keep single images (a clip costs frames x an image).
    train_frames: int = 0
    # `cdvideo train`'s settings for this model, by TrainConfig field name (steps, learning_rate, instance_prompt,
    # backgrounds, ...): what a run takes where neither a flag nor --config gives a value. Shapes carries its
    # measured training command here (docs/personalization.md), so `cdvideo train --model shapes --images DIR
    # --class-word circle` trains as the tables did; SD 1.5 presets carry none (ClassDiffusion's recipe).
    train_defaults: dict[str, Any] = field(default_factory=dict)
    # phi of guidance rescale (cdvideo.guidance); 0 is off, as diffusers' default.
    guidance_rescale: float = 0.0
    fps: int = 8
    negative_prompt: str = ""
    description: str = ""
    name: str = ""
    # For a single-file `base`: the diffusers SD 1.5 directory or hub id whose configs and tokenizer
    # read it (local or cached; never downloaded). Empty: the default preset's base.
    single_file_config: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def presets_dir() -> Path:
    """$CDVIDEO_PRESETS, else the repository's configs/models (reached through the link cdvideo/presets,
    whose files a wheel carries, so an installed package finds them too)."""
    if os.environ.get("CDVIDEO_PRESETS"):
        return Path(os.environ["CDVIDEO_PRESETS"])
    return Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def load_preset(spec: str) -> ModelPreset:
    """A preset by name, by path to its YAML, or from a diffusers model directory."""
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")):
        return _preset_from_yaml(path, name=path.stem)
    if path.is_dir():
        return _preset_from_model_dir(path)
    if is_weight_file(spec):
        return _preset_from_single_file(path)
    named = presets_dir() / f"{spec}.yaml"
    if named.is_file():
        return _preset_from_yaml(named, name=spec)
    raise ConfigError(
        f"unknown model {spec!r}: use a preset ({', '.join(list_presets())}), "
        "a preset YAML file, or a diffusers model directory"
    )


def _preset_from_yaml(path: Path, name: str) -> ModelPreset:
    data = read_yaml(path)
    preset = from_dict(ModelPreset, data, str(path))
    preset.name = preset.name or name
    return _known_scheduler(preset, path)


def _known_scheduler(preset: ModelPreset, source: Path) -> ModelPreset:
    if preset.scheduler not in SCHEDULERS:
        raise ConfigError(f"{source}: unknown scheduler {preset.scheduler!r}; choose from {', '.join(SCHEDULERS)}")
    if preset.concept_schedule:
        parse_schedule(preset.concept_schedule, f"{source}: concept_schedule")
    if preset.concept_binding:
        check_binding(preset.concept_binding, f"{source}: concept_binding")
    if preset.train_frames < 0:
        raise ConfigError(f"{source}: train_frames must be 0 or more (0 or 1: single images), got {preset.train_frames}")
    return preset


def _preset_from_model_dir(path: Path) -> ModelPreset:
    """A diffusers SD directory, with the render defaults it carries in cdvideo.yaml, else the default preset's.

    Its own motion_adapter/ is used if it has one (else cdvideo.yaml's `motion_adapter`, else the default's).
    """
    missing = [f for f in BASE_COMPONENTS.values() if not (path / f).is_file()]
    if missing:
        raise ModelNotAvailableError(
            f"{path} is not a diffusers Stable Diffusion directory (missing {', '.join(missing)})"
        )
    preset = load_preset(DEFAULT_MODEL)
    if (path / MODEL_DIR_PRESET).is_file():
        preset = _model_dir_defaults(path / MODEL_DIR_PRESET, preset)
    preset.base = str(path)
    if (path / MOTION_ADAPTER_SUBFOLDER / "config.json").is_file():
        preset.motion_adapter = str(path)
    preset.name = str(path)
    preset.description = preset.description or f"local model directory {path}"
    return preset


def _model_dir_defaults(file: Path, default: ModelPreset) -> ModelPreset:
    """A model directory's own cdvideo.yaml: preset keys but `base` (the directory itself).

    Keys it leaves out take the default preset's values, except `scheduler_config`: a directory that
    states its defaults samples with its own scheduler/ config unless its cdvideo.yaml changes it
    (the default preset lays AnimateDiff's linear betas over SD 1.5's, which would spoil a model
    trained otherwise).
    """
    data = read_yaml(file) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping of render defaults")
    if "base" in data:
        raise ConfigError(f"{file}: 'base' is the directory itself; remove the key")
    fields = {**default.to_dict(), "scheduler_config": {}, "description": "", **data}
    return _known_scheduler(from_dict(ModelPreset, fields, str(file)), file)


def write_model_dir_defaults(directory: str | os.PathLike, preset: ModelPreset) -> Path:
    """Write `preset`'s render defaults as DIRECTORY/cdvideo.yaml, which `--model DIRECTORY` reads back."""
    from cdvideo.files import write_yaml_atomic

    directory = Path(directory)
    data = {k: v for k, v in preset.to_dict().items() if k not in ("base", "name")}
    if (directory / MOTION_ADAPTER_SUBFOLDER / "config.json").is_file():
        del data["motion_adapter"]  # the directory's own is used
    return write_yaml_atomic(data, directory / MODEL_DIR_PRESET)


def _preset_from_single_file(path: Path) -> ModelPreset:
    """A single-file SD 1.5 checkpoint with the default preset's motion module and render defaults."""
    from cdvideo.formats.single_file import check_single_file

    check_single_file(path)  # a motion module, LoRA or SDXL file is named here, before any loading
    preset = load_preset(DEFAULT_MODEL)
    preset.base = str(path)
    preset.name = str(path)
    preset.description = f"single-file checkpoint {path}"
    return preset


def is_weight_file(source: str) -> bool:
    return Path(source).is_file() and Path(source).suffix in (".ckpt", ".safetensors", ".pth", ".pt", ".bin")


def single_file_config(preset: ModelPreset) -> str:
    return preset.single_file_config or load_preset(DEFAULT_MODEL).base


def preset_lora_specs(preset: ModelPreset) -> list[LoraSpec]:
    """The preset's own LoRAs (AnimateLCM's) as LoraSpecs with local paths (hub files from the cache)."""
    specs = []
    for entry in preset.loras:
        path = hub_weight_file(entry["path"]) or entry["path"]
        specs.append(LoraSpec(path=str(Path(path).absolute()), strength=float(entry.get("strength", 1.0))))
    return specs
