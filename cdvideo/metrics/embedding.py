"""Batched image and text embeddings from a loaded backbone, L2-normalised, cached per video.

CLIP image/text features are the projected pooled outputs (what `get_image_features` and
`get_text_features` return); DINO features are the CLS token `last_hidden_state[:, 0]`, as VBench
and DreamBooth's DINO score use, not a pooler output. torch is imported on first use, so that
`cdvideo --help` and flow-only runs start without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from cdvideo.metrics.backbones import Backbone
from cdvideo.metrics.base import EvalContext, Video

if TYPE_CHECKING:
    import torch


def embed_images(backbone: Backbone, images: Sequence[np.ndarray], batch_size: int) -> torch.Tensor:
    """Unit-norm embeddings (n, d) of uint8 (h, w, 3) images, `batch_size` images per forward pass."""
    import torch

    chunks = []
    for start in range(0, len(images), batch_size):
        batch = list(images[start : start + batch_size])
        # Channels-last stated, not guessed: the processor's guess fails on images 3 pixels high or wide.
        pixels = backbone.processor(images=batch, return_tensors="pt", input_data_format="channels_last")
        pixels = pixels["pixel_values"]  # (b, 3, H, W)
        pixels = pixels.to(backbone.device, dtype=next(backbone.model.parameters()).dtype)
        with torch.no_grad():
            if backbone.kind == "clip":
                pooled = backbone.model.vision_model(pixel_values=pixels).pooler_output  # (b, width)
                features = backbone.model.visual_projection(pooled)  # (b, d)
            else:
                features = backbone.model(pixel_values=pixels).last_hidden_state[:, 0]  # (b, d): CLS token
        chunks.append(features.float().cpu())
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


def embed_texts(backbone: Backbone, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm CLIP text embeddings (n, d), truncated to the tokenizer's maximum length as CLIP was trained."""
    import torch

    tokens = backbone.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    tokens = {k: v.to(backbone.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        pooled = backbone.model.text_model(**tokens).pooler_output  # (n, width): the end-of-text token
        features = backbone.model.text_projection(pooled)  # (n, d)
    return torch.nn.functional.normalize(features.float().cpu(), dim=-1)


def video_embeddings(video: Video, context: EvalContext, kind: str, model_id: str) -> torch.Tensor:
    """Frame embeddings (f, d) of a video, computed once per model and shared by its metrics."""
    key = ("embeddings", kind, model_id)
    if key not in video.cache:
        backbone = context.backbones().get(kind, model_id)
        video.cache[key] = embed_images(backbone, video.frames, context.batch_size)
    return video.cache[key]


def reference_embeddings(context: EvalContext, kind: str, model_id: str) -> torch.Tensor:
    """Reference-image embeddings (r, d), computed once per run and model."""
    key = ("references", kind, model_id)
    if key not in context.cache:
        backbone = context.backbones().get(kind, model_id)
        context.cache[key] = embed_images(backbone, context.reference_images, context.batch_size)
    return context.cache[key]
