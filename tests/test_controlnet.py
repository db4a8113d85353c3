"""ControlNets (`--control KIND:PATH[:SCALE]`): the same frames as diffusers' AnimateDiffControlNetPipeline (and its
video-to-video twin) with a tiny random ControlNet, concepts applied and taken off bit for bit, canny computed
by cdvideo, several ControlNets with scales and start/end, bad controls refused before frames."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdvideo.cli import main
from cdvideo.concept import load_concept, save_concept
from cdvideo.config import ConceptSpec, ControlSpec, RenderSettings
from cdvideo.errors import ConfigError, InputFileError
from cdvideo.export import write_video
from cdvideo.models import load_preset
from cdvideo.models.tiny import UNET_CONFIG, tiny_model_dir
from cdvideo.render import prepare_render, render_to_file
from cdvideo.sidecar import read_sidecar
from conftest import make_concept, plain_diffusers_pipeline, weights_of

SMALL = dict(model="tiny", height=32, width=32, steps=3, guidance_scale=7.5, seed=2, num_frames=4)


def tiny_controlnet(seed: int, cross_attention_dim: int = UNET_CONFIG["cross_attention_dim"]):
    """A random ControlNet shaped like the tiny UNet. Its zero-initialised output convolutions get random
    weights too: a fresh ControlNet adds nothing, and a test of it would pass without it."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    config = {k: UNET_CONFIG[k] for k in ("in_channels", "block_out_channels", "layers_per_block", "down_block_types",
                                          "attention_head_dim", "norm_num_groups")}
    model = ControlNetModel(**config, cross_attention_dim=cross_attention_dim,
                            conditioning_embedding_out_channels=(8, 8, 16, 16))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def controlnets(tmp_path_factory):
    """Two tiny ControlNets saved as diffusers directories (what `--control-model KIND=DIR` reads)."""
    root = tmp_path_factory.mktemp("controlnets")
    paths = []
    for seed in (0, 1):
        tiny_controlnet(seed).save_pretrained(root / f"controlnet-{seed}")
        paths.append(root / f"controlnet-{seed}")
    return paths


def square_clip(frames=5, shift=3) -> np.ndarray:
    clip = np.zeros((frames, 32, 32, 3), np.uint8)
    for index in range(frames):
        clip[index, 8:20, 2 + shift * index:14 + shift * index] = (230, 200, 40)
    return clip


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "walk"
    write_video(square_clip(), path, fps=8)
    return path


def cv2_canny(path: Path, count: int) -> list[Image.Image]:
    """The edge maps a plain script would hand diffusers: OpenCV's Canny (100, 200) of each frame."""
    import cv2

    frames = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(path.glob("*.png"))[:count]]
    return [Image.fromarray(np.repeat(cv2.Canny(f, 100, 200)[..., None], 3, axis=-1)) for f in frames]


def diffusers_frames(cls, settings, controlnet, concept=None, strength=1.0, **call) -> np.ndarray:
    pipe = plain_diffusers_pipeline(cls, tiny_model_dir(), load_preset("tiny").scheduler_config, concept, strength,
                                    controlnet=controlnet)
    frames = pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt, height=settings.height,
                  width=settings.width, num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                  generator=torch.Generator().manual_seed(settings.seed), output_type="np", **call).frames[0]
    return (frames * 255).round().astype(np.uint8)


def test_frames_equal_diffusers_controlnet_pipeline_with_a_concept_taken_off_after(tiny_renderer, controlnets, clip,
                                                                                  tmp_path):
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel

    concept_path = tmp_path / "dog.safetensors"
    save_concept(make_concept(tiny_renderer.pipeline, seed=4), concept_path)
    before, tokens = weights_of(tiny_renderer.pipeline), len(tiny_renderer.pipeline.tokenizer)
    control = ControlSpec("canny", str(clip), model=str(controlnets[0]), scale=0.8, start=0.0, end=0.7)
    settings = RenderSettings(prompt="a <new1> dog walking", negative_prompt="bad quality", controls=[control],
                              concepts=[ConceptSpec(str(concept_path), 0.9)], concept_binding="merged", **SMALL)
    ours = render_to_file(settings, tmp_path / "dog", renderer=tiny_renderer, progress=False)
    expected = diffusers_frames(AnimateDiffControlNetPipeline, ours.settings,
                                ControlNetModel.from_pretrained(controlnets[0]), load_concept(concept_path), 0.9,
                                num_frames=4, conditioning_frames=cv2_canny(clip, 4), controlnet_conditioning_scale=0.8,
                                control_guidance_start=0.0, control_guidance_end=0.7)
    assert np.array_equal(ours.frames, expected)

    after = weights_of(tiny_renderer.pipeline)
    assert len(tiny_renderer.pipeline.tokenizer) == tokens and all(torch.equal(before[k], after[k]) for k in before)
    unsteered = render_to_file(dataclasses.replace(settings, controls=[]), tmp_path / "free",
                               renderer=tiny_renderer, progress=False)
    assert not np.array_equal(unsteered.frames, ours.frames)  # the ControlNet does steer
    sidecar = read_sidecar(ours.sidecar)
    assert sidecar["controls"][0]["model"] == str(controlnets[0]) and len(sidecar["controls"][0]["sha256"]) == 64
    again = render_to_file(RenderSettings.from_dict(sidecar["settings"]), tmp_path / "again", renderer=tiny_renderer,
                           progress=False)
    assert np.array_equal(again.frames, ours.frames)


