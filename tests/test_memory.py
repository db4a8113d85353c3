"""Peak-memory estimate and --low-vram on the tiny model."""

import numpy as np
import pytest
import torch

from cdvideo import memory
from cdvideo.config import RenderSettings
from cdvideo.render import render_to_file

SMALL = dict(prompt="a dog running", seed=3, num_frames=8, height=48, width=64, steps=1, model="tiny")


@pytest.fixture(scope="module")
def counts():
    from cdvideo.models import load_preset, locate

    return memory.parameter_counts(locate(load_preset("tiny")))


def test_estimate_positive_grows_with_frames_and_size_low_vram_not_larger(counts):
    assert counts and all(n > 0 for n in counts.values())
    estimate = lambda h, w, f, low=False: memory.estimate_peak_bytes(counts, "cpu", torch.float32, h, w, f, low)
    base = estimate(64, 64, 8)
    weights = sum(counts.values()) * 4
    assert base > weights > 0
    assert estimate(64, 64, 16) > base
    assert estimate(128, 128, 8) > base
    for args in [(64, 64, 8), (512, 512, 16), (768, 768, 32)]:
        assert estimate(*args, low=True) <= estimate(*args)
    # On CUDA --low-vram also offloads: at most the largest model's weights.
    assert (memory.estimate_peak_bytes(counts, "cuda", torch.float16, 512, 512, 16, low_vram=True)
            < memory.estimate_peak_bytes(counts, "cuda", torch.float16, 512, 512, 16))


def test_render_that_does_not_fit_is_refused_before_loading_and_names_low_vram(counts, tmp_path, monkeypatch):
    import cdvideo.render

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cdvideo.render, "Renderer", no_loading)
    settings = RenderSettings(**SMALL)
    full = memory.estimate_peak_bytes(counts, "cpu", torch.float32, 48, 64, 8)
    low = memory.estimate_peak_bytes(counts, "cpu", torch.float32, 48, 64, 8, low_vram=True)
    assert low < full
    monkeypatch.setattr(memory, "available_bytes", lambda device: (low + full) // 2)
    with pytest.raises(memory.NotEnoughMemoryError) as error:
        render_to_file(settings, tmp_path / "a.mp4", progress=False)
    message = str(error.value)
    assert "\n" not in message and "add --low-vram" in message
    # Not even --low-vram fits: still refused up front, and the message says --low-vram is not enough.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)
    with pytest.raises(memory.NotEnoughMemoryError, match="even with --low-vram"):
        render_to_file(RenderSettings(**SMALL, low_vram=True), tmp_path / "b.mp4", progress=False)
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "b.mp4").exists()


def test_low_vram_same_frames_and_reverted(tiny_renderer):
    vae = tiny_renderer.pipeline.vae
    default = tiny_renderer.render(RenderSettings(**SMALL, negative_prompt="", guidance_scale=7.5, fps=8,
                                                  scheduler="ddim"), progress=False)
    low = tiny_renderer.render(RenderSettings(**SMALL, negative_prompt="", guidance_scale=7.5, fps=8,
                                              scheduler="ddim", low_vram=True), progress=False)
    assert np.abs(default.astype(int) - low.astype(int)).max() <= 1
    assert not vae.use_slicing and not vae.use_tiling


def test_low_vram_flag_in_render_and_batch():
    import argparse

    from cdvideo.cli.render import add_setting_flags

    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    assert parser.parse_args(["--low-vram"]).low_vram is True
    assert parser.parse_args([]).low_vram is None
