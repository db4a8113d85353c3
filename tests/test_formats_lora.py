"""SD 1.5 LoRA (peft / diffusers / kohya) on the video pipeline: same frames as diffusers' own loader."""

import numpy as np
import pytest
import torch

from cdvideo.config import RenderSettings
from cdvideo.errors import ConfigError, InjectionError, WrongFileKindError
from cdvideo.formats.lora import bind_lora, read_lora
from cdvideo.inject import concepts_applied, loras_applied
from cdvideo.render import render_frames
from conftest import make_concept
from formats_fixtures import peft_to_kohya, write_peft_lora


def settings(prompt="a <new1> dog running"):
    return RenderSettings(prompt=prompt, negative_prompt="", num_frames=4, height=32, width=32, steps=2,
                          guidance_scale=7.5, seed=5)


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    from cdvideo.models.tiny import ensure_tiny_model

    root = tmp_path_factory.mktemp("lora")
    (root / "peft").mkdir()
    (root / "diffusers").mkdir()
    peft = write_peft_lora(root / "peft", ensure_tiny_model())
    return {
        "peft": peft,
        "diffusers": write_peft_lora(root / "diffusers", ensure_tiny_model(), diffusers_names=True),
        "kohya": peft_to_kohya(peft, root / "kohya.safetensors"),
    }


def state(pipeline):
    return {f"{c}.{k}": v.clone() for c in ("unet", "text_encoder")
            for k, v in getattr(pipeline, c).state_dict().items()}


def largest_difference(a, b):
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def diffusers_reference(pipeline, path, strength, prompt="a dog running"):
    """Frames with diffusers' own LoRA loader (peft layers, unmerged), then unloaded again."""
    pipeline.load_lora_weights(str(path), adapter_name="reference")
    pipeline.set_adapters(["reference"], adapter_weights=[strength])
    try:
        return render_frames(pipeline, settings(prompt), progress=False)
    finally:
        pipeline.unload_lora_weights()


@pytest.mark.parametrize("flavour", ["peft", "kohya"])
def test_frames_equal_diffusers_load_lora_weights(lora_files, tiny_pipeline, flavour):
    strength = 0.7
    before = state(tiny_pipeline)
    bound = bind_lora(read_lora(lora_files[flavour]), tiny_pipeline)
    with loras_applied(tiny_pipeline, [(bound, strength, flavour)]):
        ours = render_frames(tiny_pipeline, settings("a dog running"), progress=False)
    after = state(tiny_pipeline)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []  # taken off bit for bit
    reference = diffusers_reference(tiny_pipeline, lora_files[flavour], strength)
    difference = largest_difference(ours, reference)
    print(f"largest pixel difference, our merged {flavour} LoRA vs diffusers' loader: {difference}/255")
    assert difference <= 1


def test_older_diffusers_names_bind_to_the_same_changes(lora_files, tiny_pipeline):
    # Not compared with diffusers' loader: on this mixed file (`convert_state_dict_to_diffusers` leaves
    # proj_in/conv1 as lora_A/B and renames attention layers to `.lora.down`) it silently skips the
    # attention layers. The same LoRA under peft names is the reference instead.
    peft = bind_lora(read_lora(lora_files["peft"]), tiny_pipeline)
    older = bind_lora(read_lora(lora_files["diffusers"]), tiny_pipeline)
    assert older.keys() == peft.keys()
    for key, (up, down, scale) in peft.items():
        assert torch.equal(older[key][0], up) and torch.equal(older[key][1], down) and older[key][2] == scale


def test_lora_targets_text_encoder_and_spatial_unet_only(lora_files, tiny_pipeline):
    bound = bind_lora(read_lora(lora_files["kohya"]), tiny_pipeline)
    components = {component for component, _ in bound}
    assert components == {"unet", "text_encoder"}
    assert not any("motion_modules" in name for _, name in bound)


def test_strength_scales_the_effect_and_zero_changes_nothing(lora_files, tiny_pipeline):
    bound = bind_lora(read_lora(lora_files["peft"]), tiny_pipeline)
    plain = render_frames(tiny_pipeline, settings("a dog"), progress=False)
    with loras_applied(tiny_pipeline, [(bound, 0.0, "x")]):
        assert np.array_equal(render_frames(tiny_pipeline, settings("a dog"), progress=False), plain)
    with loras_applied(tiny_pipeline, [(bound, 1.0, "x")]):
        assert largest_difference(render_frames(tiny_pipeline, settings("a dog"), progress=False), plain) > 1


def test_lora_stacks_with_a_concept(lora_files, tiny_pipeline):
    before = state(tiny_pipeline)
    concept = make_concept(tiny_pipeline, seed=4)
    bound = bind_lora(read_lora(lora_files["peft"]), tiny_pipeline)
    with loras_applied(tiny_pipeline, [(bound, 1.0, "lora")]):
        with concepts_applied(tiny_pipeline, [(concept, 1.0, "concept")]):
            both = render_frames(tiny_pipeline, settings(), progress=False)
    assert [k for k in before if not torch.equal(before[k], state(tiny_pipeline)[k])] == []
    # Reference: the concept merged first, diffusers' unmerged LoRA layers loaded on top of it.
    with concepts_applied(tiny_pipeline, [(concept, 1.0, "concept")]):
        tiny_pipeline.load_lora_weights(str(lora_files["peft"]), adapter_name="reference")
        try:
            reference = render_frames(tiny_pipeline, settings(), progress=False)
        finally:
            tiny_pipeline.unload_lora_weights()
    difference = largest_difference(both, reference)
    print(f"largest pixel difference, LoRA + concept vs diffusers LoRA + concept: {difference}/255")
    assert difference <= 1


def test_sd2_lora_names_the_dimension_mismatch(tmp_path, tiny_pipeline):
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_down.weight": torch.ones(4, 1024), f"{name}.lora_up.weight": torch.ones(32, 4),
               f"{name}.alpha": torch.tensor(4.0)}, str(tmp_path / "sd2.safetensors"))
    with pytest.raises(InjectionError, match=r"attn2.to_k is 32x32 in the model but the LoRA is 32x1024"):
        bind_lora(read_lora(tmp_path / "sd2.safetensors"), tiny_pipeline)


def test_sdxl_and_lycoris_are_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(4, 768),
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(3072, 4)},
              str(tmp_path / "xl.safetensors"))
    with pytest.raises(ConfigError, match="SDXL"):
        read_lora(tmp_path / "xl.safetensors")
    save_file({"lora_unet_conv_in.hada_w1_a": torch.ones(4, 4)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(ConfigError, match="LyCORIS"):
        read_lora(tmp_path / "loha.safetensors")


def test_concept_given_as_lora_is_named(tmp_path, tiny_pipeline):
    from cdvideo.concept import save_concept

    save_concept(make_concept(tiny_pipeline), tmp_path / "dog.safetensors")
    with pytest.raises(WrongFileKindError, match="is a cdvideo concept, not a LoRA"):
        read_lora(tmp_path / "dog.safetensors")


def test_unmatched_layers_are_listed(tmp_path, tiny_pipeline):
    from safetensors.torch import save_file

    name = "lora_unet_input_blocks_1_1_proj_in"  # LDM naming: not this model's module names
    save_file({f"{name}.lora_down.weight": torch.ones(4, 32), f"{name}.lora_up.weight": torch.ones(32, 4)},
              str(tmp_path / "ldm.safetensors"))
    with pytest.raises(InjectionError, match="match no layer of this model: unet.input_blocks_1_1_proj_in"):
        bind_lora(read_lora(tmp_path / "ldm.safetensors"), tiny_pipeline)
