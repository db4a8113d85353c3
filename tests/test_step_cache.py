"""Step caching (cdvideo.step_cache, DeepCache): exact when off, close when on, gone after the render,
and composing with concepts (merged and token-bound), FreeNoise windows and FreeInit."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from cdvideo.config import ConceptSpec, RenderSettings
from cdvideo.errors import ConfigError
from cdvideo.render import check_inputs, render_to_file, resolve_settings
from cdvideo.step_cache import (DEFAULT_INTERVAL, StepCache, find_cut, shallow_forward, skip_count,
                                step_cache_applied)
from conftest import EXAMPLE_CONCEPT, make_concept
from test_shapes_regression import CASES as SHAPES_CASES  # (prompt, seed), right with full compute

SMALL = dict(num_frames=8, height=32, width=32, steps=6, model="tiny", device="cpu", dtype="float32")


def settings_for(renderer, **fields):
    return resolve_settings(RenderSettings(**{"prompt": "a dog running on the beach", "seed": 3, **SMALL, **fields}),
                            renderer.preset)


def unet_state(unet):
    """Everything a render could leave behind on the UNet: weights, patched forward, hooks, processors."""
    return dict(
        weights={k: v.detach().clone() for k, v in unet.state_dict().items()},
        forward="forward" in vars(unet),
        hooks=sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules()),
        processors=dict(unet.attn_processors),
        modules=[type(m) for m in unet.modules()],
    )


def assert_unet_restored(unet, before, same_processors=True):
    """`same_processors`: the very objects (False: of the same types, as FreeNoise rebuilds the motion blocks)."""
    after = unet_state(unet)
    assert after["forward"] == before["forward"] and after["hooks"] == before["hooks"]
    assert after["modules"] == before["modules"]
    assert after["processors"].keys() == before["processors"].keys()
    if same_processors:
        assert all(after["processors"][k] is v for k, v in before["processors"].items())
    assert all(type(after["processors"][k]) is type(v) for k, v in before["processors"].items())
    assert after["weights"].keys() == before["weights"].keys()
    assert all(torch.equal(after["weights"][k], v) for k, v in before["weights"].items())


def mean_abs(a, b):
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.parametrize("interval", [0, 1])
def test_off_or_interval_one_is_the_plain_render(tiny_renderer, interval):
    plain = tiny_renderer.render(settings_for(tiny_renderer), progress=False)
    cached = tiny_renderer.render(settings_for(tiny_renderer, step_cache=interval, step_cache_branch=2), progress=False)
    assert np.array_equal(plain, cached)


def test_cached_step_of_every_branch_is_full_compute_on_the_same_inputs(tiny_pipeline):
    """A cached step fed the deep feature of a full step on the same inputs gives that step's output: the
    shallow branch is UNetMotionModel.forward's own computation, cut at the branch."""
    unet = tiny_pipeline.unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 4, 8, 8, generator=generator)  # (b, c, f, h, w)
    text = torch.randn(2 * 4, 7, unet.config.cross_attention_dim, generator=generator)  # per frame, as the pipeline gives it
    t = torch.tensor(500)
    with torch.no_grad():
        for branch in range(skip_count(unet)):
            cache = StepCache(unet, unet.forward, interval=2, cut=find_cut(unet, branch))
            full = cache(sample, t, encoder_hidden_states=text).sample
            cached = cache(sample, t, encoder_hidden_states=text).sample  # second call of the pass: cached
            assert (cache.full_steps, cache.cached_steps) == (1, 1)
            direct = shallow_forward(unet, sample, t, text, return_dict=False, deep=cache.deep, cut=cache.cut)[0]
            torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(direct, full, rtol=1e-4, atol=1e-5)


def test_cached_steps_change_the_frames_a_little(tiny_renderer):
    plain = tiny_renderer.render(settings_for(tiny_renderer), progress=False)
    differences = []
    for branch in range(skip_count(tiny_renderer.pipeline.unet)):
        frames = tiny_renderer.render(settings_for(tiny_renderer, step_cache=DEFAULT_INTERVAL, step_cache_branch=branch),
                                      progress=False)
        assert not np.array_equal(frames, plain)
        differences.append(mean_abs(frames, plain))
    # Close (the tiny random model's frames span 0..255), and closer the more of the UNet a cached step recomputes.
    assert max(differences) < 4, differences
    assert differences[-1] < differences[0], differences


def test_full_steps_every_interval_and_at_each_freeinit_pass(tiny_renderer):
    from cdvideo.long_video import long_video_applied
    from cdvideo.render import render_frames

    pipeline = tiny_renderer.pipeline
    for free_init, full in ((0, 2), (2, 4)):  # 6 steps at interval 3: steps 0 and 3 in full, in each pass
        settings = settings_for(tiny_renderer, step_cache=3, free_init=free_init)
        with long_video_applied(pipeline, settings), step_cache_applied(pipeline, settings) as cache:
            render_frames(pipeline, settings, progress=False)
        assert (cache.full_steps, cache.cached_steps) == (full, 6 * max(free_init, 1) - full)


