"""The Shapes world and its judge: the judge reads the generator's own clips back, captions parse, splits hold."""

from collections import Counter

import numpy as np
import pytest

from cdvideo.shapes import judge, world

SCENES = 300


def scene(seed: int, split: str = "any") -> world.Scene:
    return world.sample_scene(np.random.default_rng(seed), split=split)


def judged_as_generated(truth: world.Scene) -> bool:
    """Every frame: background, object count and each object's shape, colour and size; and each object's motion."""
    seen = judge.judge_video(world.draw_clip(truth))
    wanted = Counter((o.shape, o.colour, o.size) for o in truth.objects)
    for frame in seen:
        if frame.background != truth.background or Counter((o.shape, o.colour, o.size) for o in frame.objects) != wanted:
            return False
    return all(judge.motion_of(seen, o.shape, o.colour) == truth.motion for o in truth.objects)


def test_judge_recovers_the_generators_ground_truth():
    wrong = [seed for seed in range(SCENES) if not judged_as_generated(scene(seed))]
    # The world may place two objects edge to edge (about 1 scene in 750): the judge then sees one region.
    assert len(wrong) <= SCENES // 100, f"judge disagrees with the generator on seeds {wrong}"


def test_judge_sees_each_motion_and_both_object_counts():
    """The 300 scenes above cover what the judge must tell apart, so the agreement is not a lucky subset."""
    scenes = [scene(seed) for seed in range(SCENES)]
    assert {s.motion for s in scenes} == set(world.MOTIONS)
    assert {len(s.objects) for s in scenes} == {1, 2}
    assert {o.shape for s in scenes for o in s.objects} == set(world.SHAPES)
    assert {o.size for s in scenes for o in s.objects} == set(world.SIZES)


def test_caption_round_trips_through_parse_caption():
    for seed in range(500):
        truth = scene(seed)
        request = world.parse_caption(truth.caption())
        assert request.background == truth.background
        assert request.motion == (truth.motion if truth.say_motion else None)
        assert request.objects == [
            dict(shape=o.shape, colour=o.colour, size=o.size if truth.say_size else None) for o in truth.objects
        ]


def test_concept_caption_parses_with_its_token():
    truth = world.concept_scene(np.random.default_rng(0))
    request = world.parse_caption(truth.caption())
    assert request.objects == [dict(shape="circle", colour=world.CONCEPT["token"], size=None)]


def test_a_caption_outside_the_world_is_refused_naming_it():
    text = "a dog running on the beach"
    with pytest.raises(ValueError, match=f"not a Shapes-world caption: '{text}'"):
        world.parse_caption(text)


def held_out_objects(truth: world.Scene) -> list[bool]:
    return [world.held_out(o.colour, o.shape, truth.background) for o in truth.objects]


def test_train_split_never_shows_a_held_out_triple_and_test_split_only_those():
    train = [scene(seed, "train") for seed in range(SCENES)]
    test = [scene(seed, "test") for seed in range(SCENES)]
    assert not any(any(held_out_objects(s)) for s in train)
    assert all(all(held_out_objects(s)) for s in test)
    # Both splits are real: the test split has many distinct captions, and they never occur in training.
    assert len({s.caption() for s in test}) > 100
    assert not {s.caption() for s in test} & {s.caption() for s in train}


def test_concept_scene_is_judged_as_the_concept_and_a_plain_circle_is_not():
    colours = (world.CONCEPT["upper"], world.CONCEPT["lower"])
    wanted = dict(shape=world.CONCEPT["class_word"], colour=world.CONCEPT["token"], size=None)
    for seed in range(20):
        concept = world.concept_scene(np.random.default_rng(seed))
        seen = judge.judge_frame(world.draw_frame(concept, 0))
        assert len(seen.objects) == 1 and judge.object_matches(seen.objects[0], wanted, concept=colours)
        plain = world.Scene("black", [world.WorldObject("circle", colours[0], "big", concept.objects[0].x,
                                                        concept.objects[0].y)])
        seen = judge.judge_frame(world.draw_frame(plain, 0))
        assert len(seen.objects) == 1 and seen.objects[0].shape == "circle"
        assert not judge.object_matches(seen.objects[0], wanted, concept=colours)


def test_with_opposite_motion_reverses_only_the_motion_word():
    rng = np.random.default_rng(5)
    seen = 0
    for _ in range(200):
        scene = world.sample_scene(rng)
        flipped = world.with_opposite_motion(scene.caption())
        if not scene.say_motion or scene.motion == "still":
            assert flipped is None
            continue
        seen += 1
        request = world.parse_caption(flipped)
        assert request.motion == world.OPPOSITE_MOTION[scene.motion]
        assert request.objects == world.parse_caption(scene.caption()).objects
        for motion in world.MOTIONS:
            assert world.parse_caption(world.with_motion(scene.caption(), motion)).motion == motion
    assert seen > 50
    assert world.parse_caption(world.with_motion("a red circle staying still on a blue background", "up")).motion == "up"
