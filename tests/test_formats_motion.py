"""Original AnimateDiff checkpoints: our offline conversion equals diffusers' `from_single_file`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cdvideo.cli import main
from cdvideo.config import RenderSettings
from cdvideo.errors import ConfigError, UnsafeFileError, WrongFileKindError
from cdvideo.formats.animatediff import detect_version, motion_adapter_from_checkpoint, read_motion_checkpoint
from cdvideo.render import render_frames

FIXTURE = Path(__file__).parent / "fixtures" / "animatediff_v2_tiny.ckpt"
# The fixture's architecture as its README states it (heads are not in the weights).
FIXTURE_CONFIG = dict(block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=32,
                      motion_num_attention_heads=2, use_motion_mid_block=True, motion_max_seq_length=32)


@pytest.fixture(scope="module")
def reference_adapter(tmp_path_factory):
    """diffusers' own reading of the fixture, with a local config so nothing is downloaded."""
    from diffusers import MotionAdapter

    config_dir = tmp_path_factory.mktemp("motion-config")
    MotionAdapter(**FIXTURE_CONFIG).save_config(config_dir)
    return MotionAdapter.from_single_file(str(FIXTURE), config=str(config_dir), local_files_only=True)


def test_fixture_loads_with_weights_only():
    data = torch.load(FIXTURE, weights_only=True)
    assert "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight" in data


def test_architecture_and_version_are_read_from_the_keys():
    checkpoint = read_motion_checkpoint(FIXTURE)
    config = checkpoint.config
    assert config["block_out_channels"] == [32, 64] and config["motion_layers_per_block"] == 2
    assert config["use_motion_mid_block"] is True and config["motion_max_seq_length"] == 32
    assert config["motion_num_attention_heads"] == 2  # from the JSON beside the file
    assert checkpoint.version.startswith("v2")
    assert detect_version(False, 24, (320, 640, 1280, 1280)).startswith("v1 (SD 1.5")
    assert detect_version(False, 32, (320, 640, 1280, 1280)).startswith("v3")


def test_v1_layout_is_detected(tmp_path):
    data = torch.load(FIXTURE, weights_only=True)
    v1 = {k: (v[:, :24] if k.endswith("pe") else v) for k, v in data.items() if not k.startswith("mid_block.")}
    torch.save(v1, tmp_path / "mm_v1_tiny.ckpt")
    checkpoint = read_motion_checkpoint(tmp_path / "mm_v1_tiny.ckpt")
    assert checkpoint.version.startswith("v1") and checkpoint.config["motion_max_seq_length"] == 24
    motion_adapter_from_checkpoint(tmp_path / "mm_v1_tiny.ckpt")  # loads: no mid block expected


def test_weights_equal_diffusers_from_single_file(reference_adapter):
    ours = motion_adapter_from_checkpoint(FIXTURE)
    expected, got = reference_adapter.state_dict(), ours.state_dict()
    assert got.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    for key, value in FIXTURE_CONFIG.items():
        assert ours.config[key] == reference_adapter.config[key] or list(ours.config[key]) == list(value)


def test_frames_equal_diffusers_from_single_file(reference_adapter, tiny_preset, tiny_pipeline):
    from diffusers import AnimateDiffPipeline, UNet2DConditionModel

    from cdvideo.models import load_pipeline, resolve_source

    settings = RenderSettings(prompt="a dog running", negative_prompt="", num_frames=4, height=32, width=32,
                              steps=2, guidance_scale=7.5, seed=4)
    ours = load_pipeline(tiny_preset, device="cpu", dtype=torch.float32, motion_adapter=str(FIXTURE))
    unet = UNet2DConditionModel.from_pretrained(resolve_source(tiny_preset.base), subfolder="unet")
    reference = AnimateDiffPipeline(vae=tiny_pipeline.vae, text_encoder=tiny_pipeline.text_encoder,
                                    tokenizer=tiny_pipeline.tokenizer, unet=unet, motion_adapter=reference_adapter,
                                    scheduler=ours.scheduler)
    ours.set_progress_bar_config(disable=True)
    reference.set_progress_bar_config(disable=True)
    a, b = render_frames(ours, settings, progress=False), render_frames(reference, settings, progress=False)
    print(f"largest pixel difference, our conversion vs from_single_file: {np.abs(a.astype(int) - b.astype(int)).max()}")
    assert np.array_equal(a, b)


