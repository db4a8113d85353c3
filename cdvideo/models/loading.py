"""Loading and building models: the one place that calls `from_pretrained` or reads single files.

Pipelines for rendering, the 2D components for training, motion adapters (diffusers folders,
diffusers-named single files, original AnimateDiff checkpoints), the motion UNet, schedulers,
and the device and dtype they go to. Tests replace nothing here: they load the tiny and Shapes
models through this same code.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from cdvideo.errors import CdVideoError, ConfigError, ModelNotAvailableError
from cdvideo.hub import hub_offline
from cdvideo.models.presets import SCHEDULERS, ModelPreset, is_weight_file, single_file_config
from cdvideo.models.sources import (ModelFiles, adapter_location, check_available, locate, motion_registry,
                                    not_available, resolve_source)

def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r} asked for, but torch sees no CUDA device: use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str):
    """`auto` is float16 on CUDA and float32 elsewhere (half precision is slow or unsupported on CPUs)."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def make_scheduler(name: str, base_config: dict[str, Any], overrides: dict[str, Any]):
    """Scheduler `name` from the base model's scheduler config with the preset's settings on top."""
    import diffusers

    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
    cls = getattr(diffusers, SCHEDULERS[name])
    config = {**base_config, **overrides}
    # A model trained with a zero-terminal-SNR schedule (Lin et al. 2024; the Shapes model) must be
    # sampled with it; a scheduler without the option would quietly use the unrescaled betas.
    if config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in inspect.signature(cls).parameters:
        raise ConfigError(f"scheduler {name!r} cannot sample this model: it was trained with a zero-terminal-SNR "
                          "schedule (rescale_betas_zero_snr) that this scheduler lacks; choose one of "
                          + ", ".join(n for n, c in SCHEDULERS.items()
                                      if "rescale_betas_zero_snr" in inspect.signature(getattr(diffusers, c)).parameters))
    return cls.from_config(config)


def _loading_error(preset: ModelPreset, error: Exception) -> ModelNotAvailableError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return not_available(preset.base, "model", f"could not be loaded ({first_line})")


def load_tokenizer(preset: ModelPreset):
    """The base model's tokenizer alone (vocabulary files, no weights), or None where it is not local:
    new tokens are checked against it before any model is loaded; a missing model is reported by the load."""
    from transformers import CLIPTokenizer

    try:
        base = resolve_source(preset.base)
        if is_weight_file(base):
            base = resolve_source(single_file_config(preset))
        return CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError, CdVideoError):
        return None


