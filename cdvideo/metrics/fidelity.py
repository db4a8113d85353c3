"""Concept fidelity: frames against the prompt (CLIP-T) and against the concept's reference images (CLIP-I, DINO-I).

Scores are raw cosines (not x100). CLIP-I and DINO-I also keep their per-frame curve, its slope
and the worst window: identity drift over the clip, which a mean hides.
"""

from __future__ import annotations

from cdvideo.metrics.base import EvalContext, MetricResult, MetricUnavailableError, Video
from cdvideo.metrics.embedding import embed_texts, reference_embeddings, video_embeddings
from cdvideo.metrics.identity import identity_over_time


def clip_t(video: Video, context: EvalContext) -> MetricResult:
    """Implements CLIP-T: mean cosine of the prompt's and each frame's CLIP embeddings (Ruiz et al., DreamBooth, 2023)."""
    if not video.prompt:
        raise MetricUnavailableError("no prompt: pass --prompt or keep the video's JSON sidecar beside it")
    model_id = context.model_for("clip_t")
    frames = video_embeddings(video, context, "clip", model_id)  # (f, d)
    text = embed_texts(context.backbones().get("clip", model_id), [video.prompt])[0]  # (d,)
    per_frame = frames @ text  # (f,)
    return MetricResult(
        value=float(per_frame.mean()),
        per_frame=per_frame.tolist(),
        details={"model": model_id, "prompt": video.prompt, "range": "-1..1 raw cosine; ~0.25..0.35 for a matching prompt"},
    )


def _reference_fidelity(video: Video, context: EvalContext, metric: str, kind: str) -> MetricResult:
    if not context.reference_images:
        raise MetricUnavailableError("no reference images: pass --reference-images DIR")
    model_id = context.model_for(metric)
    frames = video_embeddings(video, context, kind, model_id)  # (f, d)
    references = reference_embeddings(context, kind, model_id)  # (r, d)
    per_frame = (frames @ references.T).mean(dim=1)  # (f,): mean cosine to all references
    indices = video.frame_indices or list(range(video.num_frames))
    return MetricResult(
        value=float(per_frame.mean()),
        per_frame=per_frame.tolist(),
        details={
            "model": model_id,
            "references": len(context.reference_images),
            "frame_indices": list(indices),
            **identity_over_time(per_frame.tolist(), indices, context.identity_window),
        },
    )


def clip_i(video: Video, context: EvalContext) -> MetricResult:
    """Implements CLIP-I: mean cosine between CLIP embeddings of frames and reference images (Gal et al., 2023; Ruiz et al., 2023)."""
    return _reference_fidelity(video, context, "clip_i", "clip")


def dino_i(video: Video, context: EvalContext) -> MetricResult:
    """Implements DINO-I: mean cosine between DINO ViT-S/16 CLS features of frames and references (Ruiz et al., DreamBooth, 2023)."""
    return _reference_fidelity(video, context, "dino_i", "dino")
