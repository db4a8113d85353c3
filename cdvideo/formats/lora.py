"""SD 1.5 LoRA files (peft / diffusers and kohya), bound to the spatial UNet and text encoder of a video pipeline.

Layouts read (all as pairs of low-rank factors per target layer, W += scale * up @ down):
- peft, as diffusers' `save_lora_weights` writes it: `unet.<module>.lora_A.weight` (down),
  `.lora_B.weight` (up), `text_encoder.<module>...`; alpha and rank from the safetensors metadata
  `lora_adapter_metadata` (`{"unet.lora_alpha": 8, "unet.r": 4, "unet.alpha_pattern": {...}}`),
  scale = alpha / r (alpha / sqrt(r) with `use_rslora`), 1 without metadata as diffusers does.
- older diffusers: `unet.<module>.lora.down.weight` / `.lora.up.weight`, attention-processor
  style `<attn>.processor.to_q_lora.down.weight`, text encoder `...lora_linear_layer.down.weight`.
- kohya sd-scripts: `lora_unet_<module with _ for .>.lora_down.weight`, `.lora_up.weight`, `.alpha`
  (scale = alpha / rank), `lora_te_<module>` for the text encoder. Underscored names are matched
  against the pipeline's own module names, so no name table is needed.
LyCORIS (LoHa / LoKr) and SDXL (`lora_te1_` / `lora_te2_`) files are refused by name.

The LoRA is merged into the weights for a render and taken off after it (cdvideo.inject), so it
costs nothing at inference and stacks with concepts. Motion modules are never targets.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cdvideo.errors import ConfigError, InjectionError, WrongFileKindError
from cdvideo.formats.safe_load import read_weights
from cdvideo.formats.sniff import LORA, flatten_entries, sniff_entries

COMPONENTS = ("unet", "text_encoder")
_DOTTED = [  # (pattern, factor) for dotted (peft / diffusers) names; group 1 is the target module
    (re.compile(r"^(.+)\.lora_A(?:\.default)?\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_B(?:\.default)?\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora\.down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora\.up\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora_linear_layer\.down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_linear_layer\.up\.weight$"), "up"),
]
# Attention-processor names of old diffusers LoRAs: `attn1.processor.to_out_lora.down.weight` -> attn1.to_out.0
_PROCESSOR = re.compile(r"^(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_KOHYA = re.compile(r"^lora_(unet|te)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


@dataclass
class LoraLayer:
    down: torch.Tensor | None = None  # (r, in) or (r, in, kh, kw)
    up: torch.Tensor | None = None  # (out, r) or (out, r, 1, 1)
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass
class LoraFile:
    """One LoRA's layers, keyed by (component, module name as written: dotted, or kohya's underscored)."""

    source: str
    flavour: str
    layers: dict[tuple[str, str], LoraLayer] = field(default_factory=dict)
    kohya_names: bool = False
    # peft metadata: default alpha / rank per component, and per-module alpha overrides
    metadata: dict = field(default_factory=dict)

    def scale(self, component: str, module: str, layer: LoraLayer) -> float:
        if layer.alpha is not None:
            return layer.alpha / layer.rank
        meta = self.metadata
        alpha = meta.get(f"{component}.lora_alpha")
        for pattern, value in (meta.get(f"{component}.alpha_pattern") or {}).items():
            if module == pattern or module.endswith("." + pattern):
                alpha = value
        if alpha is None:
            return 1.0
        return alpha / (math.sqrt(layer.rank) if meta.get(f"{component}.use_rslora") else layer.rank)


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read a LoRA file (any supported layout); every tensor must be understood."""
    path = Path(path)
    data, metadata = read_weights(path)
    if not isinstance(data, dict):
        raise WrongFileKindError(f"{path}: not a LoRA (expected a mapping of tensors)")
    kind = sniff_entries(flatten_entries(data), metadata)
    if kind.kind != LORA:
        raise WrongFileKindError(f"{path} is a {kind}, not a LoRA" + (
            ": motion LoRAs change the motion module, which --lora does not touch" if kind.kind == "motion LoRA" else ""))
    if kind.detail == "LyCORIS":
        raise ConfigError(f"{path}: a LyCORIS (LoHa/LoKr) file; cdvideo reads plain LoRA (peft, diffusers, kohya)")
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in data):
        raise ConfigError(f"{path}: an SDXL LoRA (two text encoders); cdvideo renders SD 1.5")
    lora = LoraFile(str(path), kind.detail, kohya_names=kind.detail == "kohya")
    if metadata.get("lora_adapter_metadata"):
        lora.metadata = json.loads(metadata["lora_adapter_metadata"])
    for key, tensor in data.items():
        component, module, part = _parse_key(key, str(path))
        layer = lora.layers.setdefault((component, module), LoraLayer())
        if part == "alpha":
            layer.alpha = float(tensor)
        else:
            setattr(layer, part, tensor.detach())
    for (component, module), layer in lora.layers.items():
        if layer.down is None or layer.up is None:
            raise ConfigError(f"{path}: {component} {module} has only one of its two LoRA factors")
    return lora


