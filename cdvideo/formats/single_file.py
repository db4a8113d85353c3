"""Single-file SD 1.5 checkpoints (`.safetensors` / `.ckpt` in LDM layout, as community models are shared).

The file holds the weights under LDM names (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`); diffusers' `from_single_file` converts them, but needs the
model's configs and tokenizer, which it downloads unless given a local diffusers directory. Here
that directory is always local: the SD 1.5 base already in the Hugging Face cache (configs only are
needed) or one given by the caller, so loading never touches the network. SD 2.x and SDXL files are
recognised from their text-encoder keys and refused with the dimension that does not fit.
"""

from __future__ import annotations

import os
from pathlib import Path

from cdvideo.errors import ConfigError, ModelNotAvailableError, WrongFileKindError
from cdvideo.formats.sniff import BASE_MODEL, sniff

# Text-encoder width of each family: SD 1.5 cross-attention takes CLIP ViT-L/14's 768.
_FAMILY_WIDTH = {"SD 2.x single file": "1024 (OpenCLIP ViT-H)", "SDXL single file": "2048 (two text encoders)"}
SD15_CONFIG_HINT = (
    "single-file checkpoints are read with Stable Diffusion 1.5's configs and tokenizer: fetch them once "
    "while online with `hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include '*.json' '*.txt'`"
)


def check_single_file(path: str | os.PathLike) -> None:
    """Raise unless `path` is an SD 1.x single-file base model; name what it is otherwise."""
    kind = sniff(path)
    if kind.kind != BASE_MODEL:
        raise WrongFileKindError(f"{path} is a {kind}, not a base model" + _use_hint(kind.kind))
    if kind.detail in _FAMILY_WIDTH:
        raise ConfigError(
            f"{path} is an {kind.detail}: its cross-attention takes {_FAMILY_WIDTH[kind.detail]} text features "
            "where SD 1.5 and the AnimateDiff motion modules use 768; use an SD 1.5 checkpoint"
        )
    if kind.detail == "diffusers UNet weights":
        raise WrongFileKindError(f"{path} holds a diffusers UNet alone; pass the model directory that contains it")


def _use_hint(kind: str) -> str:
    from cdvideo.formats.sniff import USE_WITH

    return f": pass it with {USE_WITH[kind]}" if kind in USE_WITH else ""


def sd15_config_dir(base: str) -> Path:
    """A local diffusers SD 1.5 directory whose configs and tokenizer fit single files: `base` if local or cached."""
    from cdvideo.hub import local_file

    if Path(base).is_dir() and (Path(base) / "model_index.json").is_file():
        return Path(base)
    found = local_file(base, "model_index.json")
    if found is None:
        raise ModelNotAvailableError(SD15_CONFIG_HINT)
    return found.parent


def load_single_file(path: str | os.PathLike, config_dir: str | os.PathLike, *, dtype) -> dict:
    """tokenizer, text_encoder, vae, unet and scheduler config from a single file, offline."""
    from diffusers import StableDiffusionPipeline

    check_single_file(path)
    try:
        pipeline = StableDiffusionPipeline.from_single_file(
            str(path), config=str(config_dir), local_files_only=True, torch_dtype=dtype,
            safety_checker=None, requires_safety_checker=False,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotAvailableError(f"{path}: could not be read as an SD 1.5 checkpoint ({first})") from error
    return {
        "tokenizer": pipeline.tokenizer,
        "text_encoder": pipeline.text_encoder,
        "vae": pipeline.vae,
        "unet": pipeline.unet,
        "scheduler_config": dict(pipeline.scheduler.config),
    }
