"""Scoring Shapes renders: held-out prompts, per-clip judging and its summary, concept judging, the `shapes` metric.

Frames come from the world's own generator, whose truth is known, so a perfect clip must score
1.0 everywhere and a clip that breaks one request must lose exactly that score. No trained weights.
"""

import numpy as np
import pytest
from conftest import EXAMPLE_CONCEPT

from cdvideo.metrics import OFFLINE_METRICS, EvalContext, MetricResult, Unavailable, Video, evaluate_video, get_metric
from cdvideo.shapes import evaluate, judge, world


def clip_of(background="white", objects=(("circle", "red", 24, 16),), motion="left", lower=None):
    """A hand-placed clip of big objects (shape, colour, x, y at frame 0) moving `motion`; `lower` gives the first a lower colour.

    The positions below keep every path inside the frame (7 steps of 2 pixels; big objects are 12 wide).
    """
    placed = [world.WorldObject(shape, colour, "big", x, y) for shape, colour, x, y in objects]
    if lower:
        placed[0].lower_colour = lower
    return world.draw_clip(world.Scene(background, placed, motion))


def test_held_out_prompts_are_distinct_test_captions_with_a_motion():
    prompts = evaluate.held_out_prompts(12, seed=3)
    assert len(set(prompts)) == 12
    assert prompts == evaluate.held_out_prompts(12, seed=3) != evaluate.held_out_prompts(12, seed=4)
    for prompt in prompts:
        request = world.parse_caption(prompt)
        assert request.motion in world.MOTIONS, prompt
        assert all(world.held_out(o["colour"], o["shape"], request.background) for o in request.objects), prompt


def test_perfect_frames_score_one_everywhere():
    clips = [
        judge.judge_clip(clip_of(motion="left"), "a big red circle moving left on a white background"),
        judge.judge_clip(clip_of("black", (("square", "green", 8, 8), ("triangle", "white", 24, 8)), "down"),
                            "a green square and a white triangle moving down on a black background"),
    ]
    summary = evaluate.summarize(clips)
    assert summary == {"clips": 2, "background": 1.0, "objects": 1.0, "both": 1.0, "motion": 1.0, "motion_clips": 2,
                       "extra_objects": 0.0}
    assert all(evaluate.meets_targets(summary).values())


def test_wrong_background_scores_zero_background_and_zero_both():
    clip = judge.judge_clip(clip_of("white"), "a red circle moving left on a green background")
    assert (clip.background, clip.objects, clip.both, clip.motion) == (0.0, 1.0, 0.0, True)
    summary = evaluate.summarize([clip])
    assert evaluate.meets_targets(summary) == {"both": False, "background": False, "objects": True, "motion": True}


def test_both_counts_frames_where_background_and_objects_are_right_together():
    """Half the frames lack the object, the other half have the wrong background: each share 0.5, together 0."""
    right_object = clip_of("green")  # the red circle on green
    right_background = clip_of("white", objects=())  # white, no object
    frames = np.concatenate([right_object[:4], right_background[4:]])
    clip = judge.judge_clip(frames, "a red circle on a white background")
    assert (clip.background, clip.objects, clip.both) == (0.5, 0.5, 0.0)


def test_motion_accuracy_counts_only_clips_that_ask_a_motion():
    clips = [
        judge.judge_clip(clip_of(motion="left"), "a red circle moving left on a white background"),
        judge.judge_clip(clip_of(motion="left"), "a red circle moving up on a white background"),
        judge.judge_clip(clip_of(motion="left"), "a red circle on a white background"),  # asks none
    ]
    assert [c.motion for c in clips] == [True, False, None]
    summary = evaluate.summarize(clips)
    assert (summary["motion"], summary["motion_clips"], summary["both"]) == (0.5, 2, 1.0)
    assert evaluate.summarize(clips[2:])["motion"] is None and evaluate.meets_targets(evaluate.summarize(clips[2:]))["motion"] is None


