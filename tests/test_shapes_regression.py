"""Regression checks on the shipped Shapes weights: fixed-seed renders of held-out prompts are right.

The prompts are from the world's test split (colour/shape/background triples never shown in
training), with the preset's defaults; the cases were judged right when the weights were made,
the same object and background asked to move both ways along an axis, so a model that takes the
direction from the seed's noise rather than the words (the first shipped model did:
docs/shapes-world.md) fails one of each pair. If retrained weights get one wrong, the judge's
reading is in the failure message.
"""

import pytest

from cdvideo.config import RenderSettings
from cdvideo.models import load_preset
from cdvideo.render import Renderer, resolve_settings
from cdvideo.shapes.judge import judge_video, motion_of, score_video
from cdvideo.shapes.world import held_out, parse_caption

# (prompt, seed): held-out captions, rendered with the preset's defaults.
CASES = [
    ("a white circle moving right on a black background", 0),
    ("a white circle moving left on a black background", 0),
    ("a blue triangle moving up on a green background", 0),
    ("a blue triangle moving down on a green background", 0),
    ("a green triangle moving down on a white background", 1),
    ("a green triangle moving up on a white background", 1),
]


@pytest.fixture(scope="module")
def renderer():
    return Renderer(load_preset("shapes"), device="cpu", dtype="float32")


@pytest.mark.parametrize("prompt, seed", CASES)
def test_held_out_prompt_is_rendered_right(renderer, prompt, seed):
    request = parse_caption(prompt)
    assert all(held_out(o["colour"], o["shape"], request.background) for o in request.objects), "not a test prompt"
    settings = resolve_settings(RenderSettings(prompt=prompt, model="shapes", seed=seed), renderer.preset)
    frames = renderer.render(settings)
    score = score_video(frames, prompt)
    seen = [(f.background, [(o.colour, o.shape) for o in f.objects]) for f in judge_video(frames)]
    assert score.background >= 0.8 and score.objects >= 0.8, (score, seen)
    tracked = motion_of(judge_video(frames), request.objects[0]["shape"], request.objects[0]["colour"])
    assert tracked == request.motion, (tracked, seen)


