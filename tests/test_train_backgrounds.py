"""`cdvideo train --backgrounds`: photos in several contexts made from the given ones (each photo painted on plain
backgrounds, its caption naming each)."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from cdvideo.cli import main
from cdvideo.config import parse_backgrounds
from cdvideo.errors import ConfigError
from cdvideo.train import train
from test_subject_losses import make_masked_images, spy_prompts, tiny_config

TWO = "white=#f0f0f0, red=#dc2828"


def test_backgrounds_are_parsed_and_a_bad_entry_is_named():
    assert parse_backgrounds("black=#191919, white=F0F0F0") == {"black": (25, 25, 25), "white": (240, 240, 240)}
    for bad in ("white", "white=#f0f0", "=#f0f0f0", "white=#f0f0fg", "white=#f0f0f0, red=#dc28"):
        with pytest.raises(ConfigError, match="backgrounds: write NAME=#RRGGBB"):
            parse_backgrounds(bad)


def test_each_photo_is_painted_on_each_colour_that_stands_apart_from_its_subject():
    from cdvideo.train.data import recolour_backgrounds

    image = np.full((20, 20, 3), 25, dtype=np.uint8)  # a black photo
    image[4:12, 4:12] = (235, 205, 40)  # a yellow subject...
    image[8:12, 4:12] = (40, 80, 220)  # ...with a blue lower half
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    mask[12, 4:12] = 100  # a soft edge: part subject, part background
    colours = parse_backgrounds("black=#191919, white=#f0f0f0, yellow=#ebcd28, blue=#2850dc, red=#dc2828")
    images, captions, masks = recolour_backgrounds([Image.fromarray(image)], ["a {token} on a {background} background"],
                                                   [Image.fromarray(mask)], colours)
    # yellow and blue would hide half of the subject each: skipped
    assert captions == [f"a {{token}} on a {name} background" for name in ("black", "white", "red")]
    inside, edge = mask == 255, mask == 100
    for painted, name in zip(images, ("black", "white", "red")):
        pixels = np.asarray(painted)
        assert np.array_equal(pixels[inside], image[inside])  # the subject as it was
        assert (pixels[mask == 0] == colours[name]).all()  # the background in the colour its caption names
        weight = 100 / 255  # the soft edge blends the photo and the colour by the mask
        blend = np.round(weight * image[edge].astype(float) + (1 - weight) * np.array(colours[name]))
        assert np.abs(pixels[edge].astype(float) - blend).max() <= 1
    assert all(np.array_equal(np.asarray(m), mask) for m in masks)  # the mask goes with each painted photo


def test_training_sees_every_photo_on_every_background_with_its_caption(tmp_path, monkeypatch):
    from cdvideo.concept import load_concept

    images = make_masked_images(tmp_path / "dog", count=2)
    seen = spy_prompts(monkeypatch)
    config = tiny_config(images, tmp_path / "dog.safetensors", backgrounds=TWO, steps=6, augment=False,
                         instance_prompt="a {token} {class_word} on a {background} background")
    result = train(config, progress=False)
    assert set(seen) == {"a <new1> dog on a white background", "a <new1> dog on a red background"}
    training = load_concept(result.concept).training
    assert training["images"] == [4] and training["backgrounds"] == TWO
    # A plain run learns another concept from the same photos.
    plain = train(dataclasses.replace(config, backgrounds="", out=str(tmp_path / "plain.safetensors"),
                                      output_dir=str(tmp_path / "plain-train"), instance_prompt="a {token} {class_word}"),
                  progress=False)
    a, b = load_concept(result.concept), load_concept(plain.concept)
    assert any(not np.array_equal(a.deltas[k].numpy(), b.deltas[k].numpy()) for k in b.deltas)


def test_backgrounds_refuse_what_they_cannot_use_before_loading(tmp_path, capsys, no_model_loading):
    masked = make_masked_images(tmp_path / "dog")
    with pytest.raises(ConfigError, match=r"--backgrounds needs captions that name \{background\}"):
        train(tiny_config(masked, tmp_path / "x.safetensors", backgrounds=TWO), progress=False)
    with pytest.raises(ConfigError, match=r"a caption names \{background\}, which only --backgrounds fills"):
        train(tiny_config(masked, tmp_path / "x.safetensors", instance_prompt="a {token} {class_word} on {background}"),
              progress=False)
    with pytest.raises(ConfigError, match=r"--backgrounds needs --keep last or all"):
        train(tiny_config(masked, tmp_path / "x.safetensors", backgrounds=TWO, keep="best",
                          instance_prompt="a {token} {class_word} on {background}"), progress=False)
    for path in masked.glob("*.mask.png"):
        path.unlink()
    with pytest.raises(ConfigError, match="--backgrounds needs subject masks: put NAME.mask.png"):
        train(tiny_config(masked, tmp_path / "x.safetensors", backgrounds=TWO,
                          instance_prompt="a {token} {class_word} on {background}"), progress=False)
    with pytest.raises(ConfigError, match="instance_prompt .* may name {background}"):
        tiny_config(masked, tmp_path / "x.safetensors", instance_prompt="a {token} {class_word} {place}").check()
    code = main(["train", "--images", str(masked), "--class-word", "dog", "--out", str(tmp_path / "x.safetensors"),
                 "--model", "tiny", "--backgrounds", "white"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "NAME=#RRGGBB" in err[0]


def test_photos_all_on_one_plain_background_are_warned_about(tmp_path):
    """A concept learned on one backdrop is drawn poorly on others (docs/personalization.md): training says so, and
    names --backgrounds where the photos have masks; photos on several backgrounds, or --backgrounds, train quietly."""
    import warnings

    from cdvideo.train.data import load_image_folder, warn_if_one_backdrop

    def photos(folder, backgrounds, masks):
        folder.mkdir()
        for i, colour in enumerate(backgrounds):
            image = np.full((32, 32, 3), colour, dtype=np.uint8)
            image[20:32, 10 + i : 22 + i] = (235, 205, 40)  # a subject touching the border does not hide the backdrop
            Image.fromarray(image).save(folder / f"{i}.png")
            if masks:
                mask = np.zeros((32, 32), dtype=np.uint8)
                mask[20:32, 10 + i : 22 + i] = 255
                Image.fromarray(mask).save(folder / f"{i}.mask.png")
        return folder

    black = [(25, 25, 25), (27, 24, 25), (25, 25, 30)]
    with pytest.warns(UserWarning, match=r"all 3 photos .* same plain background \(#191919\).*--backgrounds 'NAME"):
        train(tiny_config(photos(tmp_path / "masked", black, True), tmp_path / "a.safetensors", steps=1), progress=False)
    with pytest.warns(UserWarning, match="give each a subject mask"):
        warn_if_one_backdrop(load_image_folder(photos(tmp_path / "plain", black, False)), "plain", has_masks=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_one_backdrop(load_image_folder(photos(tmp_path / "several", [(25, 25, 25), (240, 240, 240), (220, 40, 40)],
                                                      False)), "several", has_masks=False)
        noisy = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)  # photos, not backdrops
        warn_if_one_backdrop([Image.fromarray(n) for n in noisy], "noisy", has_masks=False)
        train(tiny_config(tmp_path / "masked", tmp_path / "b.safetensors", steps=1, backgrounds=TWO,
                          instance_prompt="a {token} {class_word} on a {background} background"), progress=False)
