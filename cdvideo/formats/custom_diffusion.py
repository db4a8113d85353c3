"""Custom Diffusion weights as ClassDiffusion, diffusers and the original repository write them.

Three layouts hold the same thing (trained cross-attention projections plus new token rows):

1. ClassDiffusion / diffusers `train_custom_diffusion.py` output: `pytorch_custom_diffusion_weights.bin`
   (pickle) or `.safetensors`, written by `UNet2DConditionModel.save_attn_procs`, keys
   `<block>.attn2.processor.to_k_custom_diffusion.weight` (and `to_v`, plus `to_q` /
   `to_out_custom_diffusion.0` with `--freeze_model crossattn`) holding *full trained matrices*;
   the pickle also holds an empty dict per processor without weights (`...attn1.processor: {}`).
   Beside it one `<newN>.bin` per token, `{"<newN>": tensor[dim]}`; the script writes safetensors
   content under that `.bin` name, and its pickled tensor is a view whose storage is the whole
   embedding table (reference.md section 1).
2. The original Custom Diffusion repository (adobe-research/custom-diffusion), LDM training
   (`src/get_deltas.py`): `{"state_dict": {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": W, ...,
   "embed": tensor[n_tokens, dim]}}`, full trained matrices under LDM module names.
3. The same repository's diffusers training (`src/diffusers_model_pipeline.py`): `delta.bin` =
   `{"unet": {diffusers name: W}, "modifier_token": {token: tensor[dim]}}`.
   Its `src/compress.py` writes the compressed form of 2 and 3: each `to_k`/`to_v` entry becomes
   `{"u": U @ diag(S), "v": Vt}`, the low-rank factors of the *change* W - W_base.

Full matrices become deltas against the base UNet given at conversion (its fingerprint recorded);
compressed factors are deltas already and are kept as low-rank factors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cdvideo.concept import Concept, fingerprint_unet
from cdvideo.errors import ConceptFileError, InjectionError, InputFileError
from cdvideo.formats.safe_load import read_weights

WEIGHT_NAMES = ("pytorch_custom_diffusion_weights.safetensors", "pytorch_custom_diffusion_weights.bin")
# `<new1>.bin`, `<new2>.safetensors`: one file per learned token, named after it.
TOKEN_FILE = re.compile(r"^<[^<>]+>\.(bin|safetensors)$")
_PROCESSOR_KEY = re.compile(
    r"^(?P<module>.+)\.processor\.(?P<proj>to_k|to_v|to_q|to_out)_custom_diffusion(?P<index>\.0)?\.(?P<kind>weight|bias)$"
)
_LDM_KEY = re.compile(
    r"^model\.diffusion_model\.(?:(?P<where>input_blocks|output_blocks)\.(?P<block>\d+)\.1|middle_block\.1)"
    r"\.(?P<rest>transformer_blocks\.\d+\.attn2\..+)$"
)


@dataclass
class CustomDiffusionWeights:
    """What a Custom Diffusion file holds, before it is made relative to a base model."""

    source: str
    layout: str
    # UNet parameter path (diffusers names, or LDM names when `ldm_names`) -> full trained weight
    trained: dict[str, torch.Tensor] = field(default_factory=dict)
    # parameter path -> (up, down): low-rank factors of the change (the repository's compressed form)
    low_rank: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # token -> (n_vectors, dim)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    ldm_names: bool = False

    def to_concept(self, unet, *, base_model: str = "", class_words: dict[str, str] | None = None,
                   embedding_dim: int | None = None) -> Concept:
        """Deltas against `unet`'s weights (diffusers UNet2DConditionModel or UNetMotionModel)."""
        params = dict(unet.named_parameters())
        rename = (lambda name: ldm_to_diffusers(name, unet.config.layers_per_block, self.source)) if self.ldm_names else str
        deltas: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
        for name, weight in self.trained.items():
            param = rename(name)
            base = _base_param(params, param, tuple(weight.shape), self.source, base_model)
            # In float32: the change is small next to the weight, and float16 would round it away.
            deltas[param] = weight.float() - base.detach().to("cpu", torch.float32)
        for name, (up, down) in self.low_rank.items():
            param = rename(name)
            _base_param(params, param, (up.shape[0], down.shape[1]), self.source, base_model)
            deltas[param] = (up.float().contiguous(), down.float().contiguous())
        for token, embedding in self.tokens.items():
            if embedding_dim is not None and embedding.shape[-1] != embedding_dim:
                raise InjectionError(
                    f"{self.source}: token {token} has embedding size {embedding.shape[-1]} but the text encoder of "
                    f"{base_model or 'the base model'} has {embedding_dim}: made for another base model"
                )
        concept = Concept(
            tokens=dict(self.tokens),
            class_words={t: w for t, w in (class_words or {}).items() if t in self.tokens},
            deltas=deltas,
            base_model=base_model,
            base_fingerprint=fingerprint_unet(unet),
            method="custom_diffusion",
            training={"converted_from": self.layout, "source": Path(self.source).name},
        )
        concept.validate(self.source)
        return concept