def test_the_unet_is_as_before_after_the_render(tiny_renderer):
    unet = tiny_renderer.pipeline.unet
    before = unet_state(unet)
    plain = tiny_renderer.render(settings_for(tiny_renderer), progress=False)
    tiny_renderer.render(settings_for(tiny_renderer, step_cache=2), progress=False)
    assert_unet_restored(unet, before)
    assert np.array_equal(tiny_renderer.render(settings_for(tiny_renderer), progress=False), plain)


def test_taken_off_when_the_render_fails(tiny_renderer, monkeypatch):
    unet = tiny_renderer.pipeline.unet
    before = unet_state(unet)
    settings = settings_for(tiny_renderer, step_cache=2)
    with pytest.raises(RuntimeError, match="decoder broke"):
        with step_cache_applied(tiny_renderer.pipeline, settings):
            raise RuntimeError("decoder broke")
    assert_unet_restored(unet, before)


@pytest.mark.parametrize("binding", ["merged", "token"])
def test_composes_with_a_concept(tiny_renderer, binding):
    """The concept's change (merged weights or token-bound processors on attn2) is in the cached steps too,
    and is the same after the render as before it."""
    unet = tiny_renderer.pipeline.unet
    concepts = [(make_concept(tiny_renderer.pipeline, seed=4, scale=2.0), 1.0, "test")]
    fields = dict(prompt="a <new1> dog running", concept_binding=binding)
    plain = tiny_renderer.render(settings_for(tiny_renderer), progress=False)
    with_concept = tiny_renderer.render(settings_for(tiny_renderer, **fields), concepts, progress=False)
    before = unet_state(unet)
    exact = tiny_renderer.render(settings_for(tiny_renderer, step_cache=1, **fields), concepts, progress=False)
    cached = tiny_renderer.render(settings_for(tiny_renderer, step_cache=DEFAULT_INTERVAL, **fields), concepts,
                                  progress=False)
    assert np.array_equal(exact, with_concept)
    # Closer to the concept's render than to the plain one: the concept acts on cached steps as well.
    assert mean_abs(cached, with_concept) < 4 and mean_abs(cached, with_concept) < mean_abs(cached, plain)
    assert_unet_restored(unet, before)
    assert np.array_equal(tiny_renderer.render(settings_for(tiny_renderer, **fields), concepts, progress=False),
                          with_concept)


def test_composes_with_freenoise_windows(tiny_renderer):
    """Windows of 4 frames every 2 (FreeNoise's motion blocks and split inference wrap the layers a cached step calls)."""
    unet = tiny_renderer.pipeline.unet
    before = unet_state(unet)
    windows = dict(num_frames=12, context_length=4, context_stride=2)
    long = tiny_renderer.render(settings_for(tiny_renderer, **windows), progress=False)
    exact = tiny_renderer.render(settings_for(tiny_renderer, step_cache=1, **windows), progress=False)
    cached = tiny_renderer.render(settings_for(tiny_renderer, step_cache=DEFAULT_INTERVAL, **windows), progress=False)
    assert np.array_equal(exact, long)
    assert cached.shape == long.shape and not np.array_equal(cached, long) and mean_abs(cached, long) < 4
    assert_unet_restored(unet, before, same_processors=False)
    assert np.array_equal(tiny_renderer.render(settings_for(tiny_renderer, **windows), progress=False), long)


def test_composes_with_guidance_rescale_and_batched_calls(tiny_renderer):
    """Guidance rescale wraps the cached forward (it must see cached steps' output too); a batched call
    caches per call, so each clip is its one-by-one render."""
    fields = dict(step_cache=DEFAULT_INTERVAL, guidance_rescale=0.7)
    batch = [settings_for(tiny_renderer, seed=seed, **fields) for seed in (1, 2)]
    together = tiny_renderer.render_batch(batch, progress=False)
    for settings, frames in zip(batch, together):
        alone = tiny_renderer.render(settings, progress=False)
        assert mean_abs(frames, alone) < 0.5
    rescaled_off = tiny_renderer.render(settings_for(tiny_renderer, seed=1, step_cache=DEFAULT_INTERVAL), progress=False)
    assert not np.array_equal(rescaled_off, together[0])


@pytest.mark.parametrize("fields, message", [
    (dict(step_cache=-1), "step_cache must be an interval"),
    (dict(step_cache_branch=-2), "step_cache_branch must be a skip-connection index"),
])
def test_bad_settings_are_refused_before_loading(tiny_preset, fields, message):
    with pytest.raises(ConfigError, match=message):
        check_inputs(resolve_settings(RenderSettings(prompt="a dog", model="tiny", **fields), tiny_preset), tiny_preset)


