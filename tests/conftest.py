"""Shared fixtures: an isolated offline environment and the tiny model, built once per session."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch


EXAMPLE_CONCEPT = str(Path(__file__).resolve().parent.parent / "examples" / "tiny-dog.safetensors")


@pytest.fixture(scope="session", autouse=True)
def offline_environment(tmp_path_factory):
    """No test may download or read the user's caches: point every cache at a temporary folder."""
    root = tmp_path_factory.mktemp("env")
    saved = {k: os.environ.get(k) for k in ("CDVIDEO_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    os.environ.update(
        CDVIDEO_CACHE=str(root / "cdvideo"),
        HF_HOME=str(root / "hf"),
        HF_HUB_CACHE=str(root / "hf" / "hub"),
        HF_HUB_OFFLINE="1",
    )
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_preset():
    from cdvideo.models import load_preset

    return load_preset("tiny")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_preset):
    """The tiny AnimateDiff pipeline, loaded through the same code as a real model.

    Shared by many tests: a test that changes it must undo the change (injection is reversible).
    """
    from cdvideo.models import load_pipeline

    pipeline = load_pipeline(tiny_preset, device="cpu", dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def tiny_renderer(tiny_preset, tiny_pipeline):
    """A Renderer around the shared tiny pipeline (no second load)."""
    from cdvideo.render import Renderer

    return Renderer(tiny_preset, device="cpu", dtype="float32", pipeline=tiny_pipeline)


def kv_params(unet):
    """Spatial cross-attention key/value weights of a UNet, by full parameter path."""
    from cdvideo.concept import ALLOWED_PARAM

    return {
        name: param
        for name, param in unet.named_parameters()
        if ALLOWED_PARAM.match(name) and name.endswith((".to_k.weight", ".to_v.weight"))
    }


def make_concept(pipeline, seed=0, token="<new1>", class_word="dog", vectors=1, with_deltas=True, scale=0.5):
    """A random concept that fits `pipeline`: token embedding(s) and key/value deltas."""
    from cdvideo.concept import Concept, fingerprint_unet

    generator = torch.Generator().manual_seed(seed)
    dim = pipeline.text_encoder.get_input_embeddings().weight.shape[1]
    deltas = {}
    if with_deltas:
        for name, param in kv_params(pipeline.unet).items():
            deltas[name] = scale * param.detach().std() * torch.randn(param.shape, generator=generator)
    return Concept(
        tokens={token: torch.randn(vectors, dim, generator=generator)} if token else {},
        class_words={token: class_word} if token else {},
        deltas=deltas,
        base_model="builtin:tiny",
        base_fingerprint=fingerprint_unet(pipeline.unet),
        method="test",
    )


def load_script(name: str):
    """scripts/NAME.py as a module (scripts/ is not a package), to call its functions in-process."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def plain_diffusers_frames(directory, settings, scheduler_config: dict) -> np.ndarray:
    """The frames a plain diffusers script renders from a model directory, as uint8 (f, h, w, 3).

    `AnimateDiffPipeline.from_pretrained` with the directory's own `motion_adapter/`, DDIM with the
    preset's `scheduler_config` on top of the directory's, and a CPU generator seeded with
    `settings.seed`: what cdvideo's frames must equal. float32 is asked for explicitly: without it
    transformers 5 keeps a text encoder saved in float16 (Shapes) in float16 while diffusers loads
    the rest in float32, and the call fails on the CPU with a dtype mismatch.
    """
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    adapter = MotionAdapter.from_pretrained(Path(directory) / "motion_adapter", dtype=torch.float32)
    plain = AnimateDiffPipeline.from_pretrained(directory, motion_adapter=adapter, dtype=torch.float32)
    plain.scheduler = DDIMScheduler.from_pretrained(directory, subfolder="scheduler", **scheduler_config)
    plain.set_progress_bar_config(disable=True)
    frames = plain(prompt=settings.prompt, negative_prompt=settings.negative_prompt, num_frames=settings.num_frames,
                   height=settings.height, width=settings.width, num_inference_steps=settings.steps,
                   guidance_scale=settings.guidance_scale, generator=torch.Generator().manual_seed(settings.seed),
                   output_type="np").frames[0]
    return (frames * 255).round().astype(np.uint8)


def plain_diffusers_pipeline(cls, directory, scheduler_config: dict, concept=None, strength: float = 1.0, **extra):
    """A diffusers AnimateDiff pipeline of class `cls` (video-to-video, ControlNet, ...) read from a model
    directory as a plain script would (`extra`: its other components, a controlnet), DDIM with the preset's
    `scheduler_config`, and `concept` (a cdvideo Concept) put in by hand: its token through diffusers'
    load_textual_inversion, its key/value changes times `strength` merged into the UNet's weights."""
    from diffusers import DDIMScheduler, MotionAdapter

    adapter = MotionAdapter.from_pretrained(Path(directory) / "motion_adapter", dtype=torch.float32)
    pipe = cls.from_pretrained(directory, motion_adapter=adapter, dtype=torch.float32, **extra)
    pipe.scheduler = DDIMScheduler.from_pretrained(directory, subfolder="scheduler", **scheduler_config)
    pipe.set_progress_bar_config(disable=True)
    if concept is not None:
        pipe.load_textual_inversion([{t: e} for t, e in concept.tokens.items()], token=list(concept.tokens))
        params = dict(pipe.unet.named_parameters())
        with torch.no_grad():
            for name in concept.deltas:
                params[name].copy_(params[name].float() + strength * concept.delta(name))
    return pipe


def weights_of(pipeline) -> dict[str, torch.Tensor]:
    """Every UNet and text-encoder tensor of a pipeline, copied: compare before and after a render."""
    state = {f"unet.{k}": v.clone() for k, v in pipeline.unet.state_dict().items()}
    state.update({f"text.{k}": v.clone() for k, v in pipeline.text_encoder.state_dict().items()})
    return state


@pytest.fixture
def no_model_loading(monkeypatch):
    """Training that gets as far as loading a model fails the test: bad input is refused before any heavy work."""
    import cdvideo.models

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cdvideo.models, "load_training_components", no_load)
