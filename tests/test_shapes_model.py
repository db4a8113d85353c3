"""The shipped Shapes model (cdvideo/shapes/model/) as `--model shapes`: same presets, loading and rendering as SD 1.5."""

import json

import numpy as np
import pytest

from cdvideo.cli import main
from cdvideo.concept import save_concept
from cdvideo.config import RenderSettings
from cdvideo.errors import ConfigError, ModelNotAvailableError
from cdvideo.export import read_video
from cdvideo.models import check_available, load_preset, locate, missing_weights, resolve_source, vae_scale_factor
from cdvideo.render import Renderer, check_inputs, resolve_settings
from cdvideo.shapes import model as shapes_model
from conftest import load_script, make_concept, plain_diffusers_frames

PROMPT = "a red circle moving left on a blue background"
QUICK = ["--model", "shapes", "--steps", "2", "--seed", "5", "--quiet"]


@pytest.fixture(scope="module")
def shapes_preset():
    return load_preset("shapes")


@pytest.fixture(scope="module")
def shapes_renderer(shapes_preset):
    """The shipped model loaded the way `cdvideo render` loads any model (offline: see conftest)."""
    return Renderer(shapes_preset, device="cpu", dtype="float32")


def settings(preset, **fields) -> RenderSettings:
    resolved = resolve_settings(RenderSettings(**{"prompt": PROMPT, "model": "shapes", "steps": 2, "seed": 11, **fields}),
                                preset)
    check_inputs(resolved, preset)
    return resolved


def test_preset_matches_the_model_it_was_trained_as(shapes_preset):
    assert (shapes_preset.base, shapes_preset.motion_adapter) == ("builtin:shapes", "builtin:shapes")
    trained = {**shapes_model.SCHEDULER_CONFIG, **shapes_model.ZERO_SNR}
    sampling = {k: v for k, v in trained.items() if k != "num_train_timesteps"}
    assert shapes_preset.scheduler == "ddim" and shapes_preset.scheduler_config == sampling
    assert (shapes_preset.height, shapes_preset.width, shapes_preset.num_frames, shapes_preset.max_frames) == (32, 32, 8, 32)
    assert (shapes_preset.steps, shapes_preset.guidance_scale, shapes_preset.fps, shapes_preset.negative_prompt) == \
        (25, 2.0, 8, "")
    assert missing_weights(shapes_preset) == []
    # The shipped directory carries the same render defaults (what `train_shapes.py export` writes).
    where = ("base", "motion_adapter", "name", "description", "scheduler_config")
    render_defaults = lambda preset: {k: v for k, v in preset.to_dict().items() if k not in where}  # noqa: E731
    assert render_defaults(load_preset(str(shapes_model.MODEL_DIR))) == render_defaults(shapes_preset)


def test_shipped_weights_are_small():
    weights = list(shapes_model.MODEL_DIR.rglob("*.safetensors"))
    assert len(weights) == 4  # unet, vae, text encoder, motion adapter
    total = sum(p.stat().st_size for p in shapes_model.MODEL_DIR.rglob("*") if p.is_file())
    assert total <= 30e6, f"{total / 1e6:.1f} MB ship inside the package"


def test_renders_offline_through_the_renderer(shapes_preset, shapes_renderer):
    request = settings(shapes_preset)
    assert (request.num_frames, request.height, request.width) == (8, 32, 32)  # the preset's defaults
    pipeline = shapes_renderer.pipeline
    assert pipeline.tokenizer.model_max_length == shapes_model.MAX_TOKENS == 24
    assert pipeline.vae_scale_factor == 4
    frames = shapes_renderer.render(request, progress=False)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, shapes_renderer.render(request, progress=False))  # same seed, same frames


def test_plain_diffusers_reads_the_shipped_directory_and_gives_identical_frames(shapes_preset, shapes_renderer):
    request = settings(shapes_preset)
    expected = plain_diffusers_frames(shapes_model.MODEL_DIR, request, shapes_preset.scheduler_config)
    assert np.array_equal(shapes_renderer.render(request, progress=False), expected)


