"""Long videos on the tiny model: FreeNoise windows, prompt travel, FreeInit, motion LoRAs, distilled presets."""

import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cdvideo.config import MotionLoraSpec, RenderSettings
from cdvideo.errors import ConfigError, InjectionError, ModelNotAvailableError, WrongFileKindError
from cdvideo.long_video import long_video_applied, parse_prompt_travel
from cdvideo.models import load_preset
from cdvideo.render import check_inputs, render_to_file, resolve_settings

TINY = dict(model="tiny", height=32, width=32, steps=1, seed=3)


def settings(**overrides):
    return RenderSettings(**{"prompt": "a dog sitting", **TINY, **overrides})


def state(pipeline):
    return {k: v.clone() for k, v in pipeline.unet.state_dict().items()}


def assert_pipeline_restored(pipeline, before):
    from diffusers.models.attention import FreeNoiseTransformerBlock
    from diffusers.pipelines.free_noise_utils import SplitInferenceModule

    kinds = {type(m) for m in pipeline.unet.modules()}
    assert FreeNoiseTransformerBlock not in kinds and SplitInferenceModule not in kinds
    assert not pipeline.free_noise_enabled and not pipeline.free_init_enabled
    after = pipeline.unet.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def motion_attention(pipeline):
    """The temporal self-attention layers (attn1 of every motion-module transformer block)."""
    return [m for name, m in pipeline.unet.named_modules()
            if ".motion_modules." in name and name.endswith(".attn1") and "transformer_blocks" in name]


# 1. Windows


