"""Video-to-video (`--video SRC --strength S`): the same frames as diffusers' AnimateDiffVideoToVideoPipeline,
concepts applied and taken off bit for bit, the source fitted by the stated rule, bad sources refused early."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdvideo.cli import main
from cdvideo.concept import save_concept
from cdvideo.config import ConceptSpec, RenderSettings
from cdvideo.errors import ConfigError, InputFileError
from cdvideo.export import write_video
from cdvideo.render import prepare_render, render_to_file
from cdvideo.sidecar import read_sidecar
from cdvideo.source_video import fit_frames
from conftest import make_concept, plain_diffusers_pipeline, weights_of

SMALL = dict(model="tiny", height=32, width=32, steps=4, guidance_scale=7.5, seed=3, video_strength=0.6)


def moving_square(frames=6, height=32, width=32) -> np.ndarray:
    """A white square sliding right on a dark blue ground: uint8 (f, h, w, 3)."""
    clip = np.zeros((frames, height, width, 3), np.uint8)
    clip[..., 2] = 90
    for index in range(frames):
        left = 2 + 3 * index
        clip[index, height // 3:height // 3 + 10, left:left + 10] = 255
    return clip


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "source"  # a PNG folder: lossless, so diffusers is given exactly the same pixels
    write_video(moving_square(), path, fps=8)
    return path


@pytest.fixture
def concept_file(tiny_pipeline, tmp_path) -> str:
    path = tmp_path / "dog.safetensors"
    save_concept(make_concept(tiny_pipeline, seed=5), path)
    return str(path)


def diffusers_video_to_video(settings: RenderSettings, source: Path, concept=None, strength=1.0) -> np.ndarray:
    """What a plain diffusers script renders: AnimateDiffVideoToVideoPipeline from the tiny directory with the
    concept (if any) put in by hand; the source frames read with PIL."""
    from diffusers import AnimateDiffVideoToVideoPipeline

    from cdvideo.models import load_preset
    from cdvideo.models.tiny import tiny_model_dir

    pipe = plain_diffusers_pipeline(AnimateDiffVideoToVideoPipeline, tiny_model_dir(), load_preset("tiny").scheduler_config,
                                    concept, strength)
    video = [Image.open(frame).convert("RGB") for frame in sorted(source.glob("*.png"))]
    frames = pipe(video=video, prompt=settings.prompt, negative_prompt=settings.negative_prompt,
                  height=settings.height, width=settings.width, num_inference_steps=settings.steps,
                  guidance_scale=settings.guidance_scale, strength=settings.video_strength,
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np").frames[0]
    return (frames * 255).round().astype(np.uint8)


def test_frames_equal_diffusers_video_to_video_with_a_concept_taken_off_after(tiny_renderer, source, concept_file,
                                                                               tmp_path):
    from cdvideo.concept import load_concept

    before = weights_of(tiny_renderer.pipeline)
    tokens_before = len(tiny_renderer.pipeline.tokenizer)
    settings = RenderSettings(prompt="a <new1> dog running", negative_prompt="bad quality", video=str(source),
                              concepts=[ConceptSpec(concept_file, 0.7)], concept_binding="merged", **SMALL)
    ours = render_to_file(settings, tmp_path / "dog", renderer=tiny_renderer, progress=False)
    expected = diffusers_video_to_video(ours.settings, source, load_concept(concept_file), 0.7)
    assert ours.frames.shape == (6, 32, 32, 3)  # the source's frame count
    assert np.array_equal(ours.frames, expected)

    after = weights_of(tiny_renderer.pipeline)  # the concept is off again, bit for bit
    assert len(tiny_renderer.pipeline.tokenizer) == tokens_before
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    plain = render_to_file(RenderSettings(prompt="a dog running", negative_prompt="bad quality", video=str(source),
                                          **SMALL), tmp_path / "plain", renderer=tiny_renderer, progress=False)
    assert np.array_equal(plain.frames, diffusers_video_to_video(plain.settings, source))


def test_the_source_shows_through_more_at_low_strength(tiny_renderer, source, tmp_path):
    clip = moving_square().astype(float)
    errors = []
    for strength in (0.25, 1.0):
        frames = render_to_file(RenderSettings(prompt="a dog", video=str(source), **{**SMALL, "video_strength": strength}),
                                tmp_path / f"s{int(strength * 100)}", renderer=tiny_renderer, progress=False).frames
        errors.append(np.abs(frames.astype(float) - clip).mean())
    assert errors[0] < errors[1]


def test_sidecar_records_the_source_and_from_reproduces(tiny_renderer, source, tmp_path):
    first = render_to_file(RenderSettings(prompt="a dog", video=str(source), num_frames=4, **SMALL),
                           tmp_path / "a.mp4", renderer=tiny_renderer, progress=False)
    sidecar = read_sidecar(first.sidecar)
    assert sidecar["source_video"]["path"] == str(source.absolute()) and len(sidecar["source_video"]["sha256"]) == 64
    # A PNG folder has no fps: the preset's is used.
    assert sidecar["settings"]["video_strength"] == 0.6 and sidecar["settings"]["fps"] == tiny_renderer.preset.fps
    assert first.frames.shape[0] == 4  # the first 4 of the source's 6
    again = render_to_file(RenderSettings.from_dict(sidecar["settings"]), tmp_path / "b.mp4", renderer=tiny_renderer,
                           progress=False)
    assert np.array_equal(again.frames, first.frames)


def test_sources_of_another_size_are_scaled_to_cover_and_cut_about_the_centre():
    wide = np.zeros((2, 20, 60, 3), np.uint8)
    wide[:, :, 20:40] = 200  # the middle third, which is what a square crop keeps
    fitted = fit_frames(wide, 40, 40)  # 20x60 -> 40x120 covers 40x40 -> the middle 40 columns
    assert fitted.shape == (2, 40, 40, 3)
    assert fitted[:, :, 3:-3].min() > 150
    expected = np.asarray(Image.fromarray(wide[0]).resize((120, 40), Image.LANCZOS))[:, 40:80]
    assert np.array_equal(fitted[0], expected)


def bad_source(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "missing.mp4"
    if kind == "garbage":
        (folder / "walk.mp4").write_bytes(b"not a video")
        return folder / "walk.mp4"
    (folder / "empty").mkdir()
    return folder / "empty"


@pytest.mark.parametrize("kind,message", [("missing", "source video not found"), ("garbage", "cannot be read"),
                                          ("empty", "holds no PNG frames")])
def test_bad_source_is_one_line_before_any_model_loads(tmp_path, monkeypatch, capfd, kind, message):
    import cdvideo.models

    monkeypatch.setattr(cdvideo.models, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    bad = bad_source(kind, tmp_path)
    code = main(["render", "--model", "tiny", "--video", str(bad), "--prompt", "a dog", "--quiet",
                 "--out", str(tmp_path / "out.mp4")])
    err = capfd.readouterr().err.strip().splitlines()  # the process's own stderr: native decoders' lines too
    assert code != 0 and len(err) == 1 and message in err[0] and str(bad) in err[0], err


@pytest.mark.parametrize("fields,error,message", [
    (dict(num_frames=9), ConfigError, "more than the 6 frames"),
    (dict(video_strength=1.5), ConfigError, "video_strength must be above 0"),
    (dict(video_strength=0.1, steps=4), ConfigError, "leaves no denoising step"),
    (dict(free_init=2), ConfigError, "free_init is not available"),
])
def test_bad_video_settings_are_refused_before_loading(source, tmp_path, fields, error, message):
    settings = RenderSettings(prompt="a dog", video=str(source), **{**SMALL, **fields})
    with pytest.raises(error, match=message):
        prepare_render(settings, tmp_path / "x.mp4")


def test_strength_without_a_video_is_named(tmp_path):
    with pytest.raises(ConfigError, match="give --video"):
        prepare_render(RenderSettings(prompt="a dog", model="tiny", video_strength=0.5), tmp_path / "x.mp4")


def test_a_missing_source_is_an_input_file_error(tmp_path):
    with pytest.raises(InputFileError, match="none.mp4"):
        prepare_render(RenderSettings(prompt="a dog", model="tiny", video=str(tmp_path / "none.mp4")), tmp_path / "x.mp4")


def test_batch_entries_take_a_source_relative_to_the_prompt_file_and_resume_on_its_hash(tiny_renderer, source,
                                                                                           tmp_path):
    import json

    from cdvideo.batch import plan_batch, run_batch

    prompts = tmp_path / "prompts.jsonl"  # the source folder sits beside the prompt file: a relative path
    prompts.write_text("".join(json.dumps({"prompt": p, "seed": 1, "video": "source", "video_strength": 0.6}) + "\n"
                               for p in ("a dog", "a cat")))
    tiny = {k: v for k, v in SMALL.items() if k not in ("seed", "video_strength")}
    report = run_batch(plan_batch(prompts, tiny), tmp_path / "out", renderer=tiny_renderer, progress=False,
                       batch_size=2, gallery=False)
    assert [r["status"] for r in report.records] == ["done", "done"]
    one = render_to_file(RenderSettings(prompt="a cat", video=str(source), **{**SMALL, "seed": 1}),
                         tmp_path / "one", renderer=tiny_renderer, progress=False).frames
    sidecar = read_sidecar(tmp_path / "out" / report.records[1]["sidecar"])
    assert sidecar["source_video"]["path"] == str(source)
    again = render_to_file(RenderSettings.from_dict(sidecar["settings"]), tmp_path / "two", renderer=tiny_renderer,
                           progress=False).frames
    assert np.array_equal(again, one)  # batched with another prompt, yet the same frames as alone

    assert [r["status"] for r in run_batch(plan_batch(prompts, tiny), tmp_path / "out", renderer=tiny_renderer,
                                           progress=False, gallery=False).records] == ["skipped", "skipped"]
    frame = source / "00000.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(frame)  # the source changed: both are out of date
    assert [r["status"] for r in run_batch(plan_batch(prompts, tiny), tmp_path / "out", renderer=tiny_renderer,
                                           progress=False, gallery=False).records] == ["done", "done"]


def test_a_source_longer_than_the_motion_module_renders_in_windows(tiny_renderer, tmp_path):
    long = tmp_path / "long"
    write_video(np.concatenate([moving_square(6)] * 7), long, fps=8)  # 42 frames; the tiny module takes 32
    with pytest.warns(UserWarning, match="42 frames are more than the motion module's 32"):
        result = render_to_file(RenderSettings(prompt="a dog", video=str(long), **{**SMALL, "steps": 2}),
                                tmp_path / "out", renderer=tiny_renderer, progress=False)
    assert result.frames.shape == (42, 32, 32, 3)


def test_the_shapes_measurement_sources_move_as_their_captions_say(tmp_path):
    from cdvideo.shapes.judge import judge_clip
    from conftest import load_script

    script = load_script("shapes_video_to_video")
    sources = script.make_sources(tmp_path, 8, seed=0)
    assert [p.name for p, *_ in sources] == [f"source-{i:02d}" for i in range(8)]
    for path, caption, prompt, frames in sources:
        judged = judge_clip(frames, caption)
        assert judged.motion and judged.both == 1.0, caption  # the judge reads the source as its caption
        assert prompt.startswith("a <new1> circle moving") and caption.split(" circle ")[1] == prompt.split(" circle ")[1]
        assert (path / "00007.png").is_file()