def _base_param(params, param: str, shape: tuple[int, ...], source: str, base_model: str) -> torch.Tensor:
    if param not in params:
        raise InjectionError(
            f"{source}: {param} matches no parameter of the base UNet {base_model!r} "
            "(was it trained on another architecture?)"
        )
    if tuple(params[param].shape) != tuple(shape):
        raise InjectionError(
            f"{source}: {param} is {tuple(shape)} in the file but {tuple(params[param].shape)} in the base model "
            f"{base_model!r}: trained on another architecture (SD 1.5 cross-attention takes 768 inputs, "
            "SD 2.x 1024, SDXL 2048)"
        )
    return params[param]


def ldm_to_diffusers(name: str, layers_per_block: int, source: str = "file") -> str:
    """`model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight` -> diffusers path.

    LDM numbers its input blocks 1.. with `layers_per_block` attention blocks and one downsampler
    per level, its output blocks 0.. with `layers_per_block + 1` per level.
    """
    match = _LDM_KEY.match(name)
    if not match:
        raise ConceptFileError(f"{source}: {name!r} is not an LDM spatial cross-attention parameter")
    if match["where"] is None:
        return f"mid_block.attentions.0.{match['rest']}"
    block = int(match["block"])
    if match["where"] == "input_blocks":
        level, layer = divmod(block - 1, layers_per_block + 1)
        return f"down_blocks.{level}.attentions.{layer}.{match['rest']}"
    level, layer = divmod(block, layers_per_block + 1)
    return f"up_blocks.{level}.attentions.{layer}.{match['rest']}"


def read_token_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """`{token: tensor}` from a ClassDiffusion `<newN>.bin` (safetensors or pickle, whatever the name says)."""
    data, _ = read_weights(path)
    if not isinstance(data, dict) or not data:
        raise ConceptFileError(f"{path}: expected a {{token: embedding}} mapping")
    tokens = {}
    for token, tensor in data.items():
        if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2):
            raise ConceptFileError(f"{path}: {token!r} is not a token embedding (a vector or (n, dim) matrix)")
        # clone(): a pickled row keeps the whole embedding table as its storage otherwise.
        tokens[str(token)] = tensor.detach().reshape(-1, tensor.shape[-1]).clone()
    return tokens


def _find_weights(path: Path) -> tuple[Path | None, list[Path]]:
    """The weights file and the token files of a ClassDiffusion output (a directory or one of its files)."""
    folder = path if path.is_dir() else path.parent
    weights = path if path.is_file() else next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    token_files = sorted(p for p in folder.iterdir() if p.is_file() and TOKEN_FILE.match(p.name))
    return weights, token_files


