"""ClassDiffusion's two losses: masked noise-prediction MSE and the semantic preservation loss (SPL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Implements Custom Diffusion's masked noise-prediction MSE (Kumari et al., 2023), per valid latent pixel.

    prediction, target: (b, c, h, w), or clips (b, c, f, h, w); mask: (b, 1, h, w) (clips: (b, 1, f, h, w)),
    1 where the rescaled image is. Each example's squared error is summed over channels and averaged over its
    valid pixels (and frames), then over the batch: as diffusers' train_custom_diffusion.py and ClassDiffusion's
    code compute it (c = 4 times a per-value mean), which sets the scale that the SPL weight and the grad-norm
    clip act against.
    """
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")  # (b, c, [f,] h, w)
    mask = mask.to(error.dtype)  # (b, 1, [f,] h, w): the channel sum stays in the numerator only
    dims = tuple(range(1, error.ndim))
    return ((error * mask).sum(dim=dims) / mask.sum(dim=dims).clamp(min=1)).mean()


def eos_positions(input_ids: torch.Tensor, eos_token_id: int, pooling: str = "eos") -> torch.Tensor:
    """The position whose feature stands for each text: (b, n) ids -> (b,) positions.

    eos: the first end-of-text token (padding may repeat it), as CLIP defines its text feature.
    legacy: the largest token id, which is what transformers does when a config says
    eos_token_id 2 (SD 1.5's does); after adding <new1> (the largest id) that is the new token.
    """
    if pooling == "eos":
        is_eos = input_ids == eos_token_id
        if not bool(is_eos.any(dim=1).all()):
            raise ValueError(f"a text has no end-of-text token (id {eos_token_id}); was it truncated?")
        return is_eos.int().argmax(dim=1)
    if pooling == "legacy":
        return input_ids.argmax(dim=1)
    raise ValueError(f"unknown pooling {pooling!r}; choose eos or legacy")


def text_features(text_encoder, input_ids: torch.Tensor, eos_token_id: int, pooling: str = "eos") -> torch.Tensor:
    """The text encoder's final-layer-norm hidden state at the pooled position, (b, d); no projection."""
    hidden = text_encoder(input_ids)[0]  # (b, n, d), after the final layer norm
    positions = eos_positions(input_ids, eos_token_id, pooling).to(hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]  # (b, d)


def spl_loss(token_features: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
    """Implements the semantic preservation loss of ClassDiffusion (Huang et al., 2025): mean of 1 - cos.

    token_features: (k, d) for "a photo of a <newK> dog"; class_features: (k, d) for "a photo of a dog";
    averaged over the k concepts trained together.
    """
    return (1 - F.cosine_similarity(token_features.float(), class_features.float(), dim=-1)).mean()


def subject_latent_mask(subjects: torch.Tensor, latent: int) -> torch.Tensor:
    """Subject masks (b, 1, s, s) in [0, 1] -> (b, 1, latent, latent): 1 in every latent cell the subject touches."""
    return (F.adaptive_max_pool2d(subjects, latent) > 0.5).float()


def attention_loss(maps: list[torch.Tensor], subjects: torch.Tensor, concepts: list[int]) -> torch.Tensor:
    """Implements Break-A-Scene's cross-attention loss (Avrahami et al., 2023): each example's attention map of
    its concept's token, normalised to a maximum of 1, should be its subject mask, so the token is attended
    where the subject is and nowhere else (and leaves the rest of a scene to the other words).

    maps: per attn2 call (c, b', q) with q = h * w of that layer (b' >= b: prior images may follow);
    subjects: (b, 1, s, s); concepts: each example's concept index. Mean squared error over layers and examples.
    """
    b = subjects.shape[0]
    index = torch.tensor(concepts, device=subjects.device)
    losses = []
    for layer in maps:
        side = int(round(layer.shape[-1] ** 0.5))
        attention = layer[index, torch.arange(b, device=layer.device)].float()  # (b, q): each example's own token
        attention = attention / attention.amax(dim=1, keepdim=True).clamp(min=1e-8)
        target = F.adaptive_avg_pool2d(subjects.float(), side).flatten(1)  # (b, q), area-weighted
        losses.append(F.mse_loss(attention, target.to(attention.device)))
    if not losses:
        raise ValueError("no attention maps were recorded: the attention loss needs a bound binding")
    return torch.stack(losses).mean()