def test_concept_clip_judges_the_concept_apart_from_the_composition():
    two_tone = clip_of("white", (("circle", "yellow", 8, 8), ("square", "red", 8, 24)), "right", lower="blue")
    prompt = "a <new1> circle and a red square moving right on a white background"
    perfect = judge.judge_concept_clip(two_tone, prompt)
    assert (perfect.concept, perfect.background, perfect.others, perfect.motion, perfect.composition,
            perfect.everything) == (1.0, 1.0, 1.0, True, 1.0, 1.0)

    # A plain yellow circle: the composition holds, the concept does not.
    plain = judge.judge_concept_clip(clip_of("white", (("circle", "yellow", 8, 8), ("square", "red", 8, 24)), "right"),
                                        prompt)
    assert (plain.concept, plain.composition, plain.everything) == (0.0, 1.0, 0.0)
    # The concept on the wrong background and without the square: the concept holds, the composition does not.
    alone = judge.judge_concept_clip(clip_of("black", (("circle", "yellow", 8, 16),), "right", lower="blue"), prompt)
    assert (alone.concept, alone.background, alone.others, alone.composition) == (1.0, 0.0, 0.0, 0.0)
    # A wrong motion zeroes composition and everything, whatever the frames show.
    wrong_way = judge.judge_concept_clip(two_tone, prompt.replace("right", "left"))
    assert (wrong_way.concept, wrong_way.motion, wrong_way.composition, wrong_way.everything) == (1.0, False, 0.0, 0.0)
    with pytest.raises(ValueError, match="no concept token"):
        judge.judge_concept_clip(two_tone, "a red square on a white background")


def test_temporal_metrics_need_no_weights():
    moving, still = evaluate.temporal_metrics(clip_of(motion="left")), evaluate.temporal_metrics(clip_of(motion="still"))
    assert set(moving) == set(evaluate.TEMPORAL_METRICS)
    assert still["temporal_flickering"] == 1.0 and still["motion_magnitude"] == pytest.approx(0.0, abs=1e-3)
    assert moving["temporal_flickering"] < 1.0 and moving["motion_magnitude"] > 0.1


def test_shapes_metric_scores_a_caption_and_skips_other_prompts():
    from cdvideo.metrics.shapes import shapes_caption_match

    assert "shapes" in OFFLINE_METRICS and get_metric("shapes") is shapes_caption_match
    frames = clip_of(motion="left")
    context = EvalContext()
    result = evaluate_video(Video(frames=frames, prompt="a red circle moving left on a white background"), ["shapes"],
                            context)["shapes"]
    assert isinstance(result, MetricResult)
    assert result.value == 1.0 and result.per_frame == [1.0] * world.NUM_FRAMES and result.details["motion"] is True
    wrong = evaluate_video(Video(frames=frames, prompt="a red circle moving left on a black background"), ["shapes"],
                           context)["shapes"]
    assert wrong.value == 0.0 and wrong.details["background"] == 0.0

    for prompt, reason in [("a dog running on the beach", "not a Shapes-world caption"), (None, "no prompt"),
                           ("a <new2> circle on a white background", "colours of <new1> only")]:
        skipped = evaluate_video(Video(frames=frames, prompt=prompt), ["shapes"], context)["shapes"]
        assert isinstance(skipped, Unavailable) and reason in skipped.reason, (prompt, skipped)
    big = evaluate_video(Video(frames=np.zeros((2, 64, 64, 3), np.uint8), prompt="a red circle on a white background"),
                         ["shapes"], context)["shapes"]
    assert isinstance(big, Unavailable) and "32x32" in big.reason


def test_render_and_judge_renders_the_world_size_once_per_item(tiny_renderer):
    """Plumbing on the tiny model (noise-like frames: only shapes, order and seeding are checked)."""
    items = [("a red circle on a white background", 3), ("a green square moving up on a black background", 4)]
    clips = evaluate.render_and_judge(items, tiny_renderer, steps=1, guidance_scale=1.0, batch_size=1,
                                      keep_frames=True)
    assert [(c.prompt, c.seed) for c in clips] == items
    assert all(c.frames.shape == (world.NUM_FRAMES, world.SIZE, world.SIZE, 3) for c in clips)
    again = evaluate.render_and_judge(items[:1], tiny_renderer, steps=1, guidance_scale=1.0, keep_frames=True)
    assert np.array_equal(again[0].frames, clips[0].frames)
    assert "frames" not in clips[0].to_dict() and clips[0].to_dict()["guidance_scale"] == 1.0
    with pytest.raises(ValueError, match="not a Shapes-world caption"):
        evaluate.render_and_judge([("a dog", 0)], tiny_renderer, steps=1)


def test_render_clips_applies_the_concept_for_its_renders_only(tiny_renderer):
    item = [("a <new1> circle on a white background", 5)]
    plain = [frames for _, frames in evaluate.render_clips(item, tiny_renderer, steps=1)]
    with_concept = [frames for _, frames in evaluate.render_clips(item, tiny_renderer, steps=1, concept=EXAMPLE_CONCEPT)]
    after = [frames for _, frames in evaluate.render_clips(item, tiny_renderer, steps=1)]
    assert not np.array_equal(plain[0], with_concept[0])
    assert np.array_equal(plain[0], after[0])
