"""On CUDA: what a user with a GPU gets from cdvideo's defaults (run with `pytest -m gpu` where there is one).

The CPU suite never sees these paths: float16 by default, model CPU offload under --low-vram,
concepts applied to and taken off float16 weights. They run on the shipped Shapes model, whose
renders the pixel judge can score, so "works" means the frames show what the prompt asks.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cdvideo.config import RenderSettings
from cdvideo.models import load_preset
from cdvideo.render import Renderer, resolve_settings
from cdvideo.shapes.judge import judge_video, motion_of, score_video
from cdvideo.shapes.world import parse_caption
from test_shapes_regression import CASES

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shapes-twotone-circle.safetensors"


@pytest.fixture(scope="module")
def renderer():
    return Renderer(load_preset("shapes"), device="cuda")  # dtype "auto"


def settings_for(renderer, prompt, seed, **changes):
    settings = resolve_settings(RenderSettings(prompt=prompt, model="shapes", seed=seed), renderer.preset)
    return dataclasses.replace(settings, **changes)


def test_cuda_default_is_float16(renderer):
    assert renderer.dtype == torch.float16
    assert {p.dtype for p in renderer.pipeline.unet.parameters()} == {torch.float16}
    assert renderer.pipeline.unet.device.type == "cuda"


@pytest.mark.parametrize("prompt, seed", CASES)
def test_held_out_prompt_is_rendered_right_in_float16(renderer, prompt, seed):
    request = parse_caption(prompt)
    frames = renderer.render(settings_for(renderer, prompt, seed), progress=False)
    score = score_video(frames, prompt)
    seen = judge_video(frames)
    readable = [(f.background, [(o.colour, o.shape) for o in f.objects]) for f in seen]
    assert score.background >= 0.8 and score.objects >= 0.8, (score, readable)
    tracked = motion_of(seen, request.objects[0]["shape"], request.objects[0]["colour"])
    assert tracked == request.motion, (tracked, readable)


def test_float16_on_cuda_shows_what_float32_on_the_cpu_shows(renderer):
    """The same scene, frame by frame, and the same motion; not the same pixels: the two precisions'
    denoising paths drift apart, and on an H200 the object ended a few pixels elsewhere (mean
    difference 45.6/255, max 231, with identical judged scenes)."""
    cpu = Renderer(load_preset("shapes"), device="cpu", dtype="float32")
    prompt, seed = CASES[0]
    on_cpu = cpu.render(settings_for(cpu, prompt, seed), progress=False)
    on_cuda = renderer.render(settings_for(renderer, prompt, seed), progress=False)
    diff = np.abs(on_cpu.astype(int) - on_cuda.astype(int))
    print(f"cuda float16 vs cpu float32: mean {diff.mean():.3f}, max {diff.max()}/255")

    def scene(frames):
        return [(f.background, sorted((o.colour, o.shape) for o in f.objects)) for f in judge_video(frames)]

    def motion(frames):
        return motion_of(judge_video(frames), *(parse_caption(prompt).objects[0][k] for k in ("shape", "colour")))

    assert scene(on_cuda) == scene(on_cpu)
    assert motion(on_cuda) == motion(on_cpu) == parse_caption(prompt).motion


def test_low_vram_offloads_then_puts_everything_back(renderer):
    prompt, seed = CASES[1]
    plain = renderer.render(settings_for(renderer, prompt, seed), progress=False)
    torch.cuda.reset_peak_memory_stats()
    low = renderer.render(settings_for(renderer, prompt, seed, low_vram=True), progress=False)
    again = renderer.render(settings_for(renderer, prompt, seed), progress=False)
    assert int(np.abs(low.astype(int) - plain.astype(int)).max()) <= 1  # VAE slicing: 1/255 at most
    assert np.array_equal(again, plain)  # offload hooks removed, models back on the GPU
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(renderer.pipeline, name).device.type == "cuda", name


def test_example_concept_in_float16_shows_and_comes_off_bit_for_bit(renderer):
    from cdvideo.concept import load_concept
    from cdvideo.shapes.judge import judge_concept_clip

    before = {k: v.detach().clone() for k, v in renderer.pipeline.unet.state_dict().items()}
    concepts = [(load_concept(EXAMPLE), 1.0, str(EXAMPLE))]
    prompt = "a <new1> circle on a black background"
    shares = [judge_concept_clip(renderer.render(settings_for(renderer, prompt, seed), concepts, progress=False),
                                 prompt, seed).concept for seed in range(4)]
    print(f"concept share per seed on cuda float16: {shares}")
    assert np.mean(shares) >= 0.2, shares
    after = renderer.pipeline.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
