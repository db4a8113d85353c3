"""Scoring checkpoints: CLIP-I / DINO-I of validation samples when those models are available, else held-out loss.

Scoring never draws from the training generator, so it cannot change what a run learns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cdvideo.train.losses import masked_diffusion_loss

# Timesteps at which the held-out loss is measured: evenly spread, so one number covers coarse and fine detail.
HELDOUT_TIMESTEPS = 8
SCORING_SEED = 1234
SAMPLES_PER_CHECKPOINT = 2


@dataclass
class Scorer:
    """How checkpoints of one run are scored; `higher_is_better` orders them."""

    name: str  # heldout_loss, training_loss, clip_i or dino_i
    higher_is_better: bool
    backbone_kind: str = ""
    model_id: str = ""


def choose_scorer(score: str, device: str, has_heldout: bool) -> tuple[Scorer, str | None]:
    """The scorer for `score` (auto: CLIP-I if its model loads, else held-out loss), and a note when it fell back."""
    loss = Scorer("heldout_loss" if has_heldout else "training_loss", higher_is_better=False)
    if score == "heldout_loss":
        return loss, None
    metric = "clip_i" if score in ("auto", "clip_i") else "dino_i"
    try:
        from cdvideo.errors import ModelNotAvailableError
        from cdvideo.metrics.backbones import DEFAULT_MODELS, load_backbone
    except ImportError:  # the metrics package is optional for training
        return loss, f"{metric} unavailable (cdvideo.metrics missing): scoring checkpoints by {loss.name}"
    kind = "clip" if metric == "clip_i" else "dino"
    try:
        load_backbone(kind, DEFAULT_MODELS[metric], device)
    except ModelNotAvailableError as error:
        return loss, f"{metric} unavailable ({error}): scoring checkpoints by {loss.name}"
    return Scorer(metric, higher_is_better=True, backbone_kind=kind, model_id=DEFAULT_MODELS[metric]), None


@torch.no_grad()
def diffusion_loss_at_fixed_noise(unet, vae, text_encoder, tokenizer, noise_scheduler, batch: dict, device) -> float:
    """Mean noise-prediction loss over fixed timesteps and fixed noise: comparable between checkpoints."""
    generator = torch.Generator().manual_seed(SCORING_SEED)
    pixels = batch["pixels"].to(device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor  # (n, 4, h, w)
    ids = tokenizer(batch["prompts"], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    hidden = text_encoder(ids)[0]
    steps = torch.linspace(0, noise_scheduler.config.num_train_timesteps - 1, HELDOUT_TIMESTEPS).long()
    losses = []
    for t in steps:
        noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
        timesteps = t.repeat(latents.shape[0]).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, hidden.to(unet.dtype)).sample
        target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
            noise_scheduler.get_velocity(latents, noise, timesteps)
        losses.append(float(masked_diffusion_loss(prediction, target, batch["masks"].to(device))))
    return float(np.mean(losses))


@torch.no_grad()
def sample_images(components: dict, prompt: str, size: int, steps: int, count: int = SAMPLES_PER_CHECKPOINT,
                  guidance_scale: float = 7.5, negative_prompt: str | None = None, seed: int | None = None) -> np.ndarray:
    """Images of `prompt` from the 2D model as it is now: uint8 (n, h, w, 3), fixed seed (or `seed`)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
        unet=components["unet"], scheduler=DDIMScheduler.from_config(components["noise_scheduler"].config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(SCORING_SEED if seed is None else seed)
    images = pipeline([prompt] * count, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance_scale,
                      negative_prompt=None if negative_prompt is None else [negative_prompt] * count,
                      generator=generator, output_type="np").images  # (n, h, w, 3) in [0, 1]
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def fidelity(scorer: Scorer, samples: np.ndarray, references: list[np.ndarray], device: str) -> float:
    """CLIP-I or DINO-I of `samples` against the training images, through cdvideo.metrics."""
    from cdvideo.metrics import EvalContext, Video, get_metric

    context = EvalContext(device=device, reference_images=references)
    return float(get_metric(scorer.name)(Video(frames=samples), context).value)
