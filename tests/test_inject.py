"""Injection into the built motion UNet: effects, exactness, reversibility, clear errors."""

import dataclasses

import numpy as np
import pytest
import torch

from cdvideo.config import RenderSettings
from cdvideo.errors import InjectionError
from cdvideo.inject import ConceptInjector, concepts_applied
from cdvideo.render import render_frames
from conftest import kv_params, make_concept


def settings(prompt, seed=0):
    return RenderSettings(prompt=prompt, negative_prompt="", num_frames=4, height=32, width=32, steps=2,
                          guidance_scale=7.5, seed=seed)


def snapshot(pipeline):
    return (
        {k: v.clone() for k, v in pipeline.unet.state_dict().items()},
        {k: v.clone() for k, v in pipeline.text_encoder.state_dict().items()},
        len(pipeline.tokenizer),
    )


def assert_same_state(pipeline, state):
    unet, text, vocab = state
    now_unet, now_text = pipeline.unet.state_dict(), pipeline.text_encoder.state_dict()
    assert now_unet.keys() == unet.keys() and now_text.keys() == text.keys()
    changed = [k for k in unet if not torch.equal(now_unet[k], unet[k])]
    changed += [k for k in text if not torch.equal(now_text[k], text[k])]
    assert changed == []
    assert len(pipeline.tokenizer) == vocab


def test_concept_changes_frames_of_prompts_with_its_token(tiny_pipeline):
    plain = render_frames(tiny_pipeline, settings("a <new1> dog"), progress=False)
    with concepts_applied(tiny_pipeline, [(make_concept(tiny_pipeline), 1.0, "c")]):
        personal = render_frames(tiny_pipeline, settings("a <new1> dog"), progress=False)
    assert np.abs(plain.astype(int) - personal.astype(int)).mean() > 1


def test_token_only_concept_leaves_other_prompts_bit_identical(tiny_pipeline):
    before = render_frames(tiny_pipeline, settings("a dog running"), progress=False)
    concept = make_concept(tiny_pipeline, with_deltas=False)
    with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")]):
        unrelated = render_frames(tiny_pipeline, settings("a dog running"), progress=False)
        with_token = render_frames(tiny_pipeline, settings("a <new1> dog running"), progress=False)
    assert np.array_equal(before, unrelated)
    assert not np.array_equal(before, with_token)


def test_key_value_changes_affect_every_prompt(tiny_pipeline):
    # As in Custom Diffusion: the k/v deltas act on all text, not only the token.
    before = render_frames(tiny_pipeline, settings("a dog running"), progress=False)
    with concepts_applied(tiny_pipeline, [(make_concept(tiny_pipeline), 1.0, "c")]):
        after = render_frames(tiny_pipeline, settings("a dog running"), progress=False)
    assert not np.array_equal(before, after)


def test_strength_zero_leaves_unet_bit_identical(tiny_pipeline):
    unet_before = {k: v.clone() for k, v in tiny_pipeline.unet.state_dict().items()}
    with concepts_applied(tiny_pipeline, [(make_concept(tiny_pipeline), 0.0, "c")]):
        now = tiny_pipeline.unet.state_dict()
        assert all(torch.equal(now[k], unet_before[k]) for k in unet_before)


def test_strength_scales_the_deltas(tiny_pipeline):
    concept = make_concept(tiny_pipeline)
    name = next(iter(concept.deltas))
    base = dict(tiny_pipeline.unet.named_parameters())[name].detach().clone()
    with concepts_applied(tiny_pipeline, [(concept, 0.5, "c")]):
        merged = dict(tiny_pipeline.unet.named_parameters())[name].detach()
        torch.testing.assert_close(merged, base + 0.5 * concept.deltas[name], rtol=0, atol=1e-6)


def test_removing_concepts_restores_every_weight_bit_for_bit(tiny_pipeline):
    state = snapshot(tiny_pipeline)
    concept_a = make_concept(tiny_pipeline, seed=1)
    concept_b = make_concept(tiny_pipeline, seed=2, token="<new2>", vectors=3)
    injector = ConceptInjector(tiny_pipeline)
    first = injector.apply(concept_a, 0.8, "a")
    second = injector.apply(concept_b, 1.0, "b")
    assert len(tiny_pipeline.tokenizer) == state[2] + 4  # <new1>, <new2>, <new2>_1, <new2>_2
    injector.remove(first)  # out of order: the remaining concept stays applied
    only_second = {k: v.clone() for k, v in tiny_pipeline.unet.state_dict().items()}
    injector.remove(second)
    assert_same_state(tiny_pipeline, state)
    # Applying just the second concept gives exactly the weights left after removing the first.
    with concepts_applied(tiny_pipeline, [(concept_b, 1.0, "b")]):
        now = tiny_pipeline.unet.state_dict()
        assert all(torch.equal(now[k], only_second[k]) for k in now)
    assert_same_state(tiny_pipeline, state)


def test_motion_modules_never_change(tiny_pipeline):
    motion = {k: v.clone() for k, v in tiny_pipeline.unet.state_dict().items() if "motion_modules" in k}
    assert motion, "the tiny UNet should have motion modules"
    with concepts_applied(tiny_pipeline, [(make_concept(tiny_pipeline), 1.0, "c")]):
        now = tiny_pipeline.unet.state_dict()
        assert all(torch.equal(now[k], motion[k]) for k in motion)
        changed = {k for k, v in now.items() if k in kv_params(tiny_pipeline.unet)}
        assert changed and not any("motion_modules" in k for k in changed)