def test_40_frames_render_in_16_frame_windows(tiny_renderer, tiny_pipeline, tmp_path):
    from diffusers.models.attention import FreeNoiseTransformerBlock

    before = state(tiny_pipeline)
    window_sizes, hooks = [], []

    def watch_windowed_blocks(module, args):
        # FreeNoise builds its blocks inside the render: hook their temporal attention when first called.
        if isinstance(module, FreeNoiseTransformerBlock) and not hasattr(module, "_watched"):
            module._watched = True
            hooks.append(module.attn1.register_forward_pre_hook(lambda m, a: window_sizes.append(a[0].shape[1])))

    hooks.append(torch.nn.modules.module.register_module_forward_pre_hook(watch_windowed_blocks))
    try:
        # No context_length: 40 frames are more than the tiny module's 32, so windows turn on by themselves.
        result = render_to_file(settings(num_frames=40), tmp_path / "long", renderer=tiny_renderer, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert result.frames.shape == (40, 32, 32, 3)
    # Every temporal attention saw one 16-frame window: (40 - 16) / 4 + 1 = 7 windows per block and step.
    assert set(window_sizes) == {16} and len(window_sizes) == 7 * len(motion_attention(tiny_pipeline))
    assert any("FreeNoise windows of 16 frames every 4" in w for w in result.warnings)
    assert result.settings.context_length is None  # the sidecar repeats the same automatic choice
    assert_pipeline_restored(tiny_pipeline, before)


def test_windows_off_below_the_limit_is_the_plain_render(tiny_renderer):
    plain = tiny_renderer.render(resolve_settings(settings(num_frames=8), tiny_renderer.preset), progress=False)
    with long_video_applied(tiny_renderer.pipeline, resolve_settings(settings(num_frames=8), tiny_renderer.preset)) as w:
        assert w is None
    again = tiny_renderer.render(resolve_settings(settings(num_frames=8), tiny_renderer.preset), progress=False)
    assert np.array_equal(plain, again)


# 2. Prompt travel


def _positive_embeddings_per_call(pipeline, calls):
    """Concatenate the chunks fed to the first spatial transformer per UNet call; keep the prompt half."""
    per_call, current = [], []
    first = pipeline.unet.down_blocks[0].attentions[0]

    def grab(module, args, kwargs):
        current.append(kwargs["encoder_hidden_states"].detach().clone())

    def close(module, args, kwargs, output):
        per_call.append(torch.cat(current))
        current.clear()

    return first.register_forward_pre_hook(grab, with_kwargs=True), \
        pipeline.unet.register_forward_hook(close, with_kwargs=True), per_call


def test_prompt_travel_changes_the_conditioning_at_the_given_frames(tiny_renderer, tiny_pipeline):
    a, b = "a dog sitting", "a cat running fast"
    travel = resolve_settings(settings(num_frames=40, prompt="", prompt_travel=f"0: {a} | 24: {b}"),
                              tiny_renderer.preset)
    assert travel.prompt == a and travel.prompt_travel == {0: a, 24: b}
    chunk_sizes = []
    hook_chunks = tiny_pipeline.unet.down_blocks[0].attentions[0].register_forward_pre_hook(
        lambda m, args, kwargs: chunk_sizes.append(kwargs["encoder_hidden_states"].shape[0]), with_kwargs=True)
    grab, close, per_call = _positive_embeddings_per_call(tiny_pipeline, [])
    try:
        tiny_renderer.render(travel, progress=False)
    finally:
        for hook in (hook_chunks, grab, close):
            hook.remove()
    assert max(chunk_sizes) == 16  # spatial layers too run one window of frames at a time
    fed = per_call[0][40:]  # (f, 77, d): classifier-free guidance puts the negative prompt first
    encode = lambda text: tiny_pipeline.encode_prompt(text, "cpu", 1, False)[0][0]  # noqa: E731
    ea, eb = encode(a), encode(b)
    assert torch.allclose(fed[0], ea, atol=1e-6)
    assert torch.allclose(fed[12], 0.5 * ea + 0.5 * eb, atol=1e-5)  # blended halfway to frame 24
    for frame in (24, 30, 39):
        assert torch.allclose(fed[frame], eb, atol=1e-6)
    assert not torch.allclose(fed[6], fed[18])


def test_single_segment_travel_equals_the_plain_windowed_render(tiny_renderer):
    preset = tiny_renderer.preset
    plain = resolve_settings(settings(num_frames=20, context_length=16), preset)
    travel = resolve_settings(settings(num_frames=20, context_length=16, prompt="",
                                       prompt_travel={"0": "a dog sitting"}), preset)
    assert np.array_equal(tiny_renderer.render(plain, progress=False), tiny_renderer.render(travel, progress=False))


def test_prompt_travel_survives_the_sidecar(tiny_renderer, tmp_path):
    result = render_to_file(settings(num_frames=4, prompt="", prompt_travel="0: a dog | 2: a cat"), tmp_path / "t",
                            renderer=tiny_renderer, progress=False)
    import json

    recorded = json.loads(result.sidecar.read_text())["settings"]
    again = resolve_settings(RenderSettings.from_dict(recorded), tiny_renderer.preset)
    assert again.prompt_travel == {0: "a dog", 2: "a cat"} and again.prompt == "a dog"


@pytest.mark.parametrize("value,message", [
    ("0 a dog", "not 'FRAME: prompt'"),
    ("0: a dog | 0: a cat", "frame 0 is given twice"),
    ({"x": "a dog"}, "is not a frame number"),
    ("0: a dog | 5:  ", "frame 5 has an empty prompt"),
])
def test_bad_prompt_travel_is_one_line(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_prompt_travel(value)


@pytest.mark.parametrize("overrides,message", [
    (dict(context_length=33), "context_length must be between 1 and 32"),
    (dict(context_stride=0), "context_stride must be at least 1"),
    (dict(context_weighting="steep"), "unknown context_weighting 'steep'"),
    (dict(context_noise="pink"), "unknown context_noise 'pink'"),
    (dict(free_init=-1), "free_init must be"),
    (dict(prompt_travel="0: a dog sitting | 8: a cat"), "frame 8 is past the last frame (7)"),
    (dict(prompt="a cat", prompt_travel="0: a dog"), "prompt_travel frame 0"),
    (dict(motion_loras=[MotionLoraSpec("v2-zoom-in")]), "motion LoRA 'v2-zoom-in' is not present"),
])
def test_long_video_settings_are_checked_before_loading(tiny_preset, overrides, message):
    with pytest.raises((ConfigError, ModelNotAvailableError), match=re.escape(message)):
        check_inputs(resolve_settings(settings(num_frames=8, **overrides), tiny_preset), tiny_preset)


# 3. FreeInit


def test_free_init_changes_frames_and_is_switched_off_again(tiny_renderer, tiny_pipeline):
    before = state(tiny_pipeline)
    plain = tiny_renderer.render(resolve_settings(settings(num_frames=8), tiny_renderer.preset), progress=False)
    steps = []
    hook = tiny_pipeline.unet.register_forward_hook(lambda *a: steps.append(1))
    try:
        two = tiny_renderer.render(resolve_settings(settings(num_frames=8, free_init=2), tiny_renderer.preset),
                                   progress=False)
    finally:
        hook.remove()
    assert len(steps) == 2  # two passes of one step each
    assert not np.array_equal(plain, two)
    assert_pipeline_restored(tiny_pipeline, before)


# 4. Motion LoRAs


def _original_name(diffusers_name: str) -> str:
    """diffusers motion-module path -> original AnimateDiff path (the inverse of the loader's renames)."""
    name = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", diffusers_name)
    return name.replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")


def write_motion_lora(pipeline, path, layout="original", rank=2, seed=0):
    """A random motion LoRA on every motion-module attention projection, as AnimateDiff's own files lay it out."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in pipeline.unet.named_modules():
        match = re.match(r"^(.+\.motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12])\.(to_q|to_k|to_v|to_out\.0)$", name)
        if not match:
            continue
        projection = match[2].replace(".0", "")
        prefix = _original_name(match[1] + ".") if layout == "original" else match[1] + "."
        key = f"{prefix}processor.{projection}_lora"
        tensors[f"{key}.down.weight"] = 0.5 * torch.randn(rank, module.in_features, generator=generator)
        tensors[f"{key}.up.weight"] = 0.5 * torch.randn(module.out_features, rank, generator=generator)
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def motion_lora_file(tiny_pipeline, tmp_path_factory):
    return write_motion_lora(tiny_pipeline, tmp_path_factory.mktemp("mlora") / "v2_lora_Test.safetensors")


def test_motion_lora_strength_zero_equals_none(tiny_renderer, tiny_pipeline, motion_lora_file):
    before = state(tiny_pipeline)
    none = tiny_renderer.render(resolve_settings(settings(num_frames=8), tiny_renderer.preset), progress=False)
    zero = tiny_renderer.render(resolve_settings(
        settings(num_frames=8, motion_loras=[MotionLoraSpec(str(motion_lora_file), 0.0)]), tiny_renderer.preset),
        progress=False)
    full = tiny_renderer.render(resolve_settings(
        settings(num_frames=8, motion_loras=[MotionLoraSpec(str(motion_lora_file), 1.0)]), tiny_renderer.preset),
        progress=False)
    assert np.array_equal(none, zero)
    assert not np.array_equal(none, full)
    assert_pipeline_restored(tiny_pipeline, before)


@pytest.mark.parametrize("windows", [False, True])
def test_motion_lora_changes_only_motion_module_weights(tiny_pipeline, motion_lora_file, windows):
    before = state(tiny_pipeline)
    extra = dict(context_length=4) if windows else {}
    resolved = settings(num_frames=8, motion_loras=[MotionLoraSpec(str(motion_lora_file))], **extra)
    with long_video_applied(tiny_pipeline, resolved):
        during = {re.sub(r"\.module(?=\.)", "", k): v.clone() for k, v in tiny_pipeline.unet.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], during[k])}
    assert changed and all(".motion_modules." in k and re.search(r"\.attn[12]\.", k) for k in changed)
    assert len(changed) == 4 * len(motion_attention(tiny_pipeline)) * 2  # q, k, v, out of attn1 and attn2
    assert_pipeline_restored(tiny_pipeline, before)


def test_original_and_diffusers_layouts_bind_the_same_weights(tiny_pipeline, tmp_path):
    from cdvideo.motion_lora import bind_motion_lora, read_motion_lora

    original = write_motion_lora(tiny_pipeline, tmp_path / "o.safetensors", "original")
    diffusers = write_motion_lora(tiny_pipeline, tmp_path / "d.safetensors", "diffusers")
    a = bind_motion_lora(read_motion_lora(original), tiny_pipeline.unet, "o")
    b = bind_motion_lora(read_motion_lora(diffusers), tiny_pipeline.unet, "d")
    assert a.keys() == b.keys() and all(torch.equal(a[k][0], b[k][0]) for k in a)


def test_wrong_motion_lora_files_are_refused(tiny_pipeline, tmp_path):
    from cdvideo.motion_lora import bind_motion_lora, read_motion_lora

    spatial = tmp_path / "spatial.safetensors"
    save_file({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": torch.zeros(2, 32),
               "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": torch.zeros(32, 2)},
              str(spatial))
    with pytest.raises(WrongFileKindError, match="not a motion LoRA: use --lora"):
        read_motion_lora(spatial)
    other = tmp_path / "other.safetensors"
    save_file({"down_blocks.5.motion_modules.0.transformer_blocks.0.attn1.to_q.lora.down.weight": torch.zeros(2, 32),
               "down_blocks.5.motion_modules.0.transformer_blocks.0.attn1.to_q.lora.up.weight": torch.zeros(32, 2)},
              str(other))
    with pytest.raises(InjectionError, match="match no motion-module layer"):
        bind_motion_lora(read_motion_lora(other), tiny_pipeline.unet, str(other))


# 5. Distilled presets


@pytest.mark.parametrize("name,good,bad", [
    ("animatelcm", [4, 6, 8], [2, 3, 9, 25]),
    ("animatediff-lightning-1step", [1], [2, 4]),
    ("animatediff-lightning-2step", [2], [1, 4]),
    ("animatediff-lightning-4step", [4], [2, 8]),
    ("animatediff-lightning-8step", [8], [4, 25]),
])
def test_distilled_presets_take_only_their_step_counts(name, good, bad):
    preset = load_preset(name)
    assert preset.steps in preset.allowed_steps
    # Fully given settings: the presets' weights are not here, and steps are checked before anything is looked up.
    full = dict(prompt="a dog", model=name, negative_prompt="", num_frames=16, height=64, width=64, guidance_scale=1.0,
                fps=8, seed=0, scheduler=preset.scheduler)
    for steps in bad:
        with pytest.raises(ConfigError, match=rf"steps must be one of .* for the {name} preset .*got {steps}$"):
            check_inputs(RenderSettings(steps=steps, **full), preset)
    for steps in good:
        try:
            check_inputs(RenderSettings(steps=steps, **full), preset)
        except ModelNotAvailableError:
            pass  # past the step check: the weights are simply not downloaded here


def test_preset_weights_missing_offline_is_one_line():
    with pytest.raises(ModelNotAvailableError, match="hf download wangfuyun/AnimateLCM AnimateLCM_sd15_t2v_lora"):
        resolve_settings(RenderSettings(prompt="a dog", model="animatelcm"), load_preset("animatelcm"))
