"""IP-Adapter (`--ip-adapter IMAGE[:SCALE]`) beside concepts: the same frames as diffusers' own load_ip_adapter with
the concept merged, several images with their scales, token-bound concepts kept (diffusers' set_attn_processor
would drop them), and the UNet exactly as before after the render."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdvideo.cli import main
from cdvideo.concept import load_concept, save_concept
from cdvideo.config import ConceptSpec, IPAdapterSpec, RenderSettings
from cdvideo.models import load_preset
from cdvideo.models.tiny import tiny_model_dir
from cdvideo.render import prepare_render, render_to_file
from cdvideo.sidecar import read_sidecar
from conftest import make_concept, plain_diffusers_pipeline, weights_of

SMALL = dict(model="tiny", height=32, width=32, steps=3, guidance_scale=7.5, seed=5, num_frames=4)
TOKENS = 4  # image tokens of a plain IP-Adapter's projection


@pytest.fixture(scope="module")
def ip_adapter(tmp_path_factory, tiny_pipeline) -> Path:
    """A tiny random IP-Adapter in diffusers' layout: ip-adapter.safetensors (image_proj.*, ip_adapter.K.to_k_ip /
    to_v_ip for every spatial cross-attention, K = 1, 3, 5, ... as diffusers numbers them) beside image_encoder/."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("ip-adapter")
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=16,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             image_size=32, patch_size=8))
    encoder.save_pretrained(root / "image_encoder")
    generator = torch.Generator().manual_seed(1)
    cross = tiny_pipeline.unet.config.cross_attention_dim

    def random(*shape):
        return 0.3 * torch.randn(shape, generator=generator)

    weights = {"image_proj.proj.weight": random(cross * TOKENS, 16), "image_proj.proj.bias": random(cross * TOKENS),
               "image_proj.norm.weight": 1 + random(cross), "image_proj.norm.bias": random(cross)}
    modules = dict(tiny_pipeline.unet.named_modules())
    key = 1
    for name in tiny_pipeline.unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        hidden = modules[name.removesuffix(".processor")].to_k.out_features
        weights[f"ip_adapter.{key}.to_k_ip.weight"] = random(hidden, cross)
        weights[f"ip_adapter.{key}.to_v_ip.weight"] = random(hidden, cross)
        key += 2
    save_file(weights, root / "ip-adapter.safetensors")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("references")
    rng = np.random.default_rng(3)
    paths = []
    for index in range(2):
        paths.append(root / f"toy-{index}.png")
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture
def concept_file(tiny_pipeline, tmp_path) -> str:
    path = tmp_path / "dog.safetensors"
    save_concept(make_concept(tiny_pipeline, seed=8, scale=1.0), path)
    return str(path)


def settings_for(ip_adapter, specs, **fields) -> RenderSettings:
    return RenderSettings(**{"prompt": "a <new1> dog", "ip_adapters": specs,
                             "ip_adapter_model": str(ip_adapter / "ip-adapter.safetensors"), **SMALL, **fields})


def diffusers_frames(ip_adapter, settings, images, scales, concept=None, strength=1.0) -> np.ndarray:
    """diffusers' own: AnimateDiffPipeline, load_ip_adapter from the local folder (once per image), the scales."""
    from diffusers import AnimateDiffPipeline

    pipe = plain_diffusers_pipeline(AnimateDiffPipeline, tiny_model_dir(), load_preset("tiny").scheduler_config,
                                    concept, strength)
    pipe.load_ip_adapter(str(ip_adapter), subfolder="", weight_name=["ip-adapter.safetensors"] * len(images),
                         image_encoder_folder="image_encoder")
    pipe.set_ip_adapter_scale(scales)
    frames = pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt, num_frames=settings.num_frames,
                  height=settings.height, width=settings.width, num_inference_steps=settings.steps,
                  guidance_scale=settings.guidance_scale, generator=torch.Generator().manual_seed(settings.seed),
                  ip_adapter_image=[Image.open(p).convert("RGB") for p in images], output_type="np").frames[0]
    return (frames * 255).round().astype(np.uint8)


