"""The commands that take files from other tools: concept convert, render --concept/--lora/--motion."""

import json
from pathlib import Path

import numpy as np
import pytest

from cdvideo.cli import main
from formats_fixtures import peft_to_kohya, trained_unet, write_classdiffusion_output, write_peft_lora

FIXTURE = Path(__file__).parent / "fixtures" / "animatediff_v2_tiny.ckpt"
RENDER = ["render", "--model", "tiny", "--num-frames", "2", "--height", "32", "--width", "32", "--steps", "2",
          "--seed", "7", "--format", "frames", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from cdvideo.models.tiny import ensure_tiny_model

    root = tmp_path_factory.mktemp("foreign")
    model_dir = ensure_tiny_model()
    write_classdiffusion_output(root / "classdiffusion", trained_unet(model_dir), 32, safetensors=True)
    (root / "lora").mkdir()
    peft = write_peft_lora(root / "lora", model_dir)
    return {"classdiffusion": root / "classdiffusion", "lora": peft_to_kohya(peft, root / "style.safetensors")}


def frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_convert_then_render_equals_rendering_the_output_directory(files, tmp_path, capsys):
    concept = tmp_path / "dog.safetensors"
    assert main(["concept", "convert", str(files["classdiffusion"]), "--base", "tiny", "--out", str(concept),
                 "--class-word", "dog"]) == 0
    assert "tokens <new1>" in capsys.readouterr().out
    assert main(["concept", "inspect", str(concept), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tokens"]["<new1>"]["class_word"] == "dog" and info["changed_parameters"] == 12
    assert info["base_model"] == "builtin:tiny" and info["base_fingerprint"]

    prompt = ["--prompt", "a <new1> dog"]
    assert main(RENDER + prompt + ["--concept", str(concept), "--out", str(tmp_path / "a")]) == 0
    # The output directory directly: converted in memory against the loaded base.
    assert main(RENDER + prompt + ["--concept", str(files["classdiffusion"]), "--out", str(tmp_path / "b")]) == 0
    assert np.array_equal(frames(tmp_path / "a"), frames(tmp_path / "b"))
    sidecar = json.loads((tmp_path / "b.json").read_text())
    assert sidecar["concepts"][0]["sha256"] and sidecar["concepts"][0]["base_fingerprint"] == info["base_fingerprint"]


def test_render_with_original_motion_module_lora_and_concept(files, tmp_path):
    out = tmp_path / "all"
    assert main(RENDER + ["--prompt", "a <new1> dog", "--concept", str(files["classdiffusion"]),
                          "--lora", f"{files['lora']}:0.5", "--motion", str(FIXTURE), "--out", str(out)]) == 0
    sidecar = json.loads((tmp_path / "all.json").read_text())
    assert sidecar["settings"]["loras"] == [{"path": str(files["lora"]), "strength": 0.5}]
    assert sidecar["loras"][0]["layout"] == "kohya"
    assert sidecar["settings"]["motion_adapter"] == str(FIXTURE)
    assert frames(out).shape == (2, 32, 32, 3)


def test_lora_given_as_concept_is_one_line_error(files, tmp_path, capsys):
    assert main(RENDER + ["--prompt", "a dog", "--concept", str(files["lora"]), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "is a LoRA (kohya)" in error and "--lora" in error


def test_concept_given_as_lora_is_one_line_error(files, tmp_path, capsys):
    args = ["--prompt", "a dog", "--lora", str(files["classdiffusion"] / "<new1>.bin"), "--out", str(tmp_path / "x")]
    assert main(RENDER + args) == 2
    assert "textual inversion embedding" in capsys.readouterr().err


def test_convert_refuses_a_motion_module(tmp_path, capsys):
    assert main(["concept", "convert", str(FIXTURE), "--base", "tiny", "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "AnimateDiff motion module" in capsys.readouterr().err and not (tmp_path / "c.safetensors").exists()
