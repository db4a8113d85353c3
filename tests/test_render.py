"""Rendering on the tiny model: files a user can play, reproducible frames, sidecars."""

import json

import numpy as np
import pytest

from cdvideo.config import ConceptSpec, RenderSettings
from cdvideo.export import read_video
from cdvideo.render import render_to_file
from cdvideo.sidecar import read_sidecar
from conftest import EXAMPLE_CONCEPT

SMALL = dict(num_frames=8, height=48, width=64, steps=2, model="tiny")


def render(renderer, out, **overrides):
    return render_to_file(RenderSettings(**{"prompt": "a dog running on the beach", "seed": 1, **SMALL, **overrides}),
                          out, renderer=renderer, progress=False)


def test_mp4_has_asked_frames_size_and_fps(tiny_renderer, tmp_path):
    result = render(tiny_renderer, tmp_path / "dog.mp4", num_frames=12, fps=12)
    frames, fps = read_video(result.video)
    assert frames.shape == (12, 48, 64, 3)
    assert fps == 12
    assert result.sidecar == tmp_path / "dog.json"


@pytest.mark.parametrize("name,count", [("dog.webm", 8), ("dog.gif", 8), ("dog.webp", 8), ("dog", 8)])
def test_other_formats_read_back(tiny_renderer, tmp_path, name, count):
    result = render(tiny_renderer, tmp_path / name)
    frames, _ = read_video(result.video)
    assert frames.shape == (count, 48, 64, 3)
    if name == "dog":  # PNG frames are lossless: exactly the rendered frames
        assert np.array_equal(frames, result.frames)


def test_same_seed_same_frames_other_seed_other_frames(tiny_renderer, tmp_path):
    a = render(tiny_renderer, tmp_path / "a", seed=5).frames
    b = render(tiny_renderer, tmp_path / "b", seed=5).frames
    c = render(tiny_renderer, tmp_path / "c", seed=6).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sidecar_records_what_reproduces_the_render(tiny_renderer, tmp_path):
    concept = EXAMPLE_CONCEPT
    result = render(tiny_renderer, tmp_path / "dog", seed=None, prompt="a <new1> dog",
                    concepts=[ConceptSpec(concept, 0.7)])
    sidecar = read_sidecar(result.sidecar)
    assert isinstance(sidecar["settings"]["seed"], int)
    assert sidecar["concepts"][0]["strength"] == 0.7 and len(sidecar["concepts"][0]["sha256"]) == 64
    assert sidecar["model"]["preset"] == "tiny" and sidecar["device"] == "cpu"
    assert {"torch", "diffusers", "transformers"} <= set(sidecar["versions"])
    again = render_to_file(RenderSettings.from_dict(sidecar["settings"]), tmp_path / "again",
                           renderer=tiny_renderer, progress=False)
    assert np.array_equal(again.frames, result.frames)


def test_class_word_without_token_warns(tiny_renderer, tmp_path):
    with pytest.warns(UserWarning, match=r"mentions 'dog' but not the concept token <new1>"):
        render(tiny_renderer, tmp_path / "x", concepts=[ConceptSpec(EXAMPLE_CONCEPT)])


def test_concept_is_taken_off_after_the_render(tiny_renderer, tmp_path):
    plain = render(tiny_renderer, tmp_path / "plain").frames
    render(tiny_renderer, tmp_path / "dog", prompt="a <new1> dog", concepts=[ConceptSpec(EXAMPLE_CONCEPT)])
    assert np.array_equal(render(tiny_renderer, tmp_path / "plain2").frames, plain)


def test_scheduler_can_be_switched_per_render(tiny_renderer, tmp_path):
    ddim = render(tiny_renderer, tmp_path / "ddim").frames
    euler = render(tiny_renderer, tmp_path / "euler", scheduler="euler").frames
    assert not np.array_equal(ddim, euler)
    assert np.array_equal(render(tiny_renderer, tmp_path / "ddim2", scheduler="ddim").frames, ddim)


def test_example_concept_was_made_for_this_tiny_model(tiny_pipeline):
    from cdvideo.concept import fingerprint_unet, load_concept

    # Fails if the tiny model's weights drift (another torch RNG): rerun scripts/make_tiny_concept.py.
    assert load_concept(EXAMPLE_CONCEPT).base_fingerprint == fingerprint_unet(tiny_pipeline.unet)


def test_frames_folder_of_mixed_sizes_is_a_clear_error(tmp_path):
    from PIL import Image

    from cdvideo.errors import VideoIOError

    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "00000.png")
    Image.new("RGB", (48, 32)).save(folder / "00001.png")
    with pytest.raises(VideoIOError, match="different sizes"):
        read_video(folder)