def _load_base_components(files: ModelFiles, dtype) -> dict:
    """The base model's tokenizer, text encoder, VAE, 2D UNet and scheduler config.

    From a diffusers directory or hub id, or from a single-file checkpoint with local SD 1.5 configs.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base = files.base
    kwargs = dict(local_files_only=hub_offline())
    try:
        if is_weight_file(base):
            from cdvideo.formats.single_file import load_single_file, sd15_config_dir

            return load_single_file(base, sd15_config_dir(files.configs), dtype=dtype)
        return dict(
            tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **kwargs),
            text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=dtype, **kwargs),
            vae=AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=dtype, **kwargs),
            unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=dtype, **kwargs),
            scheduler_config=DDIMScheduler.load_config(base, subfolder="scheduler", **kwargs),
        )
    except (OSError, ValueError) as error:
        raise _loading_error(files.preset, error) from error


def load_motion_adapter(source: str, *, dtype, local_files_only: bool = False):
    """A MotionAdapter from a diffusers directory / hub id, or an original AnimateDiff checkpoint file."""
    from diffusers import MotionAdapter

    from cdvideo.formats.animatediff import diffusers_adapter_from_file, is_diffusers_adapter_file

    if is_weight_file(source) and is_diffusers_adapter_file(source):
        return diffusers_adapter_from_file(source, dtype=dtype)
    if is_weight_file(source):
        from cdvideo.formats.animatediff import motion_adapter_from_checkpoint

        # Released files are recognised by name; the registry knows what their weights cannot say.
        entry = next((e for e in motion_registry().values() if e.original_file == Path(source).name), None)
        overrides = {"motion_num_attention_heads": entry.heads} if entry else None
        return motion_adapter_from_checkpoint(source, overrides, dtype=dtype)
    location, subfolder = adapter_location(source)
    return MotionAdapter.from_pretrained(location, subfolder=subfolder, torch_dtype=dtype,
                                         local_files_only=local_files_only)


def motion_unet(unet, adapter):
    """The UNetMotionModel of a 2D UNet plus a motion adapter, built around their own tensors.

    diffusers' `UNetMotionModel.from_unet2d` (what `AnimateDiffPipeline(unet=UNet2DConditionModel)`
    calls) first initialises a whole new model at random and then copies both state dicts into it,
    so while the pipeline is built the UNet's weights exist twice and the motion modules'
    twice more: at SD 1.5 size that is most of the load's peak memory and seconds of random init.
    Here the model is made on the meta device and takes the 2D UNet's and the adapter's tensors
    as they are (no copy, no init): same weights, same frames, far less peak memory. Anything that
    does not map one to one (an inflated conv_in, an unexpected key) falls back to diffusers' way.
    """
    import torch
    from diffusers import UNetMotionModel

    try:
        with torch.device("meta"):
            model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
        state = dict(unet.state_dict())
        state.update(adapter.state_dict())  # down_blocks.N.motion_modules..., mid_block.motion_modules...
        model.load_state_dict(state, strict=True, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise ValueError("a tensor was left on the meta device")
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return UNetMotionModel.from_unet2d(unet, adapter)
    return model.to(device=unet.device)


def load_pipeline(preset: ModelPreset, *, device: str, dtype, motion_adapter: str | None = None,
                  files: ModelFiles | None = None):
    """Load base model and motion adapter into an AnimateDiffPipeline on `device` in `dtype`.

    `files`: the request's `locate(preset, motion_adapter)`, when it was already made."""
    files = files or locate(preset, motion_adapter)
    files.check_available()
    from diffusers import AnimateDiffPipeline

    parts = _load_base_components(files, dtype)
    try:
        adapter_model = load_motion_adapter(files.adapter, dtype=dtype, local_files_only=hub_offline())
    except (OSError, ValueError) as error:
        raise _loading_error(preset, error) from error
    pipeline = AnimateDiffPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=motion_unet(parts.pop("unet"), adapter_model),
        motion_adapter=adapter_model,
        scheduler=make_scheduler(preset.scheduler, parts["scheduler_config"], preset.scheduler_config),
    )
    return pipeline.to(device)


def load_training_components(preset: ModelPreset, *, device: str, dtype) -> dict:
    """The 2D parts of the preset's base model that training needs, on `device` in `dtype`.

    Returns unet (UNet2DConditionModel), vae, text_encoder, tokenizer and noise_scheduler (DDPM with
    the base model's training schedule); the motion adapter is not loaded.
    """
    check_available(preset, base_only=True)
    from diffusers import DDPMScheduler

    parts = _load_base_components(locate(preset), dtype)
    return dict(
        unet=parts["unet"].to(device),
        vae=parts["vae"].to(device),
        text_encoder=parts["text_encoder"].to(device),
        tokenizer=parts["tokenizer"],
        noise_scheduler=DDPMScheduler.from_config(parts["scheduler_config"]),
    )


