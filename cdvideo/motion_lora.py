"""Motion LoRAs (AnimateDiff v2 camera moves and the like): low-rank changes to the motion module only.

Layouts read, each a pair of factors per motion-module linear layer (W += strength * scale * up @ down):
- original AnimateDiff (`v2_lora_ZoomIn.ckpt`), what its `convert_motion_lora_ckpt_to_diffusers` reads:
  `down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0`
  `.processor.to_q_lora.down.weight` and `.up.weight`, scale 1;
- diffusers (`guoyww/animatediff-motion-lora-*`, `diffusion_pytorch_model.safetensors`): the same with
  diffusers' module names (`...motion_modules.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight`),
  optionally `unet.`-prefixed, or `.lora.down/.up`, `.lora_A/.lora_B` (peft) layer names; an `.alpha`
  tensor per layer gives scale = alpha / rank.

Names go through the same renames as original motion modules (cdvideo.formats.animatediff), so
both layouts land on the motion UNet's own parameter names. Every layer must land on a weight
inside a motion module, or loading fails with the list of layers that did not. The merge itself is
cdvideo.inject.loras_applied: weights are copied before the change and copied back after, so taking
motion LoRAs off restores every weight bit for bit, and strength 0 touches nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cdvideo.config import MotionLoraSpec
from cdvideo.errors import InjectionError, InputFileError, WrongFileKindError
from cdvideo.formats.lora import lora_factor

_ORIGINAL_RENAMES = (
    (".temporal_transformer", ""),
    (".attention_blocks.0", ".attn1"),
    (".attention_blocks.1", ".attn2"),
)


def resolve_motion_lora(spec: str) -> str:
    """A motion LoRA file path from a path or a registry name (its file in motion_modules/, or the hub cache)."""
    if Path(spec).is_file():
        return spec
    from cdvideo.models import resolve_registered

    path = resolve_registered(spec, "motion_lora")
    if path is None:
        raise InputFileError(f"motion_loras: {spec!r} is neither a file nor a motion LoRA name (see `cdvideo motion list`)")
    return path


def _module_and_factor(key: str) -> tuple[str, str] | None:
    """(diffusers module path, 'down'|'up'|'alpha') for one tensor name, or None if not a LoRA tensor."""
    key = key.removeprefix("unet.")
    for old, new in _ORIGINAL_RENAMES:
        key = key.replace(old, new)
    return lora_factor(key)


def read_motion_lora(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """{motion-UNet module path: {'down', 'up'[, 'alpha']}} from a motion LoRA file of any supported layout."""
    from cdvideo.formats.safe_load import read_weights

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"motion LoRA not found: {path}")
    data, _ = read_weights(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data:
        raise WrongFileKindError(f"{path}: not a motion LoRA (expected a mapping of tensors)")
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in data.items():
        parsed = _module_and_factor(key) if torch.is_tensor(tensor) else None
        if parsed is None:
            raise WrongFileKindError(f"{path}: {key!r} is not a LoRA factor: not a motion LoRA")
        module, factor = parsed
        layers.setdefault(module, {})[factor] = tensor.detach()
    if not any("motion_modules." in module for module in layers):
        raise WrongFileKindError(f"{path}: a LoRA for spatial layers, not a motion LoRA: use --lora")
    for module, factors in layers.items():
        if "down" not in factors or "up" not in factors:
            raise WrongFileKindError(f"{path}: {module} has only one of its two LoRA factors")
    return layers


def bind_motion_lora(layers: dict[str, dict[str, torch.Tensor]], unet, source: str) -> dict:
    """Match every layer to a motion-module weight of `unet`: {('unet', param): (up, down, scale)}."""
    modules = dict(unet.named_modules())
    bound = {}
    unmatched = []
    for name, factors in layers.items():
        module = modules.get(name)
        if module is None or ".motion_modules." not in f".{name}" or not isinstance(module, torch.nn.Linear):
            unmatched.append(name)
            continue
        up, down = factors["up"].flatten(1), factors["down"].flatten(1)
        if up.shape[0] != module.out_features or down.shape[1] != module.in_features or up.shape[1] != down.shape[0]:
            raise InjectionError(
                f"{source}: {name} is {module.out_features}x{module.in_features} in the motion module but the "
                f"motion LoRA is {up.shape[0]}x{down.shape[1]}: made for another motion module"
            )
        scale = float(factors["alpha"]) / down.shape[0] if "alpha" in factors else 1.0
        bound[("unet", f"{name}.weight")] = (up, down, scale)
    if unmatched:
        shown = ", ".join(unmatched[:4]) + (f" and {len(unmatched) - 4} more" if len(unmatched) > 4 else "")
        raise InjectionError(
            f"{source}: {len(unmatched)} motion LoRA layer(s) match no motion-module layer of this model: {shown}"
        )
    return bound


def load_motion_loras(pipeline, specs: list[MotionLoraSpec]) -> list[tuple[dict, float, str]]:
    """(bound, strength, name) for each spec, ready for cdvideo.inject.loras_applied."""
    loaded = []
    for spec in specs:
        path = resolve_motion_lora(spec.path)
        loaded.append((bind_motion_lora(read_motion_lora(path), pipeline.unet, path), float(spec.strength), spec.path))
    return loaded
