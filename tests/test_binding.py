"""Token-bound concepts (cdvideo.binding): the change acts only at the concept's own token positions."""

import dataclasses

import numpy as np
import pytest
import torch

from cdvideo.binding import BoundAttnProcessor, TokenPositions, spatial_attn2_modules
from cdvideo.config import RenderSettings
from cdvideo.errors import ConfigError, InjectionError
from cdvideo.inject import ConceptInjector, concepts_applied, schedule_factors, strength_scheduled
from cdvideo.render import render_frames, render_frames_batch
from cdvideo.schedule import parse_schedule, step_factors
from conftest import make_concept
from test_inject import assert_same_state, settings, snapshot

BOUND = ("token", "token+class", "values", "locked", "locked+class", "region")


def processors(pipeline):
    return {name: module.processor for name, module in pipeline.unet.named_modules() if hasattr(module, "processor")}


@pytest.mark.parametrize("binding", BOUND)
def test_a_prompt_without_the_token_renders_the_base_model_bit_for_bit(tiny_pipeline, binding):
    before = render_frames(tiny_pipeline, settings("a dog running"), progress=False)
    with concepts_applied(tiny_pipeline, [(make_concept(tiny_pipeline), 1.0, "c")], binding=binding):
        after = render_frames(tiny_pipeline, settings("a dog running"), progress=False)
    assert np.array_equal(before, after)


@pytest.mark.parametrize("binding", BOUND)
def test_bound_concept_changes_prompts_with_its_token_and_comes_off_exactly(tiny_pipeline, binding):
    state, procs = snapshot(tiny_pipeline), processors(tiny_pipeline)
    token_only = make_concept(tiny_pipeline, with_deltas=False)
    with concepts_applied(tiny_pipeline, [(token_only, 1.0, "t")]):
        embedding_only = render_frames(tiny_pipeline, settings("a <new1> dog"), progress=False)
    with concepts_applied(tiny_pipeline, [(make_concept(tiny_pipeline), 1.0, "c")], binding=binding):
        bound = render_frames(tiny_pipeline, settings("a <new1> dog"), progress=False)
        assert any(isinstance(p, BoundAttnProcessor) for p in processors(tiny_pipeline).values())
    # the deltas act (beyond what the token embedding alone does)
    assert np.abs(bound.astype(int) - embedding_only.astype(int)).mean() > 0.5
    assert_same_state(tiny_pipeline, state)
    assert processors(tiny_pipeline) == procs  # the very same processor objects are back


def test_motion_modules_and_self_attention_keep_their_processors(tiny_pipeline):
    procs = processors(tiny_pipeline)
    with concepts_applied(tiny_pipeline, [(make_concept(tiny_pipeline), 1.0, "c")], binding="token"):
        changed = {n for n, p in processors(tiny_pipeline).items() if p is not procs[n]}
    assert changed == {f"{n}.processor".removesuffix(".processor") for n in spatial_attn2_modules(tiny_pipeline.unet)}
    assert not any("motion_modules" in n for n in changed)


def test_the_unconditional_branch_never_sees_a_delta(tiny_pipeline):
    """Record which rows of the encoder states each bound module changed: only the conditional ones."""
    seen = []
    original = BoundAttnProcessor.project

    def spying(self, attn, states):
        key, value = original(self, attn, states)
        base_k, base_v = attn.to_k(states), attn.to_v(states)
        seen.append(((key != base_k).flatten(1).any(1) | (value != base_v).flatten(1).any(1)).tolist())
        return key, value

    BoundAttnProcessor.project = spying
    try:
        with concepts_applied(tiny_pipeline, [(make_concept(tiny_pipeline), 1.0, "c")], binding="token"):
            render_frames(tiny_pipeline, settings("a <new1> dog"), progress=False)
    finally:
        BoundAttnProcessor.project = original
    frames = settings("x").num_frames
    assert seen and all(rows == [False] * frames + [True] * frames for rows in seen)  # (uncond, cond) x frames


