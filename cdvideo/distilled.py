"""Distilled fast samplers (AnimateLCM, AnimateDiff-Lightning): the weight files their presets name.

Their releases are single files inside hub repositories rather than diffusers model folders:
- AnimateDiff-Lightning: `ByteDance/AnimateDiff-Lightning/animatediff_lightning_4step_diffusers.safetensors`,
  the whole state dict of a default (SD 1.5, v2-shaped) `MotionAdapter` in diffusers names, one file
  per step count it was distilled for;
- AnimateLCM: a diffusers MotionAdapter folder (`wangfuyun/AnimateLCM`) plus a spatial LoRA file in
  the same repository that the motion module was trained with, which the preset lists under `loras`.

A preset names such a file as `owner/repo/file.safetensors`; it is read from a local path or the
user's Hugging Face cache, downloaded only while online (design decision 4).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cdvideo.errors import ModelNotAvailableError, WrongFileKindError

_HUB_FILE = re.compile(r"^([\w.-]+/[\w.-]+)/([\w./-]+\.(?:safetensors|ckpt|pth|bin))$")


def hub_file_parts(spec: str) -> tuple[str, str] | None:
    """`owner/repo/file.safetensors` -> (repo id, file name); None for anything else (local paths included)."""
    match = _HUB_FILE.match(spec)
    return None if match is None or Path(spec).exists() else (match[1], match[2])


def hub_weight_file(spec: str) -> str | None:
    """`owner/repo/file.safetensors` -> a local path (cache, or downloaded while online); None if `spec` is not one."""
    if hub_file_parts(spec) is None:
        return None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo, filename = hub_file_parts(spec)
    cached = try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return cached
    from cdvideo.hub import hub_offline, hub_reachable

    offline = hub_offline()
    if offline or not hub_reachable():
        # "a/b/c.ckpt" is also how a mistyped local path looks: say that no such file exists here.
        raise ModelNotAvailableError(
            f"{spec} is no local file, and {filename} of hub repository {repo} is not in the Hugging Face "
            f"cache ({'HF_HUB_OFFLINE is set' if offline else 'the hub cannot be reached'}): check the path, "
            f"or download it while online with `hf download {repo} {filename}`"
        )
    try:
        return hf_hub_download(repo, filename)
    except Exception as error:  # any network or hub failure is one line
        raise ModelNotAvailableError(f"{spec} could not be downloaded ({str(error).splitlines()[0]})") from error


def is_diffusers_adapter_file(path: str | os.PathLike) -> bool:
    """A single file holding a MotionAdapter's state dict in diffusers names (not an original AnimateDiff file)."""
    from cdvideo.formats.safe_load import SAFETENSORS, container_format, safetensors_keys

    if container_format(path) != SAFETENSORS:
        return False
    keys = safetensors_keys(path)
    return any(".motion_modules." in k for k in keys) and not any(
        "temporal_transformer" in k or "pos_encoder" in k or "lora" in k for k in keys
    )


def diffusers_adapter_from_file(path: str | os.PathLike, dtype=None):
    """A default-shaped MotionAdapter (SD 1.5 channels, 32 frames) holding a diffusers-named state dict; every weight must land."""
    from diffusers import MotionAdapter
    from safetensors.torch import load_file

    state = load_file(str(path))
    adapter = MotionAdapter(use_motion_mid_block=any(k.startswith("mid_block.") for k in state))
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".pos_embed.pe")]
    if missing or unexpected:
        raise WrongFileKindError(
            f"{path}: {len(missing)} missing and {len(unexpected)} unexpected weights for an SD 1.5 MotionAdapter "
            f"({', '.join((missing + unexpected)[:4])})"
        )
    return (adapter.to(dtype) if dtype is not None else adapter).eval()


def preset_lora_specs(preset) -> list:
    """The preset's own LoRAs as LoraSpecs with local paths (hub files from the cache)."""
    from cdvideo.config import LoraSpec

    specs = []
    for entry in preset.loras:
        path = hub_weight_file(entry["path"]) or entry["path"]
        specs.append(LoraSpec(path=str(Path(path).absolute()), strength=float(entry.get("strength", 1.0))))
    return specs