def test_concept_fits_renders_and_comes_off(shapes_renderer, tmp_path, capsys):
    """A concept made against the Shapes UNet (64-wide tokens, its attn2 shapes): inspect, apply, remove."""
    concept = make_concept(shapes_renderer.pipeline, class_word="circle")
    path = save_concept(concept, tmp_path / "circle.safetensors")
    assert main(["concept", "inspect", str(path), "--model", "shapes", "--device", "cpu", "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["model_check"]
    assert check["fingerprint_match"] is True
    request = settings(shapes_renderer.preset, prompt="a <new1> circle staying still on a black background")
    plain = shapes_renderer.render(request, progress=False)
    with_concept = shapes_renderer.render(request, [(concept, 1.0, str(path))], progress=False)
    assert not np.array_equal(plain, with_concept)
    assert np.array_equal(plain, shapes_renderer.render(request, progress=False))


def test_render_command_writes_the_video(tmp_path, capsys):
    out = tmp_path / "x.mp4"
    assert main(["render", *QUICK, "--prompt", PROMPT, "--out", str(out)]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (8, 32, 32, 3) and fps == 8
    sidecar = json.loads((tmp_path / "x.json").read_text())
    assert sidecar["model"]["preset"] == "shapes" and sidecar["model"]["base"] == "builtin:shapes"


def test_batch_command_renders_each_prompt(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\na big green square staying still on a white background\n")
    out = tmp_path / "out"
    assert main(["batch", str(prompts), "--out", str(out), *QUICK]) == 0
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 2 and all(read_video(v)[0].shape == (8, 32, 32, 3) for v in videos)


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory):
    """The shipped model copied as `train_shapes.py export` writes it: weights plus cdvideo.yaml."""
    import shutil

    target = tmp_path_factory.mktemp("export") / "my-shapes"
    shutil.copytree(shapes_model.MODEL_DIR, target)
    load_script("train_shapes").write_render_defaults(target, "my Shapes model")
    return target


def test_an_exported_directory_renders_as_the_preset_does(shapes_preset, shapes_renderer, exported_dir):
    preset = load_preset(str(exported_dir))
    assert (preset.base, preset.motion_adapter, preset.description) == (str(exported_dir),) * 2 + ("my Shapes model",)
    assert (preset.height, preset.num_frames, preset.guidance_scale, preset.scheduler_config) == (32, 8, 2.0, {})
    request = settings(preset, model=str(exported_dir))
    assert request.guidance_scale == 2.0
    frames = Renderer(preset, device="cpu", dtype="float32").render(request, progress=False)
    assert np.array_equal(frames, shapes_renderer.render(settings(shapes_preset), progress=False))


@pytest.mark.parametrize("line, named", [("base: elsewhere", "'base' is the directory itself"),
                                         ("guidance: 3", "unknown key(s) 'guidance'"),
                                         ("scheduler: heun", "unknown scheduler 'heun'")])
def test_a_bad_key_in_a_directorys_defaults_is_named(exported_dir, tmp_path, capsys, line, named):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exported_dir, broken)
    (broken / "cdvideo.yaml").write_text((exported_dir / "cdvideo.yaml").read_text() + line + "\n")
    assert main(["render", "--model", str(broken), "--prompt", PROMPT, "--out", str(tmp_path / "x.mp4")]) != 0
    error = capsys.readouterr().err.strip()
    assert named in error and "cdvideo.yaml" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "x.mp4").exists()


def test_frame_size_follows_the_vae(shapes_preset, tiny_preset):
    """Shapes' VAE downsamples by 4, SD's by 8; diffusers still asks for multiples of 8."""
    assert vae_scale_factor(shapes_preset) == 4 and vae_scale_factor(tiny_preset) == 8
    check_inputs(settings(shapes_preset, height=16, width=48), shapes_preset)
    with pytest.raises(ConfigError, match=r"height must be a positive multiple of 8 \(latents are 1/4 of the frame; "
                                          r"diffusers asks for multiples of 8\), got 36"):
        check_inputs(resolve_settings(RenderSettings(prompt=PROMPT, height=36), shapes_preset), shapes_preset)


def test_memory_estimate_counts_latents_at_the_vaes_factor(shapes_preset):
    import torch

    from cdvideo import memory

    counts = memory.parameter_counts(locate(shapes_preset))
    assert sum(counts.values()) < 10e6  # from the shipped safetensors headers
    # --low-vram decodes one frame at a time, so the UNet's activations set the peak; a factor-4 VAE's
    # latents hold 4x the pixels of SD's at the same frame size.
    args = (counts, "cpu", torch.float32, 256, 256, 16, True)
    weights_and_overhead = sum(counts.values()) * 4 + memory.PROCESS_OVERHEAD_BYTES
    sd_like = memory.estimate_peak_bytes(*args, vae_factor=8) - weights_and_overhead
    assert memory.estimate_peak_bytes(*args, vae_factor=4) - weights_and_overhead == 4 * sd_like
    line = memory.check_memory(settings(shapes_preset), locate(shapes_preset), "cpu", torch.float32)
    assert line.startswith("peak memory estimate: 0.5 GiB on cpu")


@pytest.fixture
def weights_missing(monkeypatch, tmp_path):
    """An install without the shipped weights (a trimmed wheel, a checkout before they were committed)."""
    monkeypatch.setattr(shapes_model, "MODEL_DIR", tmp_path / "model")
    return tmp_path / "model"


def test_missing_weights_are_one_line_saying_how_to_rebuild(shapes_preset, weights_missing, tmp_path, capsys):
    with pytest.raises(ModelNotAvailableError) as error:
        check_available(shapes_preset)
    message = str(error.value)
    assert "\n" not in message and "shipped Shapes weights are missing" in message
    assert "scripts/train_shapes.py" in message and "export" in message and str(weights_missing) in message
    assert main(["render", *QUICK, "--prompt", PROMPT, "--out", str(tmp_path / "x.mp4")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "x.mp4").exists()
    assert main(["env", "--json"]) == 0
    assert "shipped Shapes weights are missing" in json.loads(capsys.readouterr().out)["presets"]["shapes"]


def test_unknown_builtin_names_the_ones_there_are():
    with pytest.raises(ConfigError, match="unknown built-in model 'builtin:shape'; choose from 'builtin:tiny', "
                                          "'builtin:shapes'"):
        resolve_source("builtin:shape")


def test_motion_words_diagnostic_runs_on_the_shipped_model(capsys):
    """scripts/shapes_motion_words.py: the measurement behind docs/shapes-world.md's motion section."""
    from cdvideo.shapes.world import OPPOSITE_MOTION

    script = load_script("shapes_motion_words")
    clips, right, wrong = script.moving_clips(3, seed=1)
    assert clips.shape == (3, 8, 32, 32, 3)
    for r, w in zip(right, wrong):  # one word apart, and that word is the opposite direction
        changed = [(a, b) for a, b in zip(r.split(), w.split()) if a != b]
        assert len(r.split()) == len(w.split()) and len(changed) == 1 and OPPOSITE_MOTION[changed[0][0]] == changed[0][1]
    assert script.main(["--clips", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("| t ") == 4 and "colour word (red / green)" in out
    assert "with the right motion words" in out


def test_concept_motion_script_shows_the_concept_fade_with_its_strength(capsys):
    """scripts/shapes_concept_motion.py: the concept/motion trade-off in docs/shapes-world.md."""
    script = load_script("shapes_concept_motion")
    rows = script.main(["--strengths", "1", "0", "--seeds", "1", "--steps", "8", "--device", "cpu"])
    assert [r[0] for r in rows] == [1.0, 0.0] and rows[0][2] > rows[1][2]  # the concept shows at 1, fades at 0
    assert capsys.readouterr().out.count("\n| ") == 3  # header, two rows


def test_personalization_prompts_are_world_captions_of_every_kind():
    """scripts/shapes_personalization.py draws readable prompts: each kind, every motion, no concept colour."""
    import numpy as np

    from cdvideo.shapes.world import CONCEPTS, parse_caption

    script = load_script("shapes_personalization")
    for concept in CONCEPTS.values():
        for seed in (0, 1):
            prompts = script.compositional_prompts(concept, 12, seed)
            assert len(set(prompts)) == 12
            requests = [parse_caption(p) for p in prompts]
            assert {r.motion for r in requests} >= {"left", "right", "up", "down"}
            assert sum(len(r.objects) == 2 for r in requests) == 6
            banned = {concept["upper"], concept["lower"]}
            assert not any(r.background in banned for r in requests)
            assert all(concept["token"] in p for p in prompts)
    values = np.array([0.0, 1.0] * 50)
    mean, low, high = script.bootstrap([values])
    assert mean == 0.5 and 0.35 < low < 0.5 < high < 0.65
    # Concepts of several training seeds that disagree: the two-level interval holds their spread, which the
    # same clips pooled as one group hide.
    spread = [np.array([0.2] * 48), np.array([0.45] * 48), np.array([0.42] * 48)]
    two_level, pooled = script.bootstrap(spread), script.bootstrap([np.concatenate(spread)])
    assert two_level[0] == pooled[0] and two_level[1] <= 0.21 and two_level[2] >= 0.44
    assert pooled[2] - pooled[1] < (two_level[2] - two_level[1]) / 3


def test_personalization_report_splits_each_row_by_the_prompts_background():
    """A concept never drawn on one background shows there as 0.00, beside its share on the others."""
    script = load_script("shapes_personalization")
    clip = lambda row, prompt, concept, everything: dict(row=row, prompt=prompt, concept=concept, everything=everything)
    results = [clip("defaults", "a <new1> circle on a black background", 1.0, 1.0),
               clip("defaults", "a <new1> circle moving left on a black background", 0.5, 0.0),
               clip("defaults", "a <new1> circle and a red square on a white background", 0.0, 0.0),
               clip("plain", "a <new1> circle on a white background", 1.0, 1.0)]
    lines = script.by_background(results, ["defaults", "plain"]).splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[2:4]] == ["black", "white"]
    assert "0.75 / 0.50 (2)" in lines[2] and "0.00 / 0.00 (1)" in lines[2]
    assert lines[3].split("|")[2].strip() == "-" and "1.00 / 1.00 (1)" in lines[3]


def test_personalization_concepts_beyond_the_world_are_two_tone_circles_or_squares():
    import argparse

    script = load_script("shapes_personalization")
    assert script.concept_of("circle:red:green") == dict(token="<new1>", class_word="circle", upper="red", lower="green")
    assert script.concept_of("square")["token"] == "<new2>"
    for bad, reason in [("hexagon:red:blue", "neither circle nor square"), ("circle:red:red", "neither"),
                        ("triangle:white:blue", "quarter of its area"), ("circle:black:red", "black is the training")]:
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            script.concept_of(bad)
