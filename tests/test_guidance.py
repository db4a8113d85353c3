"""Guidance rescale (cdvideo.guidance): the same numbers as diffusers' own, on the pipeline that lacks it."""

import json

import numpy as np
import pytest
import torch

from cdvideo.config import RenderSettings
from cdvideo.export import read_video
from cdvideo.guidance import guidance_rescale_applied
from test_cli import QUICK, run_cli


@pytest.fixture(scope="module")
def sd_pipeline():
    """The tiny model as diffusers' 2D StableDiffusionPipeline, which implements guidance_rescale itself."""
    from diffusers import StableDiffusionPipeline

    from cdvideo.models.tiny import ensure_tiny_model

    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny_model(), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_frames(pipe, guidance_rescale):
    return pipe("a dog running on the beach", negative_prompt="blurry", height=64, width=64, num_inference_steps=3,
                guidance_scale=6.0, guidance_rescale=guidance_rescale, generator=torch.Generator().manual_seed(0),
                output_type="np").images


def test_rescaling_the_unet_output_equals_diffusers_rescale_noise_cfg(sd_pipeline):
    reference = sd_frames(sd_pipeline, guidance_rescale=0.7)  # diffusers' rescale_noise_cfg inside the pipeline
    plain = sd_frames(sd_pipeline, guidance_rescale=0.0)
    with guidance_rescale_applied(sd_pipeline, RenderSettings(guidance_scale=6.0, guidance_rescale=0.7)):
        ours = sd_frames(sd_pipeline, guidance_rescale=0.0)
    assert np.abs(reference - plain).max() > 1e-3  # the rescale changes the picture
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert "forward" not in vars(sd_pipeline.unet)  # the wrapper is gone after the render


def test_render_flag_is_recorded_and_repeats(capsys, tmp_path):
    first, plain, again = tmp_path / "first", tmp_path / "plain", tmp_path / "again"
    args = [*QUICK, "--prompt", "a dog", "--seed", "3", "--guidance-scale", "6", "--format", "frames"]
    assert run_cli(capsys, "render", *args, "--guidance-rescale", "0.7", "--out", str(first))[0] == 0
    assert run_cli(capsys, "render", *args, "--out", str(plain))[0] == 0
    assert json.loads((tmp_path / "first.json").read_text())["settings"]["guidance_rescale"] == 0.7
    assert run_cli(capsys, "render", "--from", str(tmp_path / "first.json"), "--out", str(again), "--quiet")[0] == 0
    assert np.array_equal(read_video(first)[0], read_video(again)[0])
    assert not np.array_equal(read_video(first)[0], read_video(plain)[0])

