"""A model preset's `train_defaults`: what `cdvideo train` takes where no flag or --config key gives a value."""

import shlex
import sys

import pytest

from cdvideo.cli import build_parser
from cdvideo.cli.train import config_from_args
from cdvideo.errors import ConfigError
from cdvideo.models import load_preset, presets_dir
from cdvideo.train.config import TrainConfig


def parsed(argv: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


# What a run names itself (its data, files, seed and bookkeeping) rather than how it trains.
RUN_ONLY = ("concepts", "out", "output_dir", "from_model", "seed", "checkpoint_every", "validation_video", "device")


# The measurement script's arguments that its `cdvideo train` commands use (its defaults).
SCRIPT_ARGS = type("Args", (), {"model": "shapes", "steps": 1500, "learning_rate": 1e-3, "device": "cpu"})()


def training_settings(config: TrainConfig) -> dict:
    """The settings that decide the trained concept, the model's choices made explicit (frames 0 and resolution 0
    mean the preset's)."""
    preset = load_preset(config.model)
    settings = {k: v for k, v in config.to_dict().items() if k not in RUN_ONLY}
    settings["frames"] = settings["frames"] or max(preset.train_frames, 1)
    settings["resolution"] = settings["resolution"] or preset.height
    settings["initializer_token"] = settings["initializer_token"].format(class_word=config.concepts[0].class_word)
    return settings


def test_the_short_shapes_command_trains_as_the_measured_one(tmp_path):
    """`cdvideo train --model shapes --images DIR --class-word circle` with no other flag is the command the tables
    measured (the script's `defaults` row), setting for setting: the model's defaults carry the rest."""
    from conftest import load_script

    script = load_script("shapes_personalization")
    concept = script.concept_of("circle")
    flags = script.TRAININGS[script.ROWS["defaults"]["training"]]
    measured = script.train_command(SCRIPT_ARGS, tmp_path / "photos", concept, flags, tmp_path / "m.safetensors", 42)
    assert measured[:4] == [sys.executable, "-m", "cdvideo", "train"]
    short = parsed(["--model", "shapes", "--images", str(tmp_path / "photos"), "--class-word", "circle",
                    "--out", str(tmp_path / "s.safetensors")])
    assert training_settings(short) == training_settings(parsed(measured[4:]))
    assert "backgrounds" in short.from_model and "moving_clips" in short.from_model


def test_flags_and_config_files_override_the_model_defaults(tmp_path):
    settings = tmp_path / "train.yaml"
    settings.write_text("steps: 40\nbackgrounds: ''\n")
    config = parsed(["--model", "shapes", "--images", "p", "--class-word", "circle", "--out", "c.safetensors",
                     "--config", str(settings), "--learning-rate", "0.01", "--augment"])
    assert (config.steps, config.backgrounds, config.learning_rate, config.augment) == (40, "", 0.01, True)
    assert config.moving_clips == 0.0625 and "moving_clips" in config.from_model
    assert not {"steps", "backgrounds", "learning_rate", "augment"} & set(config.from_model)
    # --augment with the model's moving clips: refused in one line that names where the clips came from
    with pytest.raises(ConfigError, match=r"--moving-clips is a training default of model shapes: pass --moving-clips 0"):
        config.check()


def test_a_model_without_train_defaults_keeps_the_recipe():
    """SD 1.5 and the tiny model carry none: ClassDiffusion's official settings, nothing taken from the model."""
    for model in ("tiny", "sd15-animatediff-v2"):
        config = parsed(["--model", model, "--images", "p", "--class-word", "dog", "--out", "d.safetensors"])
        assert config.from_model == [] and config.steps == 500 and config.initializer_token == "ktn"
        assert config.instance_prompt == "photo of a {token} {class_word}" and config.augment


def test_an_unknown_train_default_is_refused_naming_it(tmp_path):
    model = tmp_path / "mine.yaml"
    model.write_text((presets_dir() / "tiny.yaml").read_text() + "\ntrain_defaults:\n  stepz: 10\n")
    with pytest.raises(ConfigError, match=r"model mine: train_defaults has unknown setting\(s\) 'stepz'"):
        parsed(["--model", str(model), "--images", "p", "--class-word", "dog", "--out", "d.safetensors"])
    model.write_text((presets_dir() / "tiny.yaml").read_text() + "\ntrain_defaults:\n  out: x.safetensors\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) 'out'"):
        parsed(["--model", str(model), "--images", "p", "--class-word", "dog", "--out", "d.safetensors"])


def test_the_run_prints_the_defaults_it_took_as_flags(tmp_path, capsys):
    """The start of a run says what the model added, as flags a user can copy and change; an error it causes then
    says which defaults to drop (here: photos without masks, which both the painting and the moving clips need)."""
    from cdvideo.cli import main
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in "abc":
        Image.new("RGB", (32, 32), (25, 25, 25)).save(photos / f"{name}.png")
    code = main(["train", "--model", "shapes", "--images", str(photos), "--class-word", "circle",
                 "--out", str(tmp_path / "c.safetensors"), "--device", "cpu"])
    out, err = capsys.readouterr()
    line = next(l for l in out.splitlines() if l.startswith("model shapes's training defaults: "))
    words = shlex.split(line.split(": ", 1)[1])
    assert words[words.index("--moving-clips") + 1] == "0.0625" and "--no-augment" in words
    assert words[words.index("--initializer-token") + 1] == "{class_word}"
    assert code != 0 and len(err.strip().splitlines()) == 1
    # both mask-needing defaults named at once, with what turns each off, so a second try does not stop again
    assert ("--backgrounds and --moving-clips need subject masks" in err and "are training defaults of model shapes: "
            "pass --backgrounds '' --moving-clips 0 and an --instance-prompt without {background} {motion} to train "
            "without" in err)
    # as told (a caption of the user's own, the two options off), the same photos train
    assert main(["train", "--model", "shapes", "--images", str(photos), "--class-word", "circle", "--out",
                 str(tmp_path / "d.safetensors"), "--device", "cpu", "--backgrounds", "", "--moving-clips", "0",
                 "--instance-prompt", "a {token} {class_word} on a black background", "--steps", "1",
                 "--no-validation-video", "--quiet"]) == 0
    assert (tmp_path / "d.safetensors").is_file()
    assert not (tmp_path / "c.safetensors").exists()


def test_the_model_directory_carries_the_shapes_training_defaults():
    """The shipped model directory (`--model path/to/it`) trains as `--model shapes` does."""
    from cdvideo.models import shapes_model_dir

    assert load_preset(str(shapes_model_dir())).train_defaults == load_preset("shapes").train_defaults


def test_each_token_starts_from_its_own_class_word(tmp_path):
    """--initializer-token "{class_word}" starts each concept's token from its class word (nothing trained at
    learning rate 0, so the written embeddings are the starting ones); a word in other braces is refused."""
    import torch

    from cdvideo.concept import load_concept
    from cdvideo.train import ConceptData, train
    from test_train import load_components, make_images, tiny_config

    concepts = [ConceptData(str(make_images(tmp_path / "dog")), "dog"), ConceptData(str(make_images(tmp_path / "cat")), "cat")]
    config = tiny_config(None, tmp_path / "two.safetensors", concepts=concepts, steps=1, learning_rate=0.0,
                         initializer_token="{class_word}")
    train(config, progress=False)
    parts = load_components()
    table = parts["text_encoder"].get_input_embeddings().weight
    written = load_concept(tmp_path / "two.safetensors").tokens
    for token, word in (("<new1>", "dog"), ("<new2>", "cat")):
        ids = parts["tokenizer"].encode(word, add_special_tokens=False)
        assert torch.equal(written[token].reshape(-1), table[ids].mean(dim=0).detach()), word
    assert not torch.equal(written["<new1>"], written["<new2>"])
    with pytest.raises(ConfigError, match=r"initializer_token '\{class\}': give a word, or \{class_word\}"):
        TrainConfig(concepts=concepts, out="x.safetensors", initializer_token="{class}").check()


def test_the_script_s_older_variants_train_without_the_new_defaults(tmp_path):
    """scripts/shapes_personalization.py's rows from before session 17 (here still clips on black) pass the
    neutral values of what the model's defaults added since, so their tables keep their meaning; and the concepts
    cached under the commands recorded before (no such flags) are still reused."""
    from conftest import load_script

    script = load_script("shapes_personalization")
    command = script.train_command(SCRIPT_ARGS, tmp_path / "photos", script.concept_of("circle"), script.TRAININGS["token_video"],
                                   tmp_path / "c.safetensors", 42)
    config = parsed(command[4:])
    assert (config.backgrounds, config.moving_clips, config.frames) == ("", 0.0, 8)
    assert config.instance_prompt == "a {token} {class_word} on a black background"
    assert command[-4:] == ["--backgrounds", "", "--moving-clips", "0"]  # the variant names its own --frames 8
    recorded_before = command[: command.index("--backgrounds")]  # session 11-16 recorded no such flags
    assert script.same_training(recorded_before, command)
    assert not script.same_training(recorded_before + ["--moving-clips", "0.0625"], command)


def test_a_run_resumes_whether_a_setting_came_from_the_model_or_a_flag(tmp_path, capsys):
    """Started with every flag typed (the long command), resumed with the model's defaults giving them (the short
    one): the same settings, so it resumes; a different value is still refused, naming the setting."""
    from cdvideo.cli import main
    from test_train import SIZE, make_images

    model = tmp_path / "tinier.yaml"
    model.write_text((presets_dir() / "tiny.yaml").read_text() + "\ntrain_defaults:\n  spl_weight: 0.5\n")
    out = tmp_path / "dog.safetensors"
    common = ["train", "--images", str(make_images(tmp_path / "dog")), "--class-word", "dog", "--out", str(out),
              "--model", str(model), "--resolution", str(SIZE), "--checkpoint-every", "1", "--no-validation-video",
              "--device", "cpu", "--quiet"]
    assert main(common + ["--steps", "1", "--spl-weight", "0.5"]) == 0
    assert main(common + ["--steps", "2", "--resume"]) == 0
    capsys.readouterr()
    assert main(common + ["--steps", "3", "--resume", "--spl-weight", "1"]) != 0
    err = capsys.readouterr().err
    assert "cannot resume" in err and "spl_weight: 0.5 -> 1.0" in err and len(err.strip().splitlines()) == 1
