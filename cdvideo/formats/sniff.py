"""Recognise what kind of weight file something is, so a file of the wrong kind gets a clear error.

Users hand over files by name, and names do not say what is inside: a LoRA passed as a concept, a
motion module passed as a base model. Each kind is recognised from its tensor names (and shapes,
for textual inversion), following the layouts the writing tools use:

- cdvideo concept: safetensors metadata `format = cdvideo.concept`
- Custom Diffusion / ClassDiffusion (diffusers `save_attn_procs`): `...attn2.processor.to_k_custom_diffusion.weight`
- Custom Diffusion repository `delta.bin`: `{"state_dict": {LDM names..., "embed"}}` or
  `{"unet": {...}, "modifier_token": {...}}`
- textual inversion: diffusers `{token: tensor}`, A1111 `string_to_param` / `emb_params`
- LoRA: peft `lora_A/lora_B`, older diffusers `.lora.down/.up`, kohya `lora_unet_*.lora_down`
- AnimateDiff motion module: `...motion_modules.N...` (original: `temporal_transformer`, `pos_encoder`)
- base model: LDM single file `model.diffusion_model.*` (SD 1.x / 2.x / XL from the text encoder keys)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdvideo.errors import WrongFileKindError

CONCEPT = "cdvideo concept"
CUSTOM_DIFFUSION = "Custom Diffusion weights"
TEXTUAL_INVERSION = "textual inversion embedding"
LORA = "LoRA"
MOTION_LORA = "motion LoRA"
MOTION_MODULE = "AnimateDiff motion module"
BASE_MODEL = "base model"
UNKNOWN = "unknown"

# Kinds that `concept convert` and `render --concept` accept.
CONCEPT_KINDS = (CONCEPT, CUSTOM_DIFFUSION, TEXTUAL_INVERSION)
# What to do with each kind, for error messages.
USE_WITH = {
    CONCEPT: "--concept",
    CUSTOM_DIFFUSION: "--concept (or `cdvideo concept convert`)",
    TEXTUAL_INVERSION: "--concept (or `cdvideo concept convert`)",
    LORA: "--lora",
    MOTION_LORA: "--motion-lora",
    MOTION_MODULE: "--motion",
    BASE_MODEL: "--model",
}


@dataclass(frozen=True)
class FileKind:
    kind: str
    # Which variant: "diffusers", "kohya", "A1111", "original AnimateDiff", "SD 1.x", ...
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


def flatten_entries(obj: Any, prefix: str = "") -> dict[str, tuple[int, ...] | None]:
    """Nested dicts of tensors -> {dotted key: shape}; non-tensor leaves get None."""
    entries: dict[str, tuple[int, ...] | None] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                entries.update(flatten_entries(value, name + "."))
            else:
                entries[name] = tuple(value.shape) if hasattr(value, "shape") else None
    return entries


def sniff_entries(entries: dict[str, tuple[int, ...] | None], metadata: dict[str, str] | None = None) -> FileKind:
    """The kind of a weight file from its {key: shape} entries and safetensors metadata."""
    metadata = metadata or {}
    keys = list(entries)
    if metadata.get("format") == "cdvideo.concept":
        return FileKind(CONCEPT)
    if any("_custom_diffusion." in k for k in keys):
        return FileKind(CUSTOM_DIFFUSION, "diffusers")
    if _has_lora_keys(keys):
        kind = MOTION_LORA if any("motion_modules" in k for k in keys) else LORA
        return FileKind(kind, _lora_flavour(keys))
    if any(k.startswith("state_dict.") for k in keys) and all(
        "attn2." in k or k == "state_dict.embed" for k in keys if k.startswith("state_dict.")
    ):
        return FileKind(CUSTOM_DIFFUSION, "Custom Diffusion repository, LDM names")
    if any(k.startswith("modifier_token") for k in keys) or (
        any(k.startswith("unet.") for k in keys) and all("attn2." in k for k in keys if k.startswith("unet."))
    ):
        return FileKind(CUSTOM_DIFFUSION, "Custom Diffusion repository, diffusers names")
    if any("motion_modules." in k for k in keys) and not any(
        k.endswith(("conv_in.weight", "input_blocks.0.0.weight")) for k in keys
    ):
        original = any("temporal_transformer" in k or "pos_encoder" in k for k in keys)
        return FileKind(MOTION_MODULE, "original AnimateDiff" if original else "diffusers MotionAdapter")
    stripped = [k.removeprefix("state_dict.") for k in keys]
    if any(k.startswith("model.diffusion_model.") for k in stripped):
        if any(k.startswith("conditioner.embedders.") for k in stripped):
            return FileKind(BASE_MODEL, "SDXL single file")
        if any(k.startswith("cond_stage_model.model.") for k in stripped):
            return FileKind(BASE_MODEL, "SD 2.x single file")
        return FileKind(BASE_MODEL, "SD 1.x single file")
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return FileKind(BASE_MODEL, "diffusers UNet weights")
    if any(k.startswith(("string_to_param.", "string_to_token.")) for k in keys) or "emb_params" in keys:
        return FileKind(TEXTUAL_INVERSION, "A1111")
    if {"clip_l", "clip_g"} & set(keys):
        return FileKind(TEXTUAL_INVERSION, "SDXL")
    if keys and len(keys) <= 8 and all(
        "." not in k and entries[k] is not None and len(entries[k]) in (1, 2) for k in keys
    ):
        return FileKind(TEXTUAL_INVERSION, "diffusers")
    return FileKind(UNKNOWN)


def _has_lora_keys(keys: list[str]) -> bool:
    markers = (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.", ".lora.down.", ".lora.up.",
               "lora_linear_layer.", "_lora.down.", "_lora.up.", ".hada_w", ".lokr_w")
    return any(m in k for k in keys for m in markers)


def _lora_flavour(keys: list[str]) -> str:
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        if any(".hada_w" in k or ".lokr_w" in k for k in keys):
            return "LyCORIS"
        return "kohya"
    if any(".lora_A." in k for k in keys):
        return "peft"
    return "diffusers (old)"


def sniff(path: str | os.PathLike) -> FileKind:
    """What kind of weights `path` (a file or a directory) holds."""
    from cdvideo.formats.safe_load import SAFETENSORS, container_format, read_safetensors_header, safe_torch_load

    path = Path(path)
    if path.is_dir():
        return _sniff_directory(path)
    if container_format(path) == SAFETENSORS:
        entries, metadata = read_safetensors_header(path)
        return sniff_entries(entries, metadata)
    return sniff_entries(flatten_entries(safe_torch_load(path)))


def _sniff_directory(path: Path) -> FileKind:
    if any((path / f"pytorch_custom_diffusion_weights.{ext}").is_file() for ext in ("bin", "safetensors")):
        return FileKind(CUSTOM_DIFFUSION, "ClassDiffusion / diffusers output directory")
    if (path / "delta.bin").is_file():  # the Custom Diffusion repository's diffusers training output
        return sniff(path / "delta.bin")
    config = path / "config.json"
    if config.is_file() and _class_name(config) == "MotionAdapter":
        return FileKind(MOTION_MODULE, "diffusers MotionAdapter directory")
    if (path / "model_index.json").is_file():
        return FileKind(BASE_MODEL, "diffusers model directory")
    return FileKind(UNKNOWN, "directory")


def _class_name(config: Path) -> str | None:
    """The `_class_name` of a diffusers config.json; None when the file is not such a config."""
    from cdvideo.config import read_json

    data = read_json(config, "model config")
    return data.get("_class_name") if isinstance(data, dict) else None


def require_kind(path: str | os.PathLike, wanted: tuple[str, ...], role: str) -> FileKind:
    """Sniff `path`; if it is not one of `wanted`, raise WrongFileKindError naming what it is."""
    found = sniff(path)
    if found.kind in wanted:
        return found
    if found.kind == UNKNOWN:
        raise WrongFileKindError(
            f"{path}: not recognised as {' or '.join(wanted)} (given as {role}); "
            "its tensor names match no format cdvideo reads"
        )
    hint = USE_WITH.get(found.kind, "")
    raise WrongFileKindError(
        f"{path} is a {found}, not a {' or '.join(wanted)} (given as {role})"
        + (f": pass it with {hint}" if hint else "")
    )
