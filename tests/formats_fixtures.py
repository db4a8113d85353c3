"""Foreign-format fixtures, written by the foreign writers themselves where they are installed.

Custom Diffusion files come from diffusers: a UNet with the tiny model's weights gets diffusers'
`CustomDiffusionAttnProcessor2_0` on its cross-attention (as ClassDiffusion's training script
installs them), distinct trained-looking weights, and is saved with `save_attn_procs` in both
serializations; the token file is written as the ClassDiffusion script writes it. The original
Custom Diffusion repository's layouts are built as its `get_deltas.py` / `compress.py` write them.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The tiny UNet's layers_per_block; LDM numbering below follows it.
LAYERS_PER_BLOCK = 2


def trained_unet(model_dir: Path, seed: int = 1, train_q_out: bool = False):
    """The tiny UNet with Custom Diffusion processors holding weights that differ from the base."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    modules = dict(unet.named_modules())
    generator = torch.Generator().manual_seed(seed)
    processors = {}
    for name in unet.attn_processors:
        attn = modules[name.removesuffix(".processor")]
        if name.endswith("attn1.processor"):
            # ClassDiffusion installs weightless processors on self-attention: saved as `{}`.
            processors[name] = CustomDiffusionAttnProcessor2_0(
                train_kv=False, train_q_out=False, hidden_size=attn.inner_dim, cross_attention_dim=None
            )
            continue
        processor = CustomDiffusionAttnProcessor2_0(
            train_kv=True, train_q_out=train_q_out, hidden_size=attn.inner_dim,
            cross_attention_dim=unet.config.cross_attention_dim,
        )
        with torch.no_grad():
            pairs = [(processor.to_k_custom_diffusion, attn.to_k), (processor.to_v_custom_diffusion, attn.to_v)]
            if train_q_out:
                pairs += [(processor.to_q_custom_diffusion, attn.to_q),
                          (processor.to_out_custom_diffusion[0], attn.to_out[0])]
            for trained, base in pairs:
                for p_trained, p_base in zip(trained.parameters(), base.parameters()):
                    noise = torch.randn(p_base.shape, generator=generator)
                    p_trained.copy_(p_base + 0.5 * p_base.std() * noise)
        processors[name] = processor
    unet.set_attn_processor(processors)
    return unet


def trained_weights(unet) -> dict[str, torch.Tensor]:
    """The trained matrices by the attention module's own parameter path (what a hand merge writes)."""
    weights = {}
    for name, processor in unet.attn_processors.items():
        module = name.removesuffix(".processor")
        for key, value in processor.state_dict().items():
            projection = key.replace("_custom_diffusion", "")
            weights[f"{module}.{projection}"] = value.detach().clone()
    return weights


def save_token_file(path: Path, token: str, dim: int, seed: int = 2, safetensors: bool = True) -> torch.Tensor:
    """Write `{token: row}` as ClassDiffusion's `save_new_embed` does: `.bin` name for both serializations.

    The pickled row is indexed out of a whole embedding table, so its storage is that table.
    """
    table = torch.randn(50, dim, generator=torch.Generator().manual_seed(seed))
    row = table[37]
    if safetensors:
        from safetensors.torch import save_file

        save_file({token: row.contiguous()}, str(path), metadata={"format": "pt"})
    else:
        torch.save({token: row}, path)
    return row.clone()


def write_classdiffusion_output(directory: Path, unet, token_row_dim: int, safetensors: bool) -> torch.Tensor:
    """A ClassDiffusion output directory: weights via `save_attn_procs` plus `<new1>.bin`."""
    unet.save_attn_procs(directory, safe_serialization=safetensors)
    return save_token_file(directory / "<new1>.bin", "<new1>", token_row_dim, safetensors=safetensors)


