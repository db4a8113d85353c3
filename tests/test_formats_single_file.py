"""`--model FILE`: single-file checkpoints are recognised; other kinds and other families are named."""

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
