"""The Shapes world's exact referee as a metric: does a render show what its caption asks for?"""

from __future__ import annotations

from cdvideo.metrics.base import EvalContext, MetricResult, MetricUnavailableError, Video

# At 32x32, yuv420p's half-resolution colour smears a small object's edges into neighbouring
# palette colours; PNG frames (`--format frames`) keep every pixel as rendered.
LOSSY = (".mp4", ".webm")
LOSSY_NOTE = "read from a lossy video: small objects may be misread; render with --format frames for exact colours"


def shapes_caption_match(video: Video, context: EvalContext) -> MetricResult:
    """Share of frames whose background and asked objects are right, read by the Shapes pixel judge (cdvideo.shapes.judge)."""
    from cdvideo.shapes.judge import CONCEPT_COLOURS, judge_clip
    from cdvideo.shapes.world import CONCEPT, SIZE, parse_caption

    if not video.prompt:
        raise MetricUnavailableError("no prompt: pass --prompt or keep the video's JSON sidecar beside it")
    try:
        request = parse_caption(video.prompt)
    except ValueError:
        raise MetricUnavailableError("prompt is not a Shapes-world caption") from None
    h, w = video.frames.shape[1:3]
    if (h, w) != (SIZE, SIZE):
        raise MetricUnavailableError(f"frames are {w}x{h}; the Shapes world is {SIZE}x{SIZE}")
    tokens = {o["colour"] for o in request.objects if o["colour"].startswith("<")}
    if tokens - {CONCEPT["token"]}:
        raise MetricUnavailableError(f"the judge knows the colours of {CONCEPT['token']} only, not of "
                                     f"{', '.join(sorted(tokens - {CONCEPT['token']}))}")
    clip = judge_clip(video.frames, video.prompt)
    per_frame = [judge_clip(frame[None], video.prompt).both for frame in video.frames]
    return MetricResult(
        value=clip.both,
        per_frame=per_frame,
        details={
            "background": clip.background,
            "objects": clip.objects,
            "motion": clip.motion,
            "extra_objects": clip.extra_objects,
            **({"concept_colours": list(CONCEPT_COLOURS)} if tokens else {}),
            **({"note": LOSSY_NOTE} if video.path is not None and video.path.suffix.lower() in LOSSY else {}),
            "range": "0..1, share of frames with background and objects right; motion: the asked direction or not",
        },
    )