def diffusers_to_ldm(name: str) -> str:
    """The inverse of cdvideo's LDM mapping, for building the repository's LDM-named delta files."""
    parts = name.split(".")
    rest = ".".join(parts[4:]) if parts[0] != "mid_block" else ".".join(parts[3:])
    if parts[0] == "mid_block":
        return f"model.diffusion_model.middle_block.1.{rest}"
    level, layer = int(parts[1]), int(parts[3])
    if parts[0] == "down_blocks":
        return f"model.diffusion_model.input_blocks.{level * (LAYERS_PER_BLOCK + 1) + layer + 1}.1.{rest}"
    return f"model.diffusion_model.output_blocks.{level * (LAYERS_PER_BLOCK + 1) + layer}.1.{rest}"


def compress_delta(trained: torch.Tensor, base: torch.Tensor, ratio: float = 0.6) -> dict[str, torch.Tensor]:
    """The repository's `compress.py`: SVD of W - W_base, keeping singular values up to `ratio` of their sum."""
    u, s, vt = torch.linalg.svd(trained - base)
    explained, i = 0.0, 0
    for i, value in enumerate(s):
        explained += value / s.sum()
        if explained > ratio:
            break
    return {"u": (u[:, :i] @ torch.diag(s)[:i, :i]).clone(), "v": vt[:i].clone()}


def write_repository_delta(path: Path, weights: dict[str, torch.Tensor], embed: torch.Tensor,
                           base: dict[str, torch.Tensor] | None = None) -> None:
    """`delta.ckpt` as the repository's LDM `get_deltas.py` writes it (compressed when `base` is given)."""
    state = {}
    for name, weight in weights.items():
        state[diffusers_to_ldm(name)] = compress_delta(weight, base[name]) if base is not None else weight
    state["embed"] = embed
    torch.save({"state_dict": state}, path)


def write_peft_lora(directory: Path, model_dir: Path, seed: int = 3, rank: int = 4, alpha: int = 8,
                    diffusers_names: bool = False) -> Path:
    """A LoRA made by peft on the tiny UNet and text encoder, saved with diffusers' `save_lora_weights`.

    `diffusers_names` passes the state dicts through `convert_state_dict_to_diffusers` first, as
    diffusers' training scripts do (older `lora.down` / `lora_linear_layer` names).
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    unet_config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                             target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "conv1"])
    text_config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(unet_config)
        # peft directly: transformers' own add_adapter asks for a newer peft than diffusers needs.
        inject_adapter_in_model(text_config, text_encoder)
    convert = convert_state_dict_to_diffusers if diffusers_names else dict
    StableDiffusionPipeline.save_lora_weights(
        directory,
        unet_lora_layers=convert(get_peft_model_state_dict(unet)),
        text_encoder_lora_layers=convert(get_peft_model_state_dict(text_encoder)),
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=text_config.to_dict(),
    )
    return directory / "pytorch_lora_weights.safetensors"


def peft_to_kohya(peft_file: Path, out: Path) -> Path:
    """The same LoRA in kohya sd-scripts' layout (`lora_unet_*` / `lora_te_*`, `.alpha` per layer).

    kohya's writer is not a Python package, so this renames what peft wrote, following sd-scripts'
    naming: module path with `_` for `.`, `lora_down` / `lora_up`, alpha as a scalar tensor, and the
    text encoder's modules under `text_model` as in transformers 4 (which SD 1.5 LoRAs were made with).
    """
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(peft_file), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = json.loads(handle.metadata()["lora_adapter_metadata"])
    kohya = {}
    for key, value in tensors.items():
        component, _, rest = key.partition(".")
        module, _, factor = rest.rpartition(".lora_")
        prefix = "lora_unet_" if component == "unet" else "lora_te_text_model_"
        name = prefix + module.replace(".", "_")
        kohya[f"{name}.lora_down.weight" if factor == "A.weight" else f"{name}.lora_up.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(float(meta[f"{component}.lora_alpha"]))
    save_file(kohya, str(out))
    return out