def read_custom_diffusion(path: str | os.PathLike) -> CustomDiffusionWeights:
    """Read any of the three layouts from a file or a ClassDiffusion output directory."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"not found: {path}")
    weights_path, token_files = _find_weights(path)
    if weights_path is None:
        delta = path / "delta.bin"
        if not delta.is_file():
            raise InputFileError(f"{path}: no {' or '.join(WEIGHT_NAMES)} or delta.bin in this directory")
        weights_path = delta
    data, _ = read_weights(weights_path)
    if not isinstance(data, dict):
        raise ConceptFileError(f"{weights_path}: expected a mapping of weights, got {type(data).__name__}")
    source = str(weights_path)
    if "state_dict" in data:
        result = _read_repository_ldm(data["state_dict"], source)
    elif "unet" in data or "modifier_token" in data:
        result = _read_repository_diffusers(data, source)
    else:
        result = _read_processor_weights(data, source)
        for token_file in token_files:
            for token, embedding in read_token_file(token_file).items():
                if token in result.tokens:
                    raise ConceptFileError(f"{token_file}: token {token} is defined twice in {path}")
                result.tokens[token] = embedding
    if not result.trained and not result.low_rank and not result.tokens:
        raise ConceptFileError(f"{source}: holds no Custom Diffusion weights and no token embeddings")
    return result


def _read_processor_weights(data: dict, source: str) -> CustomDiffusionWeights:
    """Layout 1: diffusers `save_attn_procs` keys -> the attention modules' own parameter paths."""
    result = CustomDiffusionWeights(source, "diffusers Custom Diffusion (save_attn_procs)")
    for key, value in data.items():
        if isinstance(value, dict) and not value:
            continue  # a processor without weights (attn1), saved as {} by the pickle writer
        match = _PROCESSOR_KEY.match(key)
        if not match or not isinstance(value, torch.Tensor):
            raise ConceptFileError(f"{source}: unexpected entry {key!r} (not a Custom Diffusion processor weight)")
        param = f"{match['module']}.{match['proj']}{match['index'] or ''}.{match['kind']}"
        result.trained[param] = value.detach()
    return result


def _split_entry(result: CustomDiffusionWeights, name: str, value, source: str) -> None:
    if isinstance(value, dict):
        if set(value) != {"u", "v"}:
            raise ConceptFileError(f"{source}: {name!r} holds {sorted(value)}, expected a weight or compressed u/v")
        result.low_rank[name] = (value["u"].detach(), value["v"].detach())
    elif isinstance(value, torch.Tensor):
        result.trained[name] = value.detach()
    else:
        raise ConceptFileError(f"{source}: {name!r} is a {type(value).__name__}, not a tensor")


def _read_repository_ldm(state: dict, source: str) -> CustomDiffusionWeights:
    """Layout 2: LDM names, `embed` rows for the new tokens (named <new1>, <new2>, ... as the repository does)."""
    result = CustomDiffusionWeights(source, "Custom Diffusion repository (LDM)", ldm_names=True)
    for name, value in state.items():
        if name == "embed":
            rows = value.detach().reshape(-1, value.shape[-1])
            result.tokens = {f"<new{i + 1}>": rows[i : i + 1].clone() for i in range(rows.shape[0])}
            continue
        if not _LDM_KEY.match(name):
            raise ConceptFileError(f"{source}: {name!r} is not an LDM spatial cross-attention parameter")
        _split_entry(result, name, value, source)
    return result


def _read_repository_diffusers(data: dict, source: str) -> CustomDiffusionWeights:
    """Layout 3: diffusers names under `unet`, embeddings under `modifier_token`."""
    if "text_encoder" in data:
        raise ConceptFileError(
            f"{source}: holds a fine-tuned text encoder (trained with --train_text_encoder), "
            "which a concept cannot carry: retrain with the default crossattn_kv setting"
        )
    result = CustomDiffusionWeights(source, "Custom Diffusion repository (diffusers)")
    for name, value in (data.get("unet") or {}).items():
        _split_entry(result, name, value, source)
    for token, value in (data.get("modifier_token") or {}).items():
        if isinstance(value, (list, tuple)):
            raise ConceptFileError(f"{source}: token {token} has two embeddings (an SDXL file); cdvideo renders SD 1.5")
        result.tokens[str(token)] = value.detach().reshape(-1, value.shape[-1]).clone()
    return result
