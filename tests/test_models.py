"""Presets and model loading: the tiny model is an ordinary diffusers directory."""

import numpy as np
import pytest
import torch

from cdvideo.config import RenderSettings
from cdvideo.errors import ConfigError, ModelNotAvailableError
from cdvideo.models import list_presets, load_preset
from cdvideo.render import render_frames
from cdvideo.models.tiny import tiny_model_dir
from conftest import plain_diffusers_frames

REQUEST = RenderSettings(prompt="a dog running", negative_prompt="bad quality", num_frames=4, height=32, width=32,
                         steps=2, guidance_scale=7.5, seed=11)


def test_real_preset_has_animatediff_settings():
    preset = load_preset("sd15-animatediff-v2")
    assert preset.base == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert preset.motion_adapter == "guoyww/animatediff-motion-adapter-v1-5-2"
    assert preset.scheduler == "ddim" and preset.scheduler_config == {
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear", "clip_sample": False,
        "timestep_spacing": "linspace", "steps_offset": 1}
    assert (preset.height, preset.width, preset.num_frames, preset.steps, preset.guidance_scale) == (512, 512, 16, 25, 7.5)
    assert {"tiny", "sd15-animatediff-v2"} <= set(list_presets())


def test_unknown_preset_key_is_named(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: x\nmotion_adapter: y\nstepz: 4\n")
    with pytest.raises(ConfigError, match="unknown key.*'stepz'"):
        load_preset(str(path))


def test_plain_diffusers_reads_the_tiny_directory_and_gives_identical_frames(tiny_preset, tiny_pipeline):
    """The tiny model is an ordinary diffusers layout; cdvideo's frames equal a plain diffusers script's."""
    expected = plain_diffusers_frames(tiny_model_dir(), REQUEST, tiny_preset.scheduler_config)
    ours = render_frames(tiny_pipeline, REQUEST, progress=False)
    assert np.array_equal(ours, expected)


def test_model_directory_works_as_model(tiny_pipeline):
    from cdvideo.models import load_pipeline

    preset = load_preset(str(tiny_model_dir()))
    assert preset.motion_adapter == str(tiny_model_dir())  # its own motion_adapter/ subfolder
    pipeline = load_pipeline(preset, device="cpu", dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    assert np.array_equal(render_frames(pipeline, REQUEST, progress=False),
                          render_frames(tiny_pipeline, REQUEST, progress=False))


def test_directory_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="not a diffusers Stable Diffusion directory"):
        load_preset(str(tmp_path))


def test_tiny_build_is_deterministic():
    from cdvideo.models.tiny import build_tiny_components

    first, second = build_tiny_components(), build_tiny_components()
    for name in ("unet", "motion_adapter", "vae", "text_encoder"):
        a, b = first[name].state_dict(), second[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_zero_snr_model_refuses_a_scheduler_without_the_rescale():
    from cdvideo.models import make_scheduler

    config = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", rescale_betas_zero_snr=True,
                  prediction_type="v_prediction", timestep_spacing="trailing")
    assert make_scheduler("euler", config, {}).config.rescale_betas_zero_snr
    with pytest.raises(ConfigError, match="'pndm' cannot sample this model.*ddim"):
        make_scheduler("pndm", config, {})
