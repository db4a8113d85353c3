"""Original AnimateDiff motion-module checkpoints -> a diffusers `MotionAdapter`, offline.

The released files (`mm_sd_v14.ckpt`, `mm_sd_v15.ckpt`, `mm_sd_v15_v2.ckpt`, `v3_sd15_mm.ckpt`,
AnimateDiff's `UNet3DConditionModel` motion modules) are plain dicts of tensors named like
`down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight`,
plus `...attention_blocks.N.pos_encoder.pe` buffers of shape (1, max_length, channels).
diffusers renames them (`convert_animatediff_checkpoint_to_diffusers`; reference.md section 2):
drop `pos_encoder`, `.norms.0 -> .norm1`, `.norms.1 -> .norm2`, `.ff_norm -> .norm3`,
`.attention_blocks.0 -> .attn1`, `.attention_blocks.1 -> .attn2`, remove `.temporal_transformer`.

`MotionAdapter.from_single_file` needs a config and downloads one unless given a local one; here
the architecture is read from the checkpoint itself (channels per level, motion layers per block,
transformer depth, mid block, max length from the `pe` shape), so any size loads offline. The
head count is not in the weights: it comes from the registry (8 for every released module), a
JSON beside the file (`<name>.json` or `config.json` with `motion_num_attention_heads`), or the
caller.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from cdvideo.errors import InputFileError, WrongFileKindError
from cdvideo.formats.safe_load import read_weights
from cdvideo.formats.sniff import MOTION_MODULE, flatten_entries, sniff_entries

# AnimateDiff's VanillaTemporalModule default, used by every released SD 1.5 module.
DEFAULT_HEADS = 8
_RENAMES = (
    (".norms.0", ".norm1"),
    (".norms.1", ".norm2"),
    (".ff_norm", ".norm3"),
    (".attention_blocks.0", ".attn1"),
    (".attention_blocks.1", ".attn2"),
    (".temporal_transformer", ""),
)
_PROJ_IN = re.compile(r"^down_blocks\.(\d+)\.motion_modules\.(\d+)\.temporal_transformer\.proj_in\.weight$")
_BLOCK = re.compile(r"^down_blocks\.0\.motion_modules\.0\.temporal_transformer\.transformer_blocks\.(\d+)\.")
_MID_BLOCK = re.compile(r"^mid_block\.motion_modules\.0\.temporal_transformer\.transformer_blocks\.(\d+)\.")


@dataclass
class MotionCheckpoint:
    """An original-format motion module: diffusers-named weights and the MotionAdapter config that fits them."""

    source: str
    state_dict: dict[str, torch.Tensor]
    config: dict
    version: str


def detect_version(use_mid_block: bool, max_length: int, channels: tuple[int, ...]) -> str:
    """Which AnimateDiff release a module's shape matches (the keys tell v1, v2 and v3 apart)."""
    if tuple(channels) != (320, 640, 1280, 1280):
        size = "custom-size"
    else:
        size = "SD 1.5"
    if use_mid_block and max_length == 32:
        return f"v2 ({size}; mid block, 32 frames)"
    if not use_mid_block and max_length == 24:
        return f"v1 ({size}; no mid block, 24 frames)"
    if not use_mid_block and max_length == 32:
        return f"v3 or AnimateLCM ({size}; no mid block, 32 frames)"
    return f"unknown ({size}; mid block {use_mid_block}, {max_length} frames)"


