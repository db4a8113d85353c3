"""Test fixture: write diffusers SD components as one original LDM (CompVis) single-file state dict.

diffusers ships only the LDM -> diffusers direction (`diffusers.loaders.single_file_utils`), so this
inverts it, for the tests of `--model FILE`. What diffusers keeps as data is inverted as data: the
fixed key maps of `DIFFUSERS_TO_LDM_MAPPING`, the component prefixes (`LDM_UNET_KEY`,
`LDM_VAE_KEYS`, `LDM_CLIP_PREFIX_TO_REMOVE`) and the sub-module renames, which are read from the
`.replace(old, new)` chains of diffusers' own `update_*_ldm_to_diffusers` functions and applied
backwards. Only the block numbering (`input_blocks.N` <-> `down_blocks.B.resnets.L`) is code here,
the inverse of the index arithmetic in `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint`.

`check_round_trip` runs diffusers' converters on the written dict and asserts they give back every
key and tensor exactly, with no LDM key left unused: the writer is only trusted because of that.
"""

from __future__ import annotations

import inspect
import re

import torch
from diffusers.loaders import single_file_utils as sfu

UNET_PREFIX = sfu.LDM_UNET_KEY  # "model.diffusion_model."
VAE_PREFIX = sfu.LDM_VAE_KEYS[0]  # "first_stage_model."
CLIP_PREFIX = sfu.LDM_CLIP_PREFIX_TO_REMOVE[0]  # "cond_stage_model.transformer."
# The LDM file keeps transformers' `text_model.` level, which transformers >= 5.6 no longer has in
# CLIPTextModel; diffusers strips it when loading (create_diffusers_clip_model_from_ldm).
CLIP_TEXT_MODEL = sfu.CHECKPOINT_KEY_NAMES["clip"].removeprefix(CLIP_PREFIX).split(".")[0] + "."


def _renames(function) -> list[tuple[str, str]]:
    """The (ldm, diffusers) substring renames of one of diffusers' update_*_ldm_to_diffusers functions."""
    pairs = re.findall(r'\.replace\(\s*"([^"]+)"\s*,\s*"([^"]+)"\s*\)', inspect.getsource(function))
    if not pairs:
        raise RuntimeError(f"no renames found in {function.__name__}: diffusers changed; update tests/ldm_writer.py")
    return pairs


def _undo(key: str, renames: list[tuple[str, str]]) -> str:
    """Apply a forward rename chain backwards: last rename first, diffusers name -> LDM name."""
    for ldm, diffusers in reversed(renames):
        key = key.replace(diffusers, ldm)
    return key


UNET_RESNET = _renames(sfu.update_unet_resnet_ldm_to_diffusers)  # in_layers.0 -> norm1, ...
VAE_RESNET = _renames(sfu.update_vae_resnet_ldm_to_diffusers)  # nin_shortcut -> conv_shortcut
VAE_ATTENTION = _renames(sfu.update_vae_attentions_ldm_to_diffusers)  # q.weight -> to_q.weight, ...


def unet_to_ldm(state_dict: dict, config) -> dict:
    """A UNet2DConditionModel state dict under `model.diffusion_model.*` names."""
    fixed = dict(sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    per_level = config["layers_per_block"] + 1  # LDM numbers a level's resnets and its downsampler together
    out = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if key in fixed:
            ldm = fixed[key]
        elif parts[0] == "down_blocks":
            level, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":  # down_blocks.B.downsamplers.0.conv.X -> input_blocks.N.0.op.X
                ldm = f"input_blocks.{1 + level * per_level + per_level - 1}.0.op." + ".".join(parts[5:])
            else:
                block = 1 + level * per_level + int(parts[3])
                ldm = _block(f"input_blocks.{block}", kind, parts[4:])
        elif parts[0] == "mid_block":  # resnets.0, attentions.0, resnets.1 -> middle_block.0, .1, .2
            index = int(parts[2]) * 2 if parts[1] == "resnets" else 1
            ldm = _block("middle_block", parts[1], parts[3:], index)
        elif parts[0] == "up_blocks":
            level, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":  # after the last layer's resnet, and after its attention if any
                block = level * per_level + per_level - 1
                has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state_dict)
                ldm = f"output_blocks.{block}.{2 if has_attention else 1}.conv." + ".".join(parts[5:])
            else:
                ldm = _block(f"output_blocks.{level * per_level + int(parts[3])}", kind, parts[4:])
        else:
            raise ValueError(f"no LDM name for UNet weight {key}")
        out[UNET_PREFIX + ldm] = tensor
    return out