@pytest.mark.parametrize("binding", ["token", "region"])
def test_two_concepts_each_act_only_at_their_own_token(tiny_pipeline, binding):
    first = make_concept(tiny_pipeline, seed=1, token="<new1>", class_word="dog")
    second = make_concept(tiny_pipeline, seed=2, token="<new2>", class_word="cat")
    prompt = "a <new1> dog and a <new2> cat"
    with concepts_applied(tiny_pipeline, [(first, 1.0, "a"), (second, 1.0, "b")], binding=binding):
        both = render_frames(tiny_pipeline, settings(prompt), progress=False)
    # The second concept's change off (its token still in): only the first's change may act.
    with concepts_applied(tiny_pipeline, [(first, 1.0, "a"), (second, 0.0, "b")], binding=binding):
        first_only = render_frames(tiny_pipeline, settings(prompt), progress=False)
    with concepts_applied(tiny_pipeline, [(first, 1.0, "a"), (second, 1.0, "b")], binding=binding):
        no_second_token = render_frames(tiny_pipeline, settings("a <new1> dog and a cat"), progress=False)
    with concepts_applied(tiny_pipeline, [(first, 1.0, "a")], binding=binding):
        alone = render_frames(tiny_pipeline, settings("a <new1> dog and a cat"), progress=False)
    assert not np.array_equal(both, first_only)
    # Without <new2> in the prompt, concept b changes nothing at all.
    assert np.array_equal(no_second_token, alone)


