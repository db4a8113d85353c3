"""Score a Shapes model on held-out captions: render through cdvideo, read the frames back with the pixel judge.

    renderer = Renderer(load_preset("shapes"))
    prompts = held_out_prompts(20, seed=0)
    clips = render_and_judge([(p, s) for p in prompts for s in (0, 1)], renderer, steps=25)
    print(summarize(clips))

Rendering goes through `cdvideo.render.Renderer` (one loaded pipeline, concepts applied per call
and taken off after), so what is scored is exactly what `cdvideo render` makes. Judging a clip is
cdvideo.shapes.judge's (`judge_clip`, `judge_concept_clip`); this module renders, adds the
weight-free temporal metrics and takes the means over clips.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from cdvideo.config import ConceptSpec, RenderSettings
# judge_concept_clip and CONCEPT_COLOURS are imported from here by scripts/shapes_personalization.py.
from cdvideo.shapes.judge import CONCEPT_COLOURS, JudgedClip, judge_clip, judge_concept_clip  # noqa: F401
from cdvideo.shapes.world import NUM_FRAMES, SIZE, parse_caption, sample_scene

# Issue 9's targets for the trained model on held-out captions.
TARGETS = {"both": 0.80, "background": 0.80, "objects": 0.80, "motion": 0.70}
# cdvideo's metrics that need no model weights and no prompt.
TEMPORAL_METRICS = ("temporal_flickering", "warping_error", "motion_magnitude", "dynamic_degree")


def held_out_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct captions of test-split scenes (only held-out colour/shape/background triples), motion stated."""
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    for _ in range(100 * n):  # the test split holds hundreds of captions; this only guards a tiny world
        if len(prompts) == n:
            break
        scene = sample_scene(rng, split="test")
        scene.say_motion = True  # every prompt asks a motion, so every clip counts for motion accuracy
        caption = scene.caption()
        if caption not in prompts:
            prompts.append(caption)
    if len(prompts) < n:
        raise ValueError(f"the test split has only {len(prompts)} distinct captions, asked for {n}")
    return prompts


def temporal_metrics(frames: np.ndarray, names: Iterable[str] = TEMPORAL_METRICS) -> dict[str, float | None]:
    """cdvideo's weight-free temporal metrics (flickering, warping error, motion) on one clip; None where unscored."""
    from cdvideo.metrics import EvalContext, MetricResult, Video, evaluate_video

    results = evaluate_video(Video(frames=frames), list(names), EvalContext())
    return {name: float(r.value) if isinstance(r, MetricResult) and np.isfinite(r.value) else None
            for name, r in results.items()}


def render_clips(
    items: Iterable[tuple[str, int]],
    renderer,
    *,
    concept: str | list[str] | None = None,
    strength: float = 1.0,
    concept_start: float = 0.0,
    concept_binding: str | None = None,
    concept_schedule: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 8,
    step_cache: int = 0,
    step_cache_branch: int = 0,
) -> Iterator[tuple[RenderSettings, np.ndarray]]:
    """Render every (prompt, seed) at the world's size and length; yields (resolved settings, (f, h, w, 3) uint8 frames).

    `renderer` is a loaded `cdvideo.render.Renderer` (load it once, reuse it for every call);
    `concept` is a concept file (or several) applied to every clip and taken off after, bound as
    `concept_binding` says and scaled over the steps by `concept_start` / `concept_schedule`
    (cdvideo.binding, cdvideo.inject.strength_scheduled); `steps` /
    `guidance_scale` None take the model preset's; `step_cache` / `step_cache_branch` as in RenderSettings
    (cdvideo.step_cache; 0 is full compute). Clips are rendered `batch_size` at a time in
    one pipeline call each, each with its own seeded generator: the frames of one-by-one renders,
    up to float rounding.
    """
    from cdvideo.render import check_inputs, load_concepts, resolve_settings

    # 1. Check inputs: every setting is valid before anything renders.
    preset = renderer.preset
    specs = [ConceptSpec(c, strength) for c in ([concept] if isinstance(concept, str) else concept or [])]
    settings = []
    for prompt, seed in items:
        # The world's unconditional caption is "": the model learned guidance from empty captions.
        request = RenderSettings(prompt=prompt, seed=int(seed), model=preset.name, negative_prompt="",
                                 num_frames=NUM_FRAMES, height=SIZE, width=SIZE, steps=steps,
                                 guidance_scale=guidance_scale, concepts=specs, concept_start=concept_start,
                                 concept_binding=concept_binding, concept_schedule=concept_schedule,
                                 step_cache=step_cache, step_cache_branch=step_cache_branch, device=renderer.device)
        resolved = resolve_settings(request, preset)
        check_inputs(resolved, preset)
        settings.append(resolved)
    concepts = load_concepts(specs)

    # 2. Render in batches.
    for start in range(0, len(settings), batch_size):
        group = settings[start : start + batch_size]
        yield from zip(group, renderer.render_batch(group, concepts, progress=False))


def render_and_judge(items: Iterable[tuple[str, int]], renderer, *, keep_frames: bool = False,
                     on_clip: Callable[[JudgedClip], None] | None = None, **render_options) -> list[JudgedClip]:
    """`render_clips`, each clip judged against its own prompt (a world caption); `on_clip` sees each as it comes."""
    items = list(items)
    for prompt, _ in items:
        parse_caption(prompt)  # a prompt the judge cannot read fails before anything renders
    clips = []
    for settings, frames in render_clips(items, renderer, **render_options):
        clip = judge_clip(frames, settings.prompt, settings.seed, keep_frames=keep_frames)
        clip.guidance_scale = settings.guidance_scale
        clips.append(clip)
        if on_clip:
            on_clip(clip)
    return clips


def summarize(clips: list[JudgedClip]) -> dict:
    """Means over clips (frame shares) and motion accuracy over the clips whose prompt asks a motion."""
    if not clips:
        raise ValueError("no clips to summarize")
    asked = [c.motion for c in clips if c.motion is not None]
    return {
        "clips": len(clips),
        "background": float(np.mean([c.background for c in clips])),
        "objects": float(np.mean([c.objects for c in clips])),
        "both": float(np.mean([c.both for c in clips])),
        "motion": float(np.mean(asked)) if asked else None,
        "motion_clips": len(asked),
        "extra_objects": float(np.mean([c.extra_objects for c in clips])),
    }


def meets_targets(summary: dict) -> dict[str, bool | None]:
    """Each of issue 9's targets: met, missed, or None when nothing measured it (no motion asked)."""
    return {name: None if summary[name] is None else summary[name] >= target for name, target in TARGETS.items()}



def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table with padded columns (readable in a terminal too); floats get 3 decimals."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *cells]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |" for row in [header, *cells]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