def test_several_controlnets_with_scales_equal_diffusers_multi_controlnet(tiny_renderer, controlnets, clip, tmp_path):
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel

    maps = tmp_path / "maps"  # control frames made elsewhere (a depth detector, say): used as they are
    write_video(255 - square_clip(), maps, fps=8)
    controls = [ControlSpec("canny", str(clip), model=str(controlnets[0]), scale=0.6),
                ControlSpec("depth", str(maps), model=str(controlnets[1]), scale=1.2, start=0.2, end=1.0)]
    settings = RenderSettings(prompt="a dog walking", controls=controls, **SMALL)
    ours = render_to_file(settings, tmp_path / "two", renderer=tiny_renderer, progress=False)
    depth = [Image.open(f).convert("RGB") for f in sorted(maps.glob("*.png"))[:4]]
    expected = diffusers_frames(AnimateDiffControlNetPipeline, ours.settings,
                                [ControlNetModel.from_pretrained(p) for p in controlnets], num_frames=4,
                                conditioning_frames=[cv2_canny(clip, 4), depth],
                                controlnet_conditioning_scale=[0.6, 1.2], control_guidance_start=[0.0, 0.2],
                                control_guidance_end=[1.0, 1.0])
    assert np.array_equal(ours.frames, expected)


def test_video_to_video_with_a_controlnet_equals_diffusers(tiny_renderer, controlnets, clip, tmp_path):
    from diffusers import AnimateDiffVideoToVideoControlNetPipeline, ControlNetModel

    settings = RenderSettings(prompt="a cat walking", video=str(clip), video_strength=0.7,
                              controls=[ControlSpec("canny", str(clip), model=str(controlnets[1]))], **SMALL)
    ours = render_to_file(settings, tmp_path / "v2v", renderer=tiny_renderer, progress=False)
    video = [Image.open(f).convert("RGB") for f in sorted(clip.glob("*.png"))[:4]]
    expected = diffusers_frames(AnimateDiffVideoToVideoControlNetPipeline, ours.settings,
                                ControlNetModel.from_pretrained(controlnets[1]), video=video, strength=0.7,
                                conditioning_frames=cv2_canny(clip, 4))
    assert np.array_equal(ours.frames, expected)


def test_canny_is_opencvs_on_frames_fitted_to_the_render_size(tmp_path):
    import cv2

    from cdvideo.control import control_frames

    big = tmp_path / "big"
    write_video(np.repeat(np.repeat(square_clip(), 2, axis=1), 2, axis=2), big, fps=8)  # 64x64 -> 32x32
    settings = RenderSettings(prompt="a dog", num_frames=3, height=32, width=32)
    edges = control_frames(ControlSpec("canny", str(big)), settings)
    from cdvideo.source_video import fit_frames

    fitted = fit_frames(np.stack([np.asarray(Image.open(f)) for f in sorted(big.glob("*.png"))[:3]]), 32, 32)
    assert edges.shape == (3, 32, 32, 3) and set(np.unique(edges)) == {0, 255}
    assert np.array_equal(edges[..., 0], np.stack([cv2.Canny(f, 100, 200) for f in fitted]))