def test_convert_command_writes_a_diffusers_directory(tmp_path, reference_adapter, capsys):
    from diffusers import MotionAdapter

    assert main(["motion", "convert", str(FIXTURE), "--out", str(tmp_path / "adapter")]) == 0
    assert "v2" in capsys.readouterr().out
    loaded = MotionAdapter.from_pretrained(tmp_path / "adapter")
    expected = reference_adapter.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert loaded.config.motion_num_attention_heads == 2


def test_motion_list_shows_registry_and_local_files(tmp_path, monkeypatch, capsys):
    shutil.copy(FIXTURE, tmp_path / "mm_sd_v15_v2.ckpt")
    shutil.copy(FIXTURE, tmp_path / "my_module.ckpt")
    monkeypatch.setenv("CDVIDEO_MOTION_MODULES", str(tmp_path))
    assert main(["motion", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"animatediff-v1-4", "animatediff-v1-5", "animatediff-v2", "animatediff-v3", "animatelcm",
            "v2-zoom-in", "v2-rolling-anticlockwise"} <= set(rows)
    assert rows["animatediff-v2"]["file_present"] and not rows["animatediff-v3"]["file_present"]
    assert rows["v2-zoom-in"]["kind"] == "motion_lora"
    assert rows[str(tmp_path / "my_module.ckpt")]["kind"].startswith("AnimateDiff motion module")


def test_motion_names_resolve_to_dropped_in_files_or_hub_ids(tmp_path, monkeypatch):
    from cdvideo.models import resolve_motion

    monkeypatch.setenv("CDVIDEO_MOTION_MODULES", str(tmp_path))
    assert resolve_motion("animatediff-v2") == "guoyww/animatediff-motion-adapter-v1-5-2"
    shutil.copy(FIXTURE, tmp_path / "mm_sd_v15_v2.ckpt")
    assert resolve_motion("animatediff-v2") == str(tmp_path / "mm_sd_v15_v2.ckpt")
    assert resolve_motion("some/hub-id") == "some/hub-id"
    with pytest.raises(ConfigError, match="motion lora for animatediff-v2"):
        resolve_motion("v2-zoom-in")


def test_max_frames_come_from_the_checkpoint(tiny_preset):
    from cdvideo.models import motion_max_frames

    assert motion_max_frames(tiny_preset, str(FIXTURE)) == 32


def test_checkpoint_with_a_config_object_is_refused(tmp_path):
    # Some early v3 files carry a non-tensor config object: weights_only refuses it, and so do we.
    data = torch.load(FIXTURE, weights_only=True)
    data["config"] = Path("not-a-tensor")
    torch.save(data, tmp_path / "v3_early.ckpt")
    with pytest.raises(UnsafeFileError, match="safetensors"):
        read_motion_checkpoint(tmp_path / "v3_early.ckpt")


def test_other_kind_given_as_motion_module_is_named(tmp_path):
    torch.save({"string_to_param": {"*": torch.ones(1, 768)}, "name": "x"}, tmp_path / "emb.pt")
    with pytest.raises(WrongFileKindError, match="textual inversion"):
        read_motion_checkpoint(tmp_path / "emb.pt")


def test_mistyped_local_motion_path_says_no_such_file(capsys, tmp_path):
    from cdvideo.cli import main

    code = main(["render", "--model", "tiny", "--motion", "models/Motion_Module/mm_sd_v15.ckpt", "--prompt", "a cat",
                 "--out", str(tmp_path / "x.mp4"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "models/Motion_Module/mm_sd_v15.ckpt is no local file" in err and err.count("\n") == 1
