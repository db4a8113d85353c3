"""The command line as a user meets it: the quickstart, --from, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cdvideo.cli import main
from cdvideo.concept import save_concept
from cdvideo.export import read_video
from conftest import EXAMPLE_CONCEPT, make_concept

QUICK = ["--model", "tiny", "--num-frames", "8", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_quickstart_command_writes_video_and_sidecar(capsys, tmp_path):
    out = tmp_path / "outputs" / "dog.mp4"
    code, stdout, _ = run_cli(capsys, "render", "--model", "tiny", "--concept", EXAMPLE_CONCEPT,
                              "--prompt", "a <new1> dog running on the beach", "--out", str(out), "--quiet")
    assert code == 0
    frames, fps = read_video(out)
    assert frames.shape == (8, 64, 64, 3) and fps == 8  # the tiny preset's defaults
    sidecar = json.loads((tmp_path / "outputs" / "dog.json").read_text())
    assert sidecar["settings"]["prompt"] == "a <new1> dog running on the beach"
    assert f"wrote {out}" in stdout


def test_from_sidecar_reproduces_the_frames(capsys, tmp_path):
    first = tmp_path / "first"
    assert run_cli(capsys, "render", *QUICK, "--prompt", "a <new1> dog", "--concept", f"{EXAMPLE_CONCEPT}:0.5",
                   "--format", "frames", "--out", str(first))[0] == 0
    again = tmp_path / "again"
    assert run_cli(capsys, "render", "--from", str(tmp_path / "first.json"), "--out", str(again), "--quiet")[0] == 0
    assert np.array_equal(read_video(first)[0], read_video(again)[0])
    # A flag given with --from overrides the recorded setting.
    other = tmp_path / "other"
    assert run_cli(capsys, "render", "--from", str(tmp_path / "first.json"), "--seed", "99",
                   "--out", str(other), "--quiet")[0] == 0
    assert not np.array_equal(read_video(first)[0], read_video(other)[0])


@pytest.fixture
def no_model_loading(monkeypatch):
    """Validation errors must come before any model is loaded."""
    import cdvideo.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before validation finished")

    monkeypatch.setattr(cdvideo.models, "load_pipeline", refuse)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--height", "60"], "height must be a positive multiple of 8 (latents are 1/8 of the frame), got 60"),
        (["--num-frames", "40", "--context-length", "40"], "context_length must be between 1 and 32"),
        (["--prompt-travel", "0: a dog | 99: a cat"], "prompt_travel: frame 99 is past the last frame"),
        (["--concept", "missing.safetensors"], "missing.safetensors"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--scheduler", "heun"], "unknown scheduler 'heun'"),
        (["--out", "video.avi"], "cannot tell the video format"),
        (["--prompt", " "], "prompt is empty"),
        (["--guidance-rescale", "1.5"], "guidance_rescale must be between 0 and 1"),
        (["--concept-start", "1"], "concept_start must be at least 0 and below 1"),
    ],
)
def test_bad_input_is_one_line_before_loading(capsys, no_model_loading, tmp_path, args, message):
    argv = ["render", *QUICK, "--prompt", "a dog", "--out", str(tmp_path / "x.mp4"), *args]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "x.mp4").exists()


def test_offline_without_weights_names_model_and_way_out(capsys, no_model_loading, tmp_path):
    code, _, err = run_cli(capsys, "render", "--prompt", "a dog", "--out", str(tmp_path / "x.mp4"))
    assert code == 2 and err.count("\n") == 1
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in err and "HF_HUB_OFFLINE" in err
    assert "hf download" in err and "--model tiny" in err


def test_corrupt_concept_is_one_line(capsys, no_model_loading, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(open(EXAMPLE_CONCEPT, "rb").read()[:500])
    code, _, err = run_cli(capsys, "render", *QUICK, "--prompt", "a dog", "--concept", str(bad),
                           "--out", str(tmp_path / "x.mp4"))
    assert code == 2 and "bad.safetensors" in err and "corrupt or truncated" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "change,message",
    [
        ("token_in_vocab", "already in the tokenizer's vocabulary"),
        ("wrong_base", "different base model"),
        ("unmatched", "match no module of this UNet"),
    ],
)
def test_concept_that_does_not_fit_is_one_line(capsys, tiny_pipeline, tmp_path, change, message):
    concept = make_concept(tiny_pipeline, token="dog</w>" if change == "token_in_vocab" else "<new9>")
    name = next(iter(concept.deltas))
    if change == "wrong_base":
        concept.deltas[name] = torch.zeros(320, 768)
    if change == "unmatched":
        concept.deltas["down_blocks.3.attentions.0.transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(4, 4)
    path = save_concept(concept, tmp_path / "c.safetensors")
    out = tmp_path / "x.mp4"
    code, _, err = run_cli(capsys, "render", *QUICK, "--prompt", "a cat", "--concept", str(path), "--out", str(out))
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_process_exit_code_and_debug_traceback(tmp_path):
    argv = [sys.executable, "-m", "cdvideo", "render", *QUICK, "--prompt", "a dog", "--height", "60",
            "--out", str(tmp_path / "x.mp4")]
    quiet = subprocess.run(argv, capture_output=True, text=True)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == ["error: height must be a positive multiple of 8 "
                                                 "(latents are 1/8 of the frame), got 60"]
    debug = subprocess.run(argv, capture_output=True, text=True, env={**__import__("os").environ, "CDVIDEO_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_env_reports_versions_and_offline_presets(capsys):
    code, out, _ = run_cli(capsys, "env", "--json")
    info = json.loads(out)
    assert code == 0
    assert {"python", "torch", "diffusers", "transformers", "accelerate"} <= set(info["versions"])
    assert "cpu" in info["devices"]
    assert info["presets"]["tiny"] == "available offline"
    assert "not in the Hugging Face cache" in info["presets"]["sd15-animatediff-v2"]


def test_concept_inspect_shows_tokens_and_fit(capsys):
    code, out, _ = run_cli(capsys, "concept", "inspect", EXAMPLE_CONCEPT, "--model", "tiny")
    assert code == 0
    assert "token <new1>: class word 'dog'" in out
    assert "12 parameters in 6 cross-attention modules" in out
    assert "matches the concept's" in out