def read_architecture(checkpoint: dict[str, torch.Tensor], source: str) -> dict:
    """MotionAdapter config values from an original checkpoint's keys and shapes."""
    channels: dict[int, int] = {}
    layers: dict[int, set[int]] = {}
    for key, value in checkpoint.items():
        if match := _PROJ_IN.match(key):
            level, layer = int(match[1]), int(match[2])
            channels[level] = value.shape[0]
            layers.setdefault(level, set()).add(layer)
    pe = [v for k, v in checkpoint.items() if k.endswith("pos_encoder.pe")]
    if not channels or not pe:
        raise WrongFileKindError(
            f"{source}: no `down_blocks.N.motion_modules.N.temporal_transformer` weights with a `pos_encoder.pe`: "
            "not an original AnimateDiff motion module (a diffusers MotionAdapter is a directory with config.json)"
        )
    depth = 1 + max(int(m[1]) for k in checkpoint if (m := _BLOCK.match(k)))
    mid_depths = [int(m[1]) for k in checkpoint if (m := _MID_BLOCK.match(k))]
    use_mid = any(k.startswith("mid_block.motion_modules.") for k in checkpoint)
    config = {
        "block_out_channels": [channels[i] for i in sorted(channels)],
        "motion_layers_per_block": len(layers[0]),
        "motion_transformer_layers_per_block": depth,
        "motion_max_seq_length": int(pe[0].shape[1]),
        "use_motion_mid_block": use_mid,
        "motion_num_attention_heads": DEFAULT_HEADS,
    }
    if use_mid:
        config["motion_transformer_layers_per_mid_block"] = 1 + max(mid_depths)
    return config


def convert_keys(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' key renames; the sinusoidal `pos_encoder.pe` buffers are recomputed by diffusers."""
    converted = {}
    for key, value in checkpoint.items():
        if "pos_encoder" in key:
            continue
        for old, new in _RENAMES:
            key = key.replace(old, new)
        converted[key] = value
    return converted


def _beside_config(path: Path) -> dict:
    """Settings from `<stem>.json` or `config.json` beside the checkpoint, if either exists."""
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and "motion_num_attention_heads" in data:
                return {k: v for k, v in data.items() if not k.startswith("_")}
    return {}


def read_motion_checkpoint(path: str | os.PathLike, overrides: dict | None = None) -> MotionCheckpoint:
    """Read an original AnimateDiff checkpoint (.ckpt / .pth / .safetensors) with its architecture."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"motion module not found: {path}")
    data, metadata = read_weights(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # some re-saved files wrap the tensors
    kind = sniff_entries(flatten_entries(data), metadata)
    if kind.kind != MOTION_MODULE:
        hint = "" if kind.kind == "unknown" else f" it is a {kind}"
        raise WrongFileKindError(f"{path}: not an AnimateDiff motion module;{hint or ' its tensor names are not'}")
    config = read_architecture(data, str(path))
    config.update(_beside_config(path))
    config.update(overrides or {})
    version = detect_version(config["use_motion_mid_block"], config["motion_max_seq_length"],
                             tuple(config["block_out_channels"]))
    return MotionCheckpoint(str(path), convert_keys(data), config, version)


def motion_adapter_from_checkpoint(path: str | os.PathLike, overrides: dict | None = None, dtype=None):
    """A diffusers MotionAdapter holding an original checkpoint's weights; every weight must land."""
    from diffusers import MotionAdapter

    checkpoint = read_motion_checkpoint(path, overrides)
    adapter = MotionAdapter(**checkpoint.config)
    missing, unexpected = adapter.load_state_dict(checkpoint.state_dict, strict=False)
    # The sinusoidal position tables are buffers diffusers computes itself, as from_single_file does.
    missing = [k for k in missing if not k.endswith(".pos_embed.pe")]
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:4])
        raise WrongFileKindError(
            f"{path}: {len(missing)} missing and {len(unexpected)} unexpected weights for a MotionAdapter "
            f"({shown}): an unsupported motion-module variant"
        )
    if dtype is not None:
        adapter = adapter.to(dtype)
    return adapter.eval()


def checkpoint_max_frames(path: str | os.PathLike) -> int:
    """The temporal position-encoding length of an original checkpoint (the most frames it renders)."""
    return int(read_motion_checkpoint(path).config["motion_max_seq_length"])


def convert_motion_checkpoint(path: str | os.PathLike, out: str | os.PathLike, overrides: dict | None = None) -> Path:
    """Write a diffusers MotionAdapter directory (config.json + safetensors), atomically."""
    from cdvideo.files import atomic_path

    adapter = motion_adapter_from_checkpoint(path, overrides)
    with atomic_path(out, directory=True) as tmp:
        adapter.save_pretrained(tmp)
    return Path(out)


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
