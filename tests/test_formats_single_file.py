"""`--model FILE`: single-file checkpoints render like the model they were written from; other kinds and families are named."""

import json
from pathlib import Path

import pytest
import torch

from cdvideo.cli import main
from cdvideo.errors import ConfigError, ModelNotAvailableError, WrongFileKindError
from cdvideo.models import check_available, load_preset

FIXTURE = Path(__file__).parent / "fixtures" / "animatediff_v2_tiny.ckpt"


def ldm_file(path, text_encoder_prefix):
    """A skeleton LDM single file: the key families that tell SD 1.x, 2.x and XL apart."""
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 4, 3, 3),
               f"{text_encoder_prefix}.weight": torch.zeros(2)}, str(path))
    return path


def test_motion_module_given_as_model_is_named(tmp_path, capsys):
    with pytest.raises(WrongFileKindError, match="AnimateDiff motion module.*not a base model.*--motion"):
        load_preset(str(FIXTURE))
    assert main(["render", "--model", str(FIXTURE), "--prompt", "a dog", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "AnimateDiff motion module" in capsys.readouterr().err


@pytest.mark.parametrize("prefix, family", [("cond_stage_model.model.transformer", "SD 2.x"),
                                            ("conditioner.embedders.1.model", "SDXL")])
def test_other_families_name_the_dimension(tmp_path, prefix, family):
    path = ldm_file(tmp_path / "other.safetensors", prefix)
    with pytest.raises(ConfigError, match=rf"{family} single file.*where SD 1.5 and the AnimateDiff motion modules use 768"):
        load_preset(str(path))


def test_sd15_single_file_offline_without_configs_says_what_to_fetch(tmp_path):
    path = ldm_file(tmp_path / "dreambooth.safetensors", "cond_stage_model.transformer.text_model.embeddings")
    preset = load_preset(str(path))
    assert preset.base == str(path) and preset.motion_adapter == load_preset("sd15-animatediff-v2").motion_adapter
    with pytest.raises(ModelNotAvailableError, match="SD 1.5 configs for the single-file model"):
        check_available(preset)


# The success path: a real single file, written from the tiny model in LDM layout by tests/ldm_writer.py.

RENDER = ["render", "--num-frames", "2", "--height", "32", "--width", "32", "--steps", "2", "--seed", "3",
          "--prompt", "a dog running on the beach", "--format", "frames", "--quiet"]


@pytest.fixture(scope="module")
def tiny_single_files(tmp_path_factory):
    """The tiny model as one LDM state dict, written as .safetensors and as an LDM-style .ckpt."""
    from safetensors.torch import save_file

    from cdvideo.models.tiny import build_tiny_components
    from ldm_writer import check_round_trip, to_ldm

    components = build_tiny_components()
    checkpoint = to_ldm(components["unet"], components["vae"], components["text_encoder"])
    check_round_trip(components, checkpoint)
    root = tmp_path_factory.mktemp("single_file")
    save_file(checkpoint, str(root / "tiny.safetensors"))
    torch.save({"state_dict": checkpoint, "global_step": 0}, root / "tiny.ckpt")  # as LDM training writes it
    return {"checkpoint": checkpoint, "components": components,
            "safetensors": root / "tiny.safetensors", "ckpt": root / "tiny.ckpt"}


def frames(folder):
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(Path(folder).glob("*.png"))])


@pytest.fixture(scope="module")
def directory_frames(tmp_path_factory):
    """The reference: the same render from the tiny model's diffusers directory."""
    from cdvideo.models.tiny import ensure_tiny_model

    out = tmp_path_factory.mktemp("directory") / "frames"
    assert main(RENDER + ["--model", str(ensure_tiny_model()), "--motion", "builtin:tiny", "--out", str(out)]) == 0
    return frames(out)


def test_ldm_writer_matches_diffusers_conversion(tiny_single_files):
    from ldm_writer import check_round_trip

    from cdvideo.formats.sniff import sniff

    # diffusers' LDM -> diffusers converters give back every key and tensor, and read every LDM key.
    check_round_trip(tiny_single_files["components"], tiny_single_files["checkpoint"])
    keys = set(tiny_single_files["checkpoint"])
    assert {"model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
            "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.decoder.up.0.block.0.norm1.weight",
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"} <= keys
    assert tiny_single_files["checkpoint"]["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv
    for kind in ("safetensors", "ckpt"):
        assert str(sniff(tiny_single_files[kind])) == "base model (SD 1.x single file)"
    loaded = torch.load(tiny_single_files["ckpt"], weights_only=True)["state_dict"]
    assert loaded.keys() == keys


def test_model_single_file_renders_like_the_model_directory(tiny_single_files, directory_frames, tmp_path,
                                                            monkeypatch):
    """`--model FILE.safetensors` takes the default preset's base for configs: here the tiny model's directory."""
    from cdvideo.config import DEFAULT_MODEL
    from cdvideo.models import presets_dir

    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / f"{DEFAULT_MODEL}.yaml").write_text((presets_dir() / "tiny.yaml").read_text())
    monkeypatch.setenv("CDVIDEO_PRESETS", str(presets))
    out = tmp_path / "single"
    assert main(RENDER + ["--model", str(tiny_single_files["safetensors"]), "--out", str(out)]) == 0
    assert (frames(out) == directory_frames).all() and frames(out).shape == (2, 32, 32, 3)
    sidecar = json.loads((tmp_path / "single.json").read_text())
    assert sidecar["settings"]["model"] == str(tiny_single_files["safetensors"])


def test_weights_come_from_the_file_not_the_config_directory(tiny_single_files, tmp_path):
    """The configs directory holds weights too: a changed file must give changed models."""
    from safetensors.torch import save_file

    from cdvideo.formats.single_file import load_single_file
    from cdvideo.models.tiny import ensure_tiny_model

    changed = dict(tiny_single_files["checkpoint"])
    names = {  # component: (LDM name, diffusers name) of one weight each
        "unet": ("model.diffusion_model.out.2.bias", "conv_out.bias"),
        "vae": ("first_stage_model.decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight"),
        "text_encoder": ("cond_stage_model.transformer.text_model.final_layer_norm.weight",
                         "final_layer_norm.weight"),
    }
    for ldm, _ in names.values():
        changed[ldm] = changed[ldm] + 1.0
    save_file(changed, str(tmp_path / "changed.safetensors"))
    parts = load_single_file(tmp_path / "changed.safetensors", ensure_tiny_model(), dtype=torch.float32)
    for component, (ldm, diffusers) in names.items():
        loaded = parts[component].state_dict()[diffusers]
        assert torch.equal(loaded, changed[ldm].reshape(loaded.shape)), component


def test_ckpt_with_preset_single_file_config_renders_like_the_model_directory(tiny_single_files, directory_frames,
                                                                              tmp_path):
    """A preset naming a .ckpt base and a local configs directory (`single_file_config`)."""
    from cdvideo.models import load_preset, missing_weights, presets_dir
    from cdvideo.models.tiny import ensure_tiny_model

    preset_file = tmp_path / "dreambooth.yaml"
    preset_file.write_text((presets_dir() / "tiny.yaml").read_text()
                           .replace("base: builtin:tiny", f"base: {tiny_single_files['ckpt']}")
                           + f"single_file_config: {ensure_tiny_model()}\n")
    assert load_preset(str(preset_file)).base == str(tiny_single_files["ckpt"])
    assert missing_weights(load_preset(str(preset_file))) == []
    out = tmp_path / "ckpt"
    assert main(RENDER + ["--model", str(preset_file), "--out", str(out)]) == 0
    assert (frames(out) == directory_frames).all()
