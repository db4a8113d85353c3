"""Textual inversion embeddings as diffusers and AUTOMATIC1111's web UI write them.

- diffusers `textual_inversion.py`: `learned_embeds.safetensors|bin` = `{token: tensor[dim]}` or
  `{token: tensor[n_vectors, dim]}`; ClassDiffusion's `<newN>.bin` files are the same layout.
- A1111 `.pt`: `{"string_to_token": {"*": id}, "string_to_param": {"*": tensor[n_vectors, dim]},
  "name": ..., "step": ...}`; the trigger word is the embedding's `name` (else the file name).
  Its `.safetensors` form holds `emb_params` (or, flattened, `string_to_param.*`).
- SDXL embeddings (`clip_l` + `clip_g`) are refused: they need a second text encoder.

The result is a tokens-only Concept: nothing in the UNet changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cdvideo.concept import Concept
from cdvideo.errors import ConceptFileError
from cdvideo.formats.safe_load import read_weights


def _as_matrix(tensor, source: str, what: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2):
        raise ConceptFileError(f"{source}: {what} is not an embedding (a vector or (n_vectors, dim) matrix)")
    return tensor.detach().reshape(-1, tensor.shape[-1]).float().clone()


def read_textual_inversion(path: str | os.PathLike, token: str | None = None) -> dict[str, torch.Tensor]:
    """{token: (n_vectors, dim)} from a diffusers or A1111 embedding file; `token` renames a single one."""
    path = Path(path)
    source = str(path)
    data, _ = read_weights(path)
    if not isinstance(data, dict) or not data:
        raise ConceptFileError(f"{source}: expected a mapping of embeddings")
    if {"clip_l", "clip_g"} & set(data):
        raise ConceptFileError(f"{source}: an SDXL embedding (clip_l/clip_g); cdvideo renders SD 1.5")
    if "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise ConceptFileError(f"{source}: string_to_param must hold exactly one embedding")
        name = data.get("name") if isinstance(data.get("name"), str) else path.stem
        tokens = {name: _as_matrix(next(iter(params.values())), source, "string_to_param")}
    elif "emb_params" in data or any(k.startswith("string_to_param.") for k in data):  # A1111 .safetensors
        key = "emb_params" if "emb_params" in data else next(k for k in data if k.startswith("string_to_param."))
        tokens = {path.stem: _as_matrix(data[key], source, key)}
    else:  # diffusers {token: tensor}
        tokens = {str(k): _as_matrix(v, source, repr(k)) for k, v in data.items()}
    if token:
        if len(tokens) != 1:
            raise ConceptFileError(f"{source}: holds {len(tokens)} tokens, so a single new token name cannot apply")
        tokens = {token: next(iter(tokens.values()))}
    for name in tokens:
        if not name or any(c.isspace() for c in name):
            raise ConceptFileError(f"{source}: token {name!r} contains spaces: give a one-word token")
    return tokens


def textual_inversion_concept(path: str | os.PathLike, token: str | None = None,
                              class_words: dict[str, str] | None = None, base_model: str = "") -> Concept:
    """A tokens-only Concept from an embedding file."""
    tokens = read_textual_inversion(path, token)
    concept = Concept(
        tokens=tokens,
        class_words={t: w for t, w in (class_words or {}).items() if t in tokens},
        base_model=base_model,
        method="textual_inversion",
        training={"converted_from": "textual inversion", "source": Path(path).name},
    )
    concept.validate(str(path))
    return concept