def test_region_binding_acts_where_the_class_word_is_attended(tiny_pipeline):
    """Each pixel's output lies between the base model's and the token-bound one's, in proportion to how much
    the base model attends the class word there (1 at the frame's peak); so a thing drawn elsewhere keeps the
    base model's output."""
    concept = make_concept(tiny_pipeline)
    name, attn = next(iter(spatial_attn2_modules(tiny_pipeline.unet).items()))
    with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")], binding="token"):  # (adds <new1> to the tokenizer)
        ids = tiny_pipeline.tokenizer(["a <new1> dog running"], padding="max_length", max_length=77,
                                      return_tensors="pt").input_ids
        states = tiny_pipeline.text_encoder(ids)[0]
        hidden = torch.randn(1, 64, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
        bound = attn(hidden, encoder_hidden_states=states)
        processor = attn.processor
        positions, change = processor.positions, processor.changes[0]
        base = BoundAttnProcessor(positions, [])(attn, hidden, encoder_hidden_states=states)
        change.binding = "region"
        region = attn(hidden, encoder_hidden_states=states)
        # The base model's attention to the class word ("dog", right after the token), per pixel.
        query = attn.to_q(hidden).view(1, 64, attn.heads, -1).transpose(1, 2)
        key = attn.to_k(states).view(1, 77, attn.heads, -1).transpose(1, 2)
        probs = (query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(-1).mean(1)  # (1, q, n)
        dog = positions.masks_for_states(states)[change.index, 1, 0]
        attended = probs[0][:, dog].sum(-1)
    # The output projection is linear, so each pixel's output is base + weight * (bound - base).
    weight = ((region - base) * (bound - base)).sum(-1) / ((bound - base) ** 2).sum(-1)
    assert torch.allclose(weight[0], attended / attended.max(), atol=1e-4)
    assert torch.allclose(region, base + weight[..., None] * (bound - base), atol=1e-5)


def test_positions_find_token_and_following_class_word(tiny_pipeline):
    tokenizer = tiny_pipeline.tokenizer
    tokenizer.add_tokens(["<zz9>"])
    try:
        positions = TokenPositions()
        positions.add_concept(tokenizer.convert_tokens_to_ids(["<zz9>"]), tokenizer.encode("dog", add_special_tokens=False))
        ids = tokenizer(["a <zz9> dog runs", "a dog"], padding="max_length", max_length=10, return_tensors="pt").input_ids
        masks = positions.masks_for_ids(ids)
        assert masks[0, 0, 0].nonzero().flatten().tolist() == [2]  # <bos> a <zz9>
        assert masks[0, 1, 0].nonzero().flatten().tolist() == [3]  # dog right after
        assert not masks[0, :, 1].any()
    finally:
        del tokenizer.added_tokens_encoder["<zz9>"]


def test_batched_renders_bind_per_prompt(tiny_pipeline):
    """A batch mixing prompts with and without the token equals the one-by-one renders."""
    requests = [dataclasses.replace(settings("a <new1> dog"), seed=3), dataclasses.replace(settings("a dog"), seed=4)]
    concept = make_concept(tiny_pipeline)
    with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")], binding="token"):
        batch = render_frames_batch(tiny_pipeline, requests, progress=False)
        single = [render_frames(tiny_pipeline, r, progress=False) for r in requests]
    base = render_frames(tiny_pipeline, requests[1], progress=False)
    for a, b in zip(batch, single):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.abs(batch[1].astype(int) - base.astype(int)).max() <= 1


def test_merged_is_what_it_was(tiny_pipeline):
    """binding="merged" is the injection as before: the weights themselves carry the change."""
    concept = make_concept(tiny_pipeline)
    with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")]) as default:
        assert default.applied[0].binding == "merged"  # a file without a recorded binding was trained merged
        frames_default = render_frames(tiny_pipeline, settings("a <new1> dog"), progress=False)
    with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")], binding="merged"):
        frames_merged = render_frames(tiny_pipeline, settings("a <new1> dog"), progress=False)
        assert not any(isinstance(p, BoundAttnProcessor) for p in processors(tiny_pipeline).values())
    assert np.array_equal(frames_default, frames_merged)


def test_a_concept_trained_bound_renders_bound_by_default(tiny_pipeline):
    concept = make_concept(tiny_pipeline)
    concept.training = {"binding": "token+class"}
    with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")]) as injector:
        assert injector.applied[0].binding == "token+class"


def test_changes_to_q_or_out_cannot_be_bound(tiny_pipeline):
    concept = make_concept(tiny_pipeline)
    name = next(iter(concept.deltas)).replace("to_k", "to_q")
    concept.deltas[name] = torch.zeros(tiny_pipeline.unet.get_parameter(name).shape)
    state, procs = snapshot(tiny_pipeline), processors(tiny_pipeline)
    with pytest.raises(InjectionError, match="merged"):
        with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")], binding="token"):
            pass
    assert_same_state(tiny_pipeline, state)
    assert processors(tiny_pipeline) == procs


# Strength schedules

def test_schedule_parsing_and_steps():
    assert parse_schedule("0:0, 0.2:0.4, 0.3:1") == [(0.0, 0.0), (0.2, 0.4), (0.3, 1.0)]
    assert step_factors(parse_schedule("0:0, 0.2:0.4, 0.3:1"), 10) == [0, 0, 0.4, 1, 1, 1, 1, 1, 1, 1]
    assert step_factors([(0.5, 0.0)], 4) == [1, 1, 0, 0]
    # concept_start S is "0:0, S:1", on the same step as before schedules existed
    assert schedule_factors(0.24, None, 25) == [0.0] * 6 + [1.0] * 19
    assert schedule_factors(0.0, None, 5) == [1.0] * 5
    for bad, words in [("0.2", "SHARE:STRENGTH"), ("0:1, 0:0.5", "rise"), ("1.0:1", "below 1"),
                       ("0:nan", "finite"), ("0:-1", "finite"), ("", "empty")]:
        with pytest.raises(ConfigError, match=words):
            parse_schedule(bad)


@pytest.mark.parametrize("binding", ["merged", "token"])
def test_schedule_sets_each_steps_strength_and_restores(tiny_pipeline, binding):
    concept = make_concept(tiny_pipeline)
    seen = []
    state = snapshot(tiny_pipeline)
    with concepts_applied(tiny_pipeline, [(concept, 0.5, "c")], binding=binding) as injector:
        factors = schedule_factors(0.0, "0:0, 0.5:0.4, 0.75:1", 4)
        with strength_scheduled(injector, factors) as callback:
            def spy(pipeline, step, timestep, kwargs):
                kwargs = callback(pipeline, step, timestep, kwargs)
                seen.append(injector.applied[0].effective_strength)  # in force for the next step
                return kwargs

            seen.append(injector.applied[0].effective_strength)
            render_frames(tiny_pipeline, dataclasses.replace(settings("a <new1> dog"), steps=4), progress=False,
                          callback=spy)
        assert injector.applied[0].effective_strength == 0.5
    assert seen[:4] == [0.0, 0.0, 0.2, 0.5]  # the strength in force at steps 0..3
    assert seen[4] == 0.0  # after the last step: the schedule's start, for a FreeInit pass
    assert_same_state(tiny_pipeline, state)


def test_render_settings_refuse_bad_binding_and_schedule(tiny_preset):
    from cdvideo.render import check_inputs, resolve_settings

    def check(**fields):
        check_inputs(resolve_settings(RenderSettings(prompt="a dog", model="tiny", **fields), tiny_preset), tiny_preset)

    with pytest.raises(ConfigError, match="unknown binding 'tokens'"):
        check(concept_binding="tokens")
    with pytest.raises(ConfigError, match="not both"):
        check(concept_start=0.2, concept_schedule="0:0, 0.2:1")
    with pytest.raises(ConfigError, match="concept_schedule"):
        check(concept_schedule="0:x")
    check(concept_binding="token", concept_schedule="0:0.5")


def test_sidecar_records_binding_and_schedule_and_from_repeats_them(tiny_renderer, tmp_path):
    import json

    from cdvideo.config import ConceptSpec
    from cdvideo.render import render_to_file

    request = RenderSettings(prompt="a <new1> dog running", model="tiny", seed=5, num_frames=4, height=32, width=32,
                             steps=4, concepts=[ConceptSpec("examples/tiny-dog.safetensors")],
                             concept_binding="token", concept_schedule="0:0, 0.5:1", device="cpu", dtype="float32")
    first = render_to_file(request, tmp_path / "a.mp4", renderer=tiny_renderer, progress=False)
    sidecar = json.loads(first.sidecar.read_text())
    assert sidecar["settings"]["concept_binding"] == "token"
    assert sidecar["settings"]["concept_schedule"] == "0:0, 0.5:1"
    assert sidecar["concepts"][0]["binding"] == "token"
    again = render_to_file(RenderSettings.from_dict(sidecar["settings"]), tmp_path / "b.mp4", renderer=tiny_renderer,
                           progress=False)
    assert np.array_equal(first.frames, again.frames)
    merged = render_to_file(dataclasses.replace(request, concept_binding="merged"), tmp_path / "c.mp4",
                            renderer=tiny_renderer, progress=False)
    assert not np.array_equal(first.frames, merged.frames)
    assert json.loads(merged.sidecar.read_text())["concepts"][0]["binding"] == "merged"


def test_bench_binding_times_every_binding_and_leaves_the_pipeline_as_it_was(tiny_pipeline):
    """scripts/bench_binding.py (issue 16's cost check) on the tiny model: each binding's UNet calls run, and the
    concept comes off after each, so the rounds that follow start from the base model."""
    from conftest import load_script

    bench = load_script("bench_binding")
    state, procs = snapshot(tiny_pipeline), processors(tiny_pipeline)
    concept = make_concept(tiny_pipeline)
    for binding in bench.BINDINGS:
        assert bench.time_calls(tiny_pipeline, concept, binding, 64, 2, 1, torch.Generator().manual_seed(0)) > 0
        assert_same_state(tiny_pipeline, state)
        assert processors(tiny_pipeline) == procs
    low, high = bench.bootstrap_interval([0.98, 1.01, 1.02, 1.03, 1.05])
    assert 0.98 <= low <= 1.02 <= high <= 1.05