def test_unmatched_module_names_are_listed(tiny_pipeline):
    concept = make_concept(tiny_pipeline)
    missing = "down_blocks.3.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    concept.deltas[missing] = torch.zeros(4, 4)
    state = snapshot(tiny_pipeline)
    with pytest.raises(InjectionError, match=r"down_blocks\.3\.attentions\.0"):
        ConceptInjector(tiny_pipeline).apply(concept, 1.0, "bad.safetensors")
    assert_same_state(tiny_pipeline, state)


def test_wrong_base_names_module_and_both_shapes(tiny_pipeline):
    concept = make_concept(tiny_pipeline)
    name = next(iter(concept.deltas))
    concept.deltas[name] = torch.zeros(320, 768)
    with pytest.raises(InjectionError, match=r"\(320, 768\).*different base model") as info:
        ConceptInjector(tiny_pipeline).apply(concept, 1.0, "sd15.safetensors")
    assert name in str(info.value) and "(32, 32)" in str(info.value)


def test_token_already_in_vocabulary_is_refused(tiny_pipeline):
    concept = make_concept(tiny_pipeline, token="dog</w>")
    with pytest.raises(InjectionError, match="already in the tokenizer"):
        ConceptInjector(tiny_pipeline).apply(concept, 1.0, "c")


def test_wrong_embedding_size_is_refused(tiny_pipeline):
    concept = make_concept(tiny_pipeline, with_deltas=False)
    concept.tokens["<new1>"] = torch.zeros(1, 768)
    with pytest.raises(InjectionError, match="embedding size 768"):
        ConceptInjector(tiny_pipeline).apply(concept, 1.0, "c")


def test_fingerprint_mismatch_warns(tiny_pipeline):
    concept = make_concept(tiny_pipeline)
    concept.base_fingerprint = "ffffffffffffffff"
    with pytest.warns(UserWarning, match="different checkpoint"):
        with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")]):
            pass


def test_same_frames_as_diffusers_custom_diffusion_processors(tiny_pipeline):
    """Reference path: diffusers' own CustomDiffusionAttnProcessor2_0 carrying the trained weights."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    from cdvideo.concept import Concept

    generator = torch.Generator().manual_seed(7)
    unet = tiny_pipeline.unet
    base = {name: p.detach().clone() for name, p in kv_params(unet).items()}
    # "Trained" weights, as a Custom Diffusion run would leave them.
    trained = {name: w + 0.5 * w.std() * torch.randn(w.shape, generator=generator) for name, w in base.items()}
    request = settings("a dog wearing headphones", seed=3)

    original_processors = unet.attn_processors
    processors = dict(original_processors)
    modules = dict(unet.named_modules())
    for key in original_processors:
        module_path = key.removesuffix(".processor")
        if f"{module_path}.to_k.weight" not in trained:
            continue  # self-attention and motion-module attention keep their processors
        attention = modules[module_path]
        processor = CustomDiffusionAttnProcessor2_0(
            train_kv=True, train_q_out=False,
            hidden_size=attention.to_k.out_features, cross_attention_dim=attention.to_k.in_features,
        )
        with torch.no_grad():
            processor.to_k_custom_diffusion.weight.copy_(trained[f"{module_path}.to_k.weight"])
            processor.to_v_custom_diffusion.weight.copy_(trained[f"{module_path}.to_v.weight"])
        processors[key] = processor
    assert sum(isinstance(p, CustomDiffusionAttnProcessor2_0) for p in processors.values()) == len(trained) // 2
    unet.set_attn_processor(processors)
    try:
        reference = render_frames(tiny_pipeline, request, progress=False)
    finally:
        unet.set_attn_processor(original_processors)

    concept = Concept(deltas={name: trained[name] - base[name] for name in base})
    with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")]):
        ours = render_frames(tiny_pipeline, request, progress=False)
    largest = np.abs(reference.astype(int) - ours.astype(int)).max()
    print(f"largest pixel difference vs diffusers' Custom Diffusion processors: {largest}/255")
    assert largest <= 1


def test_concept_start_keeps_key_value_changes_off_for_the_first_steps(tiny_renderer):
    """--concept-start 0.5 with 4 steps: the UNet sees the base key/value weights in its first 2 calls
    (CFG-batched: one call per step) and the concept's in the last 2; every weight is back afterwards."""
    pipeline = tiny_renderer.pipeline
    state = snapshot(pipeline)
    concept = make_concept(pipeline, seed=3)
    name = next(iter(concept.deltas))
    base = dict(pipeline.unet.named_parameters())[name].detach().clone()
    seen = []
    hook = pipeline.unet.register_forward_pre_hook(
        lambda module, args: seen.append(not torch.equal(dict(module.named_parameters())[name], base)))
    try:
        request = RenderSettings(prompt="a <new1> dog", negative_prompt="", num_frames=4, height=32, width=32,
                                 steps=4, guidance_scale=7.5, seed=0, fps=8, scheduler="ddim", concept_start=0.5)
        delayed = tiny_renderer.render(request, [(concept, 1.0, "c")], progress=False)
        assert seen == [False, False, True, True]
        seen.clear()
        at_once = tiny_renderer.render(dataclasses.replace(request, concept_start=0.0), [(concept, 1.0, "c")],
                                       progress=False)
        assert seen == [True] * 4
        seen.clear()
        tiny_renderer.render(dataclasses.replace(request, free_init=2), [(concept, 1.0, "c")], progress=False)
        assert seen == [False, False, True, True] * 2  # each FreeInit pass starts without them again
    finally:
        hook.remove()
    assert not np.array_equal(delayed, at_once)
    assert_same_state(pipeline, state)