def test_the_control_clip_gives_the_frame_count_and_the_kind_its_model(tiny_preset, clip, tmp_path, capfd,
                                                                      monkeypatch):
    from cdvideo.render import resolve_settings

    settings = resolve_settings(RenderSettings(prompt="a dog", model="tiny", controls=[ControlSpec("depth", str(clip))]),
                                tiny_preset)
    assert settings.num_frames == 5
    assert settings.controls[0].model == "lllyasviel/control_v11f1p_sd15_depth"
    import cdvideo.models  # offline and not in the cache (the tests' empty one): one line before any model loads

    monkeypatch.setattr(cdvideo.models, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    code = main(["render", "--model", "tiny", "--control", f"depth:{clip}", "--prompt", "a dog", "--quiet",
                 "--out", str(tmp_path / "x.mp4")])
    err = capfd.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "lllyasviel/control_v11f1p_sd15_depth is not in the Hugging Face cache" in err[0]


@pytest.mark.parametrize("control,fields,error,message", [
    (ControlSpec("canny", "CLIP"), dict(num_frames=9), ConfigError, "has 5 frames, fewer than the 9"),
    (ControlSpec("sketchy", "CLIP"), {}, ConfigError, "unknown control kind 'sketchy'"),
    (ControlSpec("canny", "CLIP", start=0.8, end=0.5), {}, ConfigError, "0 <= start < end <= 1"),
    (ControlSpec("canny", "CLIP", scale=float("nan")), {}, ConfigError, "scale must be a finite number"),
    (ControlSpec("canny", "CLIP", model="./no/such/controlnet"), {}, InputFileError, "ControlNet not found"),
    (ControlSpec("canny", "CLIP"), dict(step_cache=3), ConfigError, "step_cache is not available with ControlNets"),
])
def test_bad_controls_are_refused_before_loading(clip, tmp_path, control, fields, error, message):
    control.path = control.path.replace("CLIP", str(clip))
    with pytest.raises(error, match=message):
        prepare_render(RenderSettings(prompt="a dog", controls=[control], **{**SMALL, **fields}), tmp_path / "x.mp4")


def test_a_controlnet_for_another_base_is_one_line_before_any_frame(tiny_preset, tmp_path, clip, capsys, monkeypatch):
    import cdvideo.render

    other = tmp_path / "sdxl-like"
    tiny_controlnet(0, cross_attention_dim=64).save_pretrained(other)
    monkeypatch.setattr(cdvideo.render, "render_frames", lambda *a, **k: pytest.fail("a frame was rendered"))
    code = main(["render", "--model", "tiny", "--control", f"canny:{clip}", "--control-model", f"canny={other}",
                 "--prompt", "a dog", "--steps", "1", "--quiet", "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "made for another base model" in err[0], err


def test_control_flags_parse(tmp_path, clip):
    from cdvideo.cli import build_parser
    from cdvideo.cli.render import settings_from_args

    args = build_parser().parse_args(["render", "--control", f"canny:{clip}:0.5", "--control", f"depth:{clip}",
                                      "--control-model", "depth=./mine", "--control-end", "0.6", "--prompt", "a dog"])
    settings, _ = settings_from_args(args)
    assert [(c.kind, c.scale, c.model, c.end) for c in settings.controls] == [
        ("canny", 0.5, None, 0.6), ("depth", 1.0, "./mine", 0.6)]
    args = build_parser().parse_args(["render", "--control-model", "pose=x", "--prompt", "a dog"])
    with pytest.raises(ConfigError, match="no --control of that kind"):
        settings_from_args(args)


def test_batch_entries_take_controls_and_reference_images_relative_to_the_prompt_file(clip, tmp_path):
    import json

    from cdvideo.batch import plan_batch

    Image.new("RGB", (8, 8)).save(tmp_path / "toy.png")
    prompts = tmp_path / "prompts.jsonl"  # clip and toy.png sit beside the prompt file
    prompts.write_text(json.dumps({"prompt": "a dog", "seed": 1, "controls": [{"kind": "canny", "path": clip.name,
                                                                               "scale": 0.5, "end": 0.8}],
                                   "ip_adapters": [{"image": "toy.png", "scale": 0.4}]}) + "\n")
    (item,) = plan_batch(prompts, {"model": "tiny", "height": 32, "width": 32})
    control = item.settings.controls[0]
    assert (control.path, control.scale, control.end, control.model) == (
        str(clip), 0.5, 0.8, "lllyasviel/control_v11p_sd15_canny")
    assert item.settings.num_frames == 5  # the control clip's
    assert item.settings.ip_adapters[0].image == str(tmp_path / "toy.png") and item.settings.ip_adapters[0].scale == 0.4