def test_frames_equal_diffusers_ip_adapter_with_a_merged_concept_and_all_is_restored(tiny_renderer, ip_adapter,
                                                                                     images, concept_file, tmp_path):
    unet = tiny_renderer.pipeline.unet
    before, processors = weights_of(tiny_renderer.pipeline), unet.attn_processors
    settings = settings_for(ip_adapter, [IPAdapterSpec(str(images[0]), 0.6)], concept_binding="merged",
                            concepts=[ConceptSpec(concept_file, 0.8)])
    ours = render_to_file(settings, tmp_path / "dog", renderer=tiny_renderer, progress=False)
    expected = diffusers_frames(ip_adapter, ours.settings, images[:1], 0.6, load_concept(concept_file), 0.8)
    assert np.array_equal(ours.frames, expected)

    after = weights_of(tiny_renderer.pipeline)
    assert all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()
    assert all(unet.attn_processors[name] is processor for name, processor in processors.items())
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert tiny_renderer.pipeline.image_encoder is None  # the loaded pipeline never carries it
    recorded = read_sidecar(ours.sidecar)["ip_adapters"][0]
    assert recorded["path"] == str(images[0]) and recorded["scale"] == 0.6 and len(recorded["sha256"]) == 64
    plain = render_to_file(RenderSettings(prompt="a dog", **SMALL), tmp_path / "plain", renderer=tiny_renderer,
                           progress=False)
    assert not np.array_equal(plain.frames, ours.frames)


def test_several_reference_images_keep_their_own_scales_as_in_diffusers(tiny_renderer, ip_adapter, images, tmp_path):
    settings = settings_for(ip_adapter, [IPAdapterSpec(str(images[0]), 0.6), IPAdapterSpec(str(images[1]), 0.3)],
                            prompt="a dog")
    ours = render_to_file(settings, tmp_path / "two", renderer=tiny_renderer, progress=False)
    assert np.array_equal(ours.frames, diffusers_frames(ip_adapter, ours.settings, images, [0.6, 0.3]))


def test_token_bound_concepts_are_not_dropped_by_the_ip_adapter(tiny_renderer, ip_adapter, images, concept_file,
                                                               tmp_path):
    """diffusers' load_ip_adapter replaces every attention processor: done plainly, the concept's
    BoundAttnProcessor would be gone. At IP scale 0 the adapter adds exactly nothing, so the frames must be
    those of the bound concept alone, not those of its token embedding alone."""
    bound = dict(concept_binding="token", concepts=[ConceptSpec(concept_file)])
    alone = render_to_file(RenderSettings(prompt="a <new1> dog", **SMALL, **bound), tmp_path / "alone",
                           renderer=tiny_renderer, progress=False).frames
    token_only = render_to_file(RenderSettings(prompt="a <new1> dog", **SMALL, concept_binding="token",
                                               concepts=[ConceptSpec(concept_file, 0.0)]),
                                tmp_path / "token", renderer=tiny_renderer, progress=False).frames
    assert not np.array_equal(alone, token_only)  # the bound key/value change shows
    with_ip = render_to_file(settings_for(ip_adapter, [IPAdapterSpec(str(images[0]), 0.0)], **bound),
                             tmp_path / "with-ip", renderer=tiny_renderer, progress=False).frames
    assert np.array_equal(with_ip, alone)
    steered = render_to_file(settings_for(ip_adapter, [IPAdapterSpec(str(images[0]), 0.7)], **bound),
                             tmp_path / "steered", renderer=tiny_renderer, progress=False).frames
    assert not np.array_equal(steered, alone)  # and the reference image acts too
    assert all(type(p).__module__.startswith("diffusers.") for p in tiny_renderer.pipeline.unet.attn_processors.values())


def test_a_bad_reference_image_is_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import cdvideo.models

    monkeypatch.setattr(cdvideo.models, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    bad = tmp_path / "toy.png"
    bad.write_bytes(b"not an image")
    code = main(["render", "--model", "tiny", "--ip-adapter", f"{bad}:0.5", "--prompt", "a dog", "--quiet",
                 "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "IP-Adapter image" in err[0] and str(bad) in err[0], err


def test_missing_adapter_file_and_defaults(tmp_path, images):
    from cdvideo.errors import InputFileError

    with pytest.raises(InputFileError, match="IP-Adapter not found"):
        prepare_render(RenderSettings(prompt="a dog", model="tiny", ip_adapters=[IPAdapterSpec(str(images[0]))],
                                      ip_adapter_model="./nowhere/ip.safetensors"), tmp_path / "x.mp4")
    from cdvideo.errors import ModelNotAvailableError
    from cdvideo.render import resolve_settings

    asked = RenderSettings(prompt="a dog", model="tiny", ip_adapters=[IPAdapterSpec(str(images[0]))])
    settings = resolve_settings(asked, load_preset("tiny"))
    assert settings.ip_adapter_model == "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"
    assert settings.ip_adapter_image_encoder == "h94/IP-Adapter/models/image_encoder"
    with pytest.raises(ModelNotAvailableError, match="ip-adapter_sd15.safetensors is not in the Hugging Face cache"):
        prepare_render(asked, tmp_path / "x.mp4")  # offline, the tests' cache empty: refused before loading