def _block(name: str, kind: str, rest: list[str], index: int | None = None) -> str:
    """A resnet (`.0`) or attention (`.1`) inside an LDM block: `name.0.in_layers.0.weight`, ..."""
    sub = ".".join(rest)
    if kind == "resnets":
        sub = _undo(sub, UNET_RESNET)
    elif kind != "attentions":
        raise ValueError(f"unexpected UNet sub-module {kind}")
    if index is not None:  # middle_block numbers its modules directly
        return f"{name}.{index}.{sub}"
    return f"{name}.{0 if kind == 'resnets' else 1}.{sub}"


def vae_to_ldm(state_dict: dict, config) -> dict:
    """An AutoencoderKL state dict under `first_stage_model.*` names (attention weights as 1x1 convs)."""
    fixed = dict(sfu.DIFFUSERS_TO_LDM_MAPPING["vae"])
    levels = len(config["up_block_types"])
    out = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        side = parts[0]
        if key in fixed:
            ldm = fixed[key]
        elif parts[1] == "down_blocks":
            level = int(parts[2])
            if parts[3] == "downsamplers":
                ldm = f"{side}.down.{level}.downsample.conv." + ".".join(parts[6:])
            else:
                ldm = _undo(f"{side}.down.{level}.block.{'.'.join(parts[4:])}", VAE_RESNET)
        elif parts[1] == "up_blocks":  # diffusers counts decoder levels from the bottom, LDM from the top
            level = levels - 1 - int(parts[2])
            if parts[3] == "upsamplers":
                ldm = f"{side}.up.{level}.upsample.conv." + ".".join(parts[6:])
            else:
                ldm = _undo(f"{side}.up.{level}.block.{'.'.join(parts[4:])}", VAE_RESNET)
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            ldm = _undo(f"{side}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}", VAE_RESNET)
        elif parts[1] == "mid_block" and parts[2] == "attentions":
            ldm = _undo(f"{side}.mid.attn_1.{'.'.join(parts[4:])}", VAE_ATTENTION)
            if tensor.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                tensor = tensor[:, :, None, None]
        else:
            raise ValueError(f"no LDM name for VAE weight {key}")
        out[VAE_PREFIX + ldm] = tensor
    return out


def clip_to_ldm(state_dict: dict) -> dict:
    """A CLIPTextModel state dict under `cond_stage_model.transformer.text_model.*` names."""
    return {CLIP_PREFIX + (k if k.startswith(CLIP_TEXT_MODEL) else CLIP_TEXT_MODEL + k): v
            for k, v in state_dict.items()}


def to_ldm(unet, vae, text_encoder) -> dict:
    """One LDM-layout state dict from the three diffusers / transformers models (contiguous copies)."""
    state = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **clip_to_ldm(text_encoder.state_dict()),
    }
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def from_ldm(checkpoint: dict, unet_config, vae_config) -> dict:
    """diffusers' own conversion of an LDM dict back: {"unet": ..., "vae": ..., "text_encoder": ...}."""
    text = sfu.convert_ldm_clip_checkpoint(checkpoint)
    return {
        "unet": sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config),
        "vae": sfu.convert_ldm_vae_checkpoint(checkpoint, vae_config),
        "text_encoder": text,
    }


def check_round_trip(components: dict, checkpoint: dict) -> None:
    """Assert diffusers' converters turn `checkpoint` back into every key and tensor of `components`."""
    back = from_ldm(checkpoint, components["unet"].config, components["vae"].config)
    used = 0
    for name in ("unet", "vae", "text_encoder"):
        expected = components[name].state_dict()
        got = back[name]
        if name == "text_encoder":  # as create_diffusers_clip_model_from_ldm does for flattened CLIPTextModel
            got = {k if k in expected else k.removeprefix(CLIP_TEXT_MODEL): v for k, v in got.items()}
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        assert not missing and not extra, f"{name}: missing {missing[:5]}, unexpected {extra[:5]}"
        for key, tensor in expected.items():
            assert got[key] is not None, f"{name}.{key}: converter read an LDM key the writer did not write"
            assert got[key].shape == tensor.shape and torch.equal(got[key], tensor), f"{name}.{key} differs"
        used += len(got)
    assert used == len(checkpoint), f"{len(checkpoint) - used} LDM keys were not read by diffusers' converters"