def test_a_branch_the_model_lacks_is_one_line(tiny_renderer):
    count = skip_count(tiny_renderer.pipeline.unet)
    with pytest.raises(ConfigError, match=f"between 0 and {count - 1}"):
        tiny_renderer.render(settings_for(tiny_renderer, step_cache=2, step_cache_branch=count), progress=False)
    assert "forward" not in vars(tiny_renderer.pipeline.unet)


def test_flag_sidecar_and_batch_field(tiny_renderer, tmp_path):
    from cdvideo.batch import plan_batch
    from cdvideo.cli import build_parser

    args = build_parser().parse_args(["render", "--prompt", "a dog", "--step-cache", "3", "--step-cache-branch", "1"])
    assert (args.step_cache, args.step_cache_branch) == (3, 1)
    request = RenderSettings(prompt="a dog running", seed=2, step_cache=3, step_cache_branch=1, **SMALL)
    result = render_to_file(request, tmp_path / "a", renderer=tiny_renderer, progress=False)
    sidecar = json.loads(result.sidecar.read_text())
    assert (sidecar["settings"]["step_cache"], sidecar["settings"]["step_cache_branch"]) == (3, 1)
    again = render_to_file(RenderSettings.from_dict(sidecar["settings"]), tmp_path / "b", renderer=tiny_renderer,
                           progress=False)
    assert np.array_equal(again.frames, result.frames)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a dog", "model": "tiny", "step_cache": 2}) + "\n"
                       + json.dumps({"prompt": "a cat", "model": "tiny", "step_cache": -1}) + "\n")
    with pytest.raises(ConfigError, match="line 2: step_cache must be an interval"):
        plan_batch(prompts)
    prompts.write_text(json.dumps({"prompt": "a dog", "model": "tiny", "step_cache": 2}) + "\n")
    assert [item.settings.step_cache for item in plan_batch(prompts)] == [2]
    prompts.write_text(json.dumps({"prompt": "a dog", "model": "tiny", "step_cache": "x"}) + "\n")
    with pytest.raises(ConfigError, match="line 1: field 'step_cache': expected an integer"):
        plan_batch(prompts)


def test_example_concept_file_renders_with_caching(tiny_renderer, tmp_path):
    request = RenderSettings(prompt="a <new1> dog running", seed=2, step_cache=DEFAULT_INTERVAL,
                             concepts=[ConceptSpec(EXAMPLE_CONCEPT)], concept_binding="token", **SMALL)
    result = render_to_file(request, tmp_path / "dog", renderer=tiny_renderer, progress=False)
    assert result.frames.shape == (8, 32, 32, 3)


@pytest.fixture(scope="module")
def shapes_renderer():
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer

    return Renderer(load_preset("shapes"), device="cpu", dtype="float32")


@pytest.mark.parametrize("prompt, seed", SHAPES_CASES)
def test_shapes_held_out_prompt_is_still_rendered_right_with_caching(shapes_renderer, prompt, seed):
    """tests/test_shapes_regression.py's fixed-seed cases (right with full compute) at the default interval and
    branch 0, judged the same way: the asked background and object in >= 80 % of frames, moving the asked way.
    All six were right when step caching was made (one blue triangle: objects 0.88 where full compute has 1.0)."""
    from cdvideo.shapes.judge import judge_video, motion_of, score_video
    from cdvideo.shapes.world import parse_caption

    request = parse_caption(prompt)
    settings = resolve_settings(RenderSettings(prompt=prompt, model="shapes", seed=seed, step_cache=DEFAULT_INTERVAL),
                                shapes_renderer.preset)
    frames = shapes_renderer.render(settings, progress=False)
    score = score_video(frames, prompt)
    seen = [(f.background, [(o.colour, o.shape) for o in f.objects]) for f in judge_video(frames)]
    assert score.background >= 0.8 and score.objects >= 0.8, (score, seen)
    tracked = motion_of(judge_video(frames), request.objects[0]["shape"], request.objects[0]["colour"])
    assert tracked == request.motion, (tracked, seen)


def test_bench_fast_reads_cache_settings_and_measures_psnr():
    import argparse

    from conftest import load_script

    bench = load_script("bench_fast")
    assert bench.parse_cache("3:2") == (3, 2) and bench.parse_cache("4") == (4, 0)
    with pytest.raises(argparse.ArgumentTypeError, match="INTERVAL:BRANCH"):
        bench.parse_cache("three")
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    noisy = frames.copy()
    noisy[1] = 255  # frame 1 as far off as uint8 goes: 0 dB
    psnr = bench.psnr_per_frame(noisy, frames)
    assert np.isinf(psnr[0]) and psnr[1] == pytest.approx(0.0)