def _parse_key(key: str, source: str) -> tuple[str, str, str]:
    """(component, module, down|up|alpha) for one tensor name."""
    if match := _KOHYA.match(key):
        part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[match[3]]
        return ("unet" if match[1] == "unet" else "text_encoder"), match[2], part
    component, _, rest = key.partition(".")
    if component not in COMPONENTS:
        component, rest = "unet", key  # unet-only files saved without a prefix
    parsed = lora_factor(rest)
    if parsed is None:
        raise ConfigError(f"{source}: unexpected tensor {key!r} in a LoRA file")
    return component, *parsed


def lora_factor(name: str) -> tuple[str, str] | None:
    """(module path, 'down'|'up'|'alpha') for one dotted LoRA tensor name (peft, diffusers, attention-processor
    style), or None if it is no LoRA tensor. Shared by spatial LoRAs and motion LoRAs (cdvideo.motion_lora)."""
    if match := _PROCESSOR.match(name):
        projection = "to_out.0" if match[2] == "to_out" else match[2]
        return f"{match[1]}.{projection}", match[3]
    if name.endswith(".alpha"):
        return name.removesuffix(".alpha"), "alpha"
    for pattern, part in _DOTTED:
        if match := pattern.match(name):
            return match[1], part
    return None


def _module_name(name: str, component: str, kohya: bool, modules: dict, underscored: dict) -> str | None:
    """The model's module name for a LoRA layer name, or None.

    SD 1.5 LoRAs name text-encoder layers `text_model.encoder...` (transformers 4); transformers 5's
    CLIPTextModel has no `text_model` level, so the prefix is dropped when the model lacks it.
    """
    candidates = [name]
    if component == "text_encoder":
        candidates.append(name.removeprefix("text_model_" if kohya else "text_model."))
    for candidate in candidates:
        found = underscored.get(candidate) if kohya else candidate
        if found in modules:
            return found
    return None


# (component, parameter name) -> (up, down, scale): what inject.loras_applied merges.
BoundLora = dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, float]]


def bind_lora(lora: LoraFile, pipeline) -> BoundLora:
    """Match every layer of `lora` to a weight of the pipeline's spatial UNet or text encoder, checking shapes."""
    modules = {c: dict(getattr(pipeline, c).named_modules()) for c in COMPONENTS}
    underscored = {c: {name.replace(".", "_"): name for name in modules[c]} for c in COMPONENTS}
    bound: BoundLora = {}
    unmatched = []
    for (component, name), layer in lora.layers.items():
        module_name = _module_name(name, component, lora.kohya_names, modules[component], underscored[component])
        module = modules[component].get(module_name) if module_name else None
        if module is None or not hasattr(module, "weight") or "motion_modules" in module_name:
            unmatched.append(f"{component}.{name}")
            continue
        weight = module.weight
        out_features, in_features = weight.shape[0], weight[0].numel()
        up, down = layer.up.flatten(1), layer.down.flatten(1)
        if up.shape[0] != out_features or down.shape[1] != in_features:
            raise InjectionError(
                f"{lora.source}: {component} {module_name} is {out_features}x{in_features} in the model but the LoRA "
                f"is {up.shape[0]}x{down.shape[1]}: made for another architecture (SD 1.5 cross-attention "
                "takes 768 inputs, SD 2.x 1024, SDXL 2048)"
            )
        bound[(component, f"{module_name}.weight")] = (up, down, lora.scale(component, module_name, layer))
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise InjectionError(f"{lora.source}: {len(unmatched)} LoRA layer(s) match no layer of this model: {shown}")
    return bound