def task_pipeline(pipeline, *, video: bool = False, controlnets: list | None = None, image_encoder=None):
    """A diffusers pipeline for another task built around `pipeline`'s own modules (nothing loaded or
    copied): `AnimateDiffVideoToVideoPipeline` for a source video, `AnimateDiffControlNetPipeline` with
    ControlNets, `AnimateDiffVideoToVideoControlNetPipeline` with both; with an IP-Adapter's
    `image_encoder`, a new pipeline of the right class that carries it (the loaded one never does); else
    `pipeline` itself. Made per render, so it always has the scheduler the render switched to."""
    if not video and not controlnets and image_encoder is None:
        return pipeline
    import diffusers

    components = {name: module for name, module in pipeline.components.items()
                  if name in ("vae", "text_encoder", "tokenizer", "unet", "motion_adapter", "scheduler")}
    # diffusers' load_ip_adapter makes the feature extractor to the encoder's image size.
    components.update(image_encoder=image_encoder, feature_extractor=None)
    if not controlnets:
        return (diffusers.AnimateDiffVideoToVideoPipeline if video else diffusers.AnimateDiffPipeline)(**components)
    cls = diffusers.AnimateDiffVideoToVideoControlNetPipeline if video else diffusers.AnimateDiffControlNetPipeline
    # One ControlNet as itself, several as a list (diffusers wraps them in a MultiControlNetModel).
    return cls(**components, controlnet=controlnets[0] if len(controlnets) == 1 else list(controlnets))


def load_controlnet(source: str, *, dtype, device: str):
    """A ControlNetModel from a hub id, a diffusers directory or a single file (original or diffusers names)."""
    from diffusers import ControlNetModel

    kwargs = dict(torch_dtype=dtype, local_files_only=hub_offline())
    try:
        if is_weight_file(source):
            model = ControlNetModel.from_single_file(source, **kwargs)
        else:
            model = ControlNetModel.from_pretrained(resolve_source(source), **kwargs)
    except (OSError, ValueError, CdVideoError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = ("check the path" if Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
                else f"download it while online with `hf download {source}`, or give a local directory")
        raise ModelNotAvailableError(f"ControlNet {source!r} could not be loaded ({first_line}): {hint}") from error
    return model.to(device)


def check_controlnet(controlnet, unet, name: str) -> None:
    """A ControlNet made for another base (SD 2, SDXL) cannot steer this UNet: one line before any frame."""
    ours = (unet.config.cross_attention_dim, tuple(unet.config.block_out_channels))
    theirs = (controlnet.config.cross_attention_dim, tuple(controlnet.config.block_out_channels))
    if ours != theirs:
        raise ConfigError(f"ControlNet {name} was made for another base model (cross-attention {theirs[0]}, blocks "
                          f"{list(theirs[1])}; this model's: {ours[0]}, {list(ours[1])}): use an SD 1.5 ControlNet")


def load_ip_adapter_weights(source: str) -> dict:
    """An IP-Adapter weights file (local, or `owner/repo/path/file.safetensors` on the hub) in the form diffusers'
    `load_ip_adapter` takes: {"image_proj": {...}, "ip_adapter": {...}}."""
    from cdvideo.formats.safe_load import read_weights
    from cdvideo.hub import hub_weight_file

    path = hub_weight_file(source) or source
    if not Path(path).is_file():
        raise ModelNotAvailableError(f"IP-Adapter {source!r} not found: give its .safetensors or .bin file")
    weights, _ = read_weights(path)
    if {"image_proj", "ip_adapter"} <= set(weights):  # the original .bin layout: already nested
        return {"image_proj": dict(weights["image_proj"]), "ip_adapter": dict(weights["ip_adapter"])}
    state = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in weights.items():
        part, _, name = key.partition(".")
        if part not in state:
            raise ConfigError(f"{source} is not an IP-Adapter: its tensor {key!r} is neither image_proj.* nor ip_adapter.*")
        state[part][name] = tensor
    if not state["image_proj"] or not state["ip_adapter"]:
        raise ConfigError(f"{source} is not an IP-Adapter: it lacks image_proj.* or ip_adapter.* tensors")
    return state


def load_image_encoder(source: str, *, dtype, device: str):
    """The CLIP image encoder of an IP-Adapter: a local directory, or `owner/repo/subfolder` on the hub."""
    from transformers import CLIPVisionModelWithProjection

    if Path(source).expanduser().is_dir():
        location, subfolder = str(Path(source).expanduser()), ""
    else:
        parts = source.split("/")
        location, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(location, subfolder=subfolder, dtype=dtype,
                                                                local_files_only=hub_offline())
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotAvailableError(f"IP-Adapter image encoder {source!r} could not be loaded ({first_line}): "
                                     "give its directory, or download it while online") from error
    return encoder.to(device)
