"""Temporal consistency of frame embeddings: CLIP consecutive-frame similarity and VBench's two consistencies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdvideo.metrics.base import EvalContext, MetricResult, Video
from cdvideo.metrics.embedding import video_embeddings

if TYPE_CHECKING:
    import torch


def clip_temporal_consistency(video: Video, context: EvalContext) -> MetricResult:
    """Mean CLIP cosine of consecutive frames (Esser et al., 2023); all pairs as in Tune-A-Video (Wu et al., 2023) if `all_pairs`."""
    model_id = context.model_for("clip_temporal_consistency")
    features = video_embeddings(video, context, "clip", model_id)  # (f, d), unit norm
    per_pair = (features[:-1] * features[1:]).sum(-1)  # (f-1,): cos(f_t, f_t+1)
    if context.all_pairs:
        similarity = features @ features.T  # (f, f)
        above_diagonal = similarity.new_ones(similarity.shape).triu(diagonal=1).bool()  # each pair once
        value = similarity[above_diagonal].mean()
    else:
        value = per_pair.mean()
    return MetricResult(
        value=float(value),
        per_pair=per_pair.tolist(),
        details={"model": model_id, "pairs": "all" if context.all_pairs else "consecutive", "range": "-1..1, 1 = identical frames"},
    )


def vbench_consistency(features: torch.Tensor) -> torch.Tensor:
    """Per-frame terms `0.5 (max(0, cos(f_1, f_t)) + max(0, cos(f_t-1, f_t)))` for t >= 2 (VBench, Huang et al., 2024)."""
    to_first = (features[1:] @ features[0]).clamp(min=0)  # (f-1,)
    to_previous = (features[1:] * features[:-1]).sum(-1).clamp(min=0)  # (f-1,)
    return 0.5 * (to_first + to_previous)


def subject_consistency(video: Video, context: EvalContext) -> MetricResult:
    """Implements VBench's subject consistency on DINO ViT-B/16 CLS features (Huang et al., 2024)."""
    model_id = context.model_for("subject_consistency")
    terms = vbench_consistency(video_embeddings(video, context, "dino", model_id))
    return MetricResult(
        value=float(terms.mean()), per_pair=terms.tolist(), details={"model": model_id, "range": "0..1, 1 = identical frames"}
    )


def background_consistency(video: Video, context: EvalContext) -> MetricResult:
    """Implements VBench's background consistency on CLIP ViT-B/32 image features (Huang et al., 2024)."""
    model_id = context.model_for("background_consistency")
    terms = vbench_consistency(video_embeddings(video, context, "clip", model_id))
    return MetricResult(
        value=float(terms.mean()), per_pair=terms.tolist(), details={"model": model_id, "range": "0..1, 1 = identical frames"}
    )