def test_the_vae_reconstructs_the_concept_it_never_saw(renderer):
    """A concept can only be learned through a VAE that can show it (the first Shapes VAE decoded the
    yellow-over-blue circle as yellow over red): encode + decode keeps both of its colours."""
    import numpy as np
    import torch

    from cdvideo.shapes.judge import CONCEPT_COLOURS
    from cdvideo.shapes.judge import judge_frame, object_matches
    from cdvideo.shapes.world import concept_scene, draw_frame

    rng = np.random.default_rng(7)
    backgrounds = ["black", "white", "red", "green"]
    frames = np.stack([draw_frame(concept_scene(rng, background=backgrounds[i % 4]), 0) for i in range(16)])
    vae = renderer.pipeline.vae
    x = torch.from_numpy(frames).float().div(127.5).sub(1).permute(0, 3, 1, 2).to(vae.dtype)
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    decoded = ((y.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    wanted = dict(shape="circle", colour="<new1>", size=None)
    seen = [judge_frame(frame) for frame in decoded]
    hits = [any(object_matches(o, wanted, CONCEPT_COLOURS) for o in s.objects) for s in seen]
    assert sum(hits) >= 14, [(s.background, [(o.shape, o.colours) for o in s.objects]) for s in seen]


EXAMPLE = "examples/shapes-twotone-circle.safetensors"


def judged_with_defaults(renderer, prompt: str, seed: int):
    """`cdvideo render --concept EXAMPLE --prompt PROMPT --seed SEED` with no other flag: the example concept,
    trained token-bound, renders with the model's defaults (region-bound: docs/personalization.md)."""
    from pathlib import Path

    from cdvideo.config import ConceptSpec
    from cdvideo.render import load_concepts
    from cdvideo.shapes.judge import judge_concept_clip

    path = Path(__file__).resolve().parents[1] / EXAMPLE
    settings = resolve_settings(RenderSettings(prompt=prompt, model="shapes", seed=seed, concepts=[ConceptSpec(str(path))]),
                                renderer.preset)
    assert settings.concept_binding == "region"
    return judge_concept_clip(renderer.render(settings, load_concepts(settings.concepts), progress=False), prompt, seed)


def test_the_example_concept_renders_the_two_tone_circle(renderer):
    """examples/shapes-twotone-circle.safetensors (ClassDiffusion, trained by the documented Shapes command: token-bound,
    each photo a clip of 8 frames through the motion module with its subject moving, painted on the world's colours
    other than its own; docs/personalization.md, "Session 19") on the background of its photos as given: the
    judge sees a circle with both concept colours (each >= 20 % of it) in most of these frames (the base model:
    never); a retrained concept or model that loses it fails here."""
    import numpy as np

    shares = [judged_with_defaults(renderer, "a <new1> circle on a black background", seed).concept for seed in range(4)]
    assert np.mean(shares) >= 0.7 and min(shares) >= 0.5, shares


def test_the_example_concept_leaves_its_photos_background(renderer):
    """On green, which none of its five photos shows (only their painted copies since session 19), the example concept
    is drawn in most frames of these seeds (seeds 0-3 when it was retrained: 1.00 / 0.62 / 1.00 / 1.00). The example of
    session 10, trained on single images of the photos on black, drew it in none of seeds 0-3 (0.00 in each)."""
    shares = [judged_with_defaults(renderer, "a <new1> circle on a green background", seed).concept for seed in (0, 2, 3)]
    assert min(shares) >= 0.75, shares


def test_the_example_concept_is_drawn_on_white(renderer):
    """On white the example concept is drawn in every frame of these seeds (seeds 0-3 when it was retrained: 1.00 /
    0.00 / 1.00 / 1.00; the example of sessions 17-18, painted on black, white and yellow only, drew it in all four).
    The example of sessions 11-16, trained on its five photos on black only, drew it in none (0.00 in each, and on
    white in no frame of its measured prompts): the painted photos carry it there (docs/personalization.md,
    "Session 17", "Session 19")."""
    shares = [judged_with_defaults(renderer, "a <new1> circle on a white background", seed).concept for seed in (0, 2, 3)]
    assert min(shares) >= 0.75, shares


def test_the_example_concept_moves_each_way_as_asked(renderer):
    """The example concept with no flag, in each motion direction: these fixed-seed clips were judged right
    (concept on screen in >= 0.88 of frames, moving the asked way) when the example was retrained (session 19: all 24
    such clips, seeds 0-5, moved the asked way and 23 showed the concept in >= 0.88 of frames, left seed 1 in 0.75;
    session 17's example: 24 of 24; session 11's: 21 of 24; the single-image one: 22 of 24); a concept that takes
    the motion words over again fails here. (The merged ClassDiffusion concept of session 7 moved the asked way in
    3 of 8 such clips.)"""
    cases = [("left", 2), ("right", 0), ("up", 0), ("down", 1)]
    wrong = []
    for direction, seed in cases:
        judged = judged_with_defaults(renderer, f"a <new1> circle moving {direction} on a black background", seed)
        if not (judged.motion and judged.concept >= 0.75):
            wrong.append((direction, seed, judged.motion, judged.concept))
    assert wrong == [], wrong


def test_the_example_concept_keeps_a_second_object(renderer):
    """The example concept with no flag beside a second object: this fixed-seed clip was judged right (the
    concept and the red triangle both in >= 0.75 of frames) when the example was retrained (session 19: seeds 0-5 and 7
    of 0-7 were; session 17's example: 3 and 7; session 11's: 1, 3 and 7). It is a regression check, not a rate
    (docs/personalization.md gives the rate over prompts)."""
    judged = judged_with_defaults(renderer, "a <new1> circle and a red triangle on a black background", 7)
    assert judged.concept >= 0.75 and judged.others >= 0.75 and judged.everything >= 0.75, judged
