"""IP-Adapter beside concepts: reference images steer a render through diffusers' IP-Adapter processors,
and token-bound concepts keep working.

`cdvideo render --concept dog.safetensors --ip-adapter toy.png:0.6 --prompt "a <new1> dog"` loads the
IP-Adapter (Ye et al. 2023) with diffusers' own `load_ip_adapter` for this render and takes it off after.
diffusers installs its processors with `set_attn_processor`, which replaces every processor of the UNet:
a token-bound concept's `BoundAttnProcessor` (cdvideo.binding) on a cross-attention module would be
dropped without a word. Here each such module gets `BoundIPAdapterAttnProcessor`, diffusers' IP-Adapter
processor computing its text keys and values through the bound processor, so both act; any other
processor that cannot be combined is an error, never a silent loss. After the render every processor,
the UNet's image projection and its config are as they were, the very same objects.

Several reference images each go through their own copy of the adapter (diffusers' multi-adapter
form), so each keeps its own scale. Rules and checks that need no model live here too (no torch at import).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Iterator

from cdvideo.config import RenderSettings
from cdvideo.errors import ConfigError, InputFileError
from cdvideo.hub import check_cached

# SD 1.5's IP-Adapter; its CLIP image encoder (ViT-H) is the image_encoder folder beside it.
DEFAULT_MODEL = "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"
ENCODER_FOLDER = "image_encoder"


def default_image_encoder(model: str) -> str:
    """The image_encoder folder beside the adapter file (locally, or in the same hub repository)."""
    parent, _, _ = model.rpartition("/")
    return f"{parent}/{ENCODER_FOLDER}" if parent else ENCODER_FOLDER


def resolve_ip_adapter(settings: RenderSettings) -> RenderSettings:
    """Reference images and local files made absolute; the adapter and its image encoder filled in."""
    if not settings.ip_adapters:
        return settings

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().absolute()) if Path(path).expanduser().exists() else path

    model = absolute(settings.ip_adapter_model or DEFAULT_MODEL)
    encoder = absolute(settings.ip_adapter_image_encoder or default_image_encoder(model))
    images = [dataclasses.replace(spec, image=str(Path(spec.image).expanduser().absolute())) for spec in settings.ip_adapters]
    return dataclasses.replace(settings, ip_adapters=images, ip_adapter_model=model, ip_adapter_image_encoder=encoder)


def check_ip_adapter(settings: RenderSettings) -> None:
    """Readable reference images, finite scales, local files that are there (one line naming the bad one)."""
    from PIL import Image, UnidentifiedImageError

    if not settings.ip_adapters:
        if settings.ip_adapter_model or settings.ip_adapter_image_encoder:
            raise ConfigError("ip_adapter_model / ip_adapter_image_encoder are for --ip-adapter IMAGE: give an image too")
        return
    for spec in settings.ip_adapters:
        if not math.isfinite(spec.scale) or spec.scale < 0:
            raise ConfigError(f"IP-Adapter image {spec.image}: scale must be a finite number >= 0, got {spec.scale}")
        if not Path(spec.image).is_file():
            raise InputFileError(f"IP-Adapter image not found: {spec.image}")
        try:
            with Image.open(spec.image) as image:
                image.verify()
        except (UnidentifiedImageError, OSError) as error:
            raise InputFileError(f"IP-Adapter image {spec.image} cannot be read: {error}") from None
    if settings.step_cache > 1:
        raise ConfigError("step_cache is not available with an IP-Adapter (--ip-adapter)")
    for what, source in (("IP-Adapter", settings.ip_adapter_model), ("IP-Adapter image encoder",
                                                                    settings.ip_adapter_image_encoder)):
        if source.startswith((".", "/", "~")) and not Path(source).expanduser().exists():
            raise InputFileError(f"{what} not found: {source}")
        check_cached(source, what)


class _BoundProjections:
    """An attention module as IP-Adapter's processor sees it: its text keys and values come from a
    BoundAttnProcessor's projection (base plus the concepts' changes at their tokens), all else is the module's."""

    def __init__(self, attn, bound):
        self._attn, self._bound = attn, bound

    def __getattr__(self, name):
        return getattr(self._attn, name)

    def to_k(self, states):
        return self._bound.project(self._attn, states)[0]

    def to_v(self, states):
        return self._bound.project(self._attn, states)[1]


def _bound_ip_processor_class():
    import torch

    class BoundIPAdapterAttnProcessor(torch.nn.Module):
        """diffusers' IP-Adapter processor (`ip`, its weights and scales) with a BoundAttnProcessor's text
        keys and values (`bound`): the concept acts at its token, the reference image everywhere."""

        def __init__(self, ip, bound):
            super().__init__()
            self.ip = ip
            self.bound = bound

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                     scale: float = 1.0, ip_adapter_masks=None):
            return self.ip(_BoundProjections(attn, self.bound), hidden_states, encoder_hidden_states, attention_mask,
                           temb, scale, ip_adapter_masks)

    return BoundIPAdapterAttnProcessor


@contextlib.contextmanager
def ip_adapter_applied(pipeline, state_dict: dict | None, scales: list[float]) -> Iterator[None]:
    """diffusers' `load_ip_adapter` with `state_dict` once per reference image (each at its scale) on
    `pipeline` (its image encoder and feature extractor already set: `models.task_pipeline`), concepts'
    bound processors kept; everything as before after the block."""
    if state_dict is None:
        yield
        return
    from diffusers.models.attention_processor import (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0,
                                                      IPAdapterXFormersAttnProcessor)

    from cdvideo.binding import BoundAttnProcessor

    unet = pipeline.unet
    saved = unet.attn_processors  # the very objects, put back after
    saved_projection, saved_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    try:
        pipeline.load_ip_adapter([state_dict] * len(scales), subfolder=[""] * len(scales),
                                 weight_name=[""] * len(scales))
        pipeline.set_ip_adapter_scale(list(scales))
        combined = dict(unet.attn_processors)
        wrap = _bound_ip_processor_class()
        for name, before in saved.items():
            if type(before).__module__.startswith("diffusers."):
                continue  # diffusers' own processors: load_ip_adapter put their IP-Adapter twin or a fresh copy
            now = combined[name]
            if not isinstance(now, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor)):
                combined[name] = before  # a module IP-Adapter leaves alone keeps what it had
            elif isinstance(before, BoundAttnProcessor) and isinstance(now, IPAdapterAttnProcessor2_0):
                combined[name] = wrap(now, before)
            else:
                raise ConfigError(f"the IP-Adapter cannot be combined with the {type(before).__name__} on {name} "
                                  "(another adapter on the UNet's cross-attention): render without one of them")
        unet.set_attn_processor(combined)
        yield
    finally:
        unet.set_attn_processor(saved)
        unet.encoder_hid_proj = saved_projection
        unet.config.encoder_hid_dim_type = saved_type
