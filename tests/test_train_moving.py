"""`cdvideo train --moving-clips`: each still clip's subject travels over its photo's background, its caption naming
the way, so the concept is not taught to stand still."""

import pytest
import torch

from cdvideo.cli import main
from cdvideo.errors import ConfigError
from cdvideo.train import train
from test_subject_losses import make_masked_images, spy_prompts, tiny_config

MOVING = "a {token} {class_word} {motion} on grass"


def photo(size=32, top=10, left=4, side=12):
    """A yellow square subject on a black backdrop, as (3, s, s) in [-1, 1] with its (1, s, s) mask."""
    image = torch.full((3, size, size), -0.8)
    image[:, top : top + side, left : left + side] = torch.tensor([0.84, 0.6, -0.7])[:, None, None]
    subject = torch.zeros(1, size, size)
    subject[:, top : top + side, left : left + side] = 1.0
    return image, subject


@pytest.mark.parametrize("move", ["left", "right", "up", "down"])
def test_the_subject_travels_the_asked_way_and_leaves_the_backdrop_behind(move):
    from cdvideo.train.data import moving_clip

    image, subject = photo()
    clip = moving_clip(image, subject, move, 2, 8, torch.Generator().manual_seed(0))
    assert clip.shape == (3, 8, 32, 32)
    boxes = []
    for k in range(8):
        frame = clip[:, k]
        yellow = (frame[0] > 0).nonzero()
        assert len(yellow) == 12 * 12  # the whole subject in every frame: its path was kept inside the picture
        boxes.append((int(yellow[:, 0].min()), int(yellow[:, 1].min())))
        # everything else is the backdrop, also where the subject stood in the photo
        assert torch.all(frame[:, frame[0] <= 0] == -0.8)
    steps = {(b[0] - a[0], b[1] - a[1]) for a, b in zip(boxes, boxes[1:])}
    assert steps == {{"left": (0, -2), "right": (0, 2), "up": (-2, 0), "down": (2, 0)}[move]}


def test_a_still_clip_is_the_photo_repeated_and_a_subject_too_big_for_the_path_is_centred():
    from cdvideo.train.data import moving_clip

    image, subject = photo()
    still = moving_clip(image, subject, "still", 2, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(still[:, k], image) for k in range(4))
    # A 24 px subject moving 14 px in a 32 px picture cannot stay inside: the path is centred on where it stood.
    image, subject = photo(top=4, left=4, side=24)
    clip = moving_clip(image, subject, "right", 2, 8, torch.Generator().manual_seed(0))
    lefts = [int((clip[0, k] > 0).nonzero()[:, 1].min()) for k in range(8)]
    rights = [int((clip[0, k] > 0).nonzero()[:, 1].max()) for k in range(8)]
    assert lefts[0] == 0 and rights[-1] == 31  # it is cut by one edge at the start and by the other at the end
    assert rights[0] == 27 - 7 and lefts[-1] == 4 + 7  # half the path each side of the photo's own place (4..27)


def test_training_names_each_clip_s_motion_and_learns_another_concept(tmp_path, monkeypatch):
    from cdvideo.concept import load_concept

    images = make_masked_images(tmp_path / "dog", count=2)
    seen = spy_prompts(monkeypatch)
    config = tiny_config(images, tmp_path / "moving.safetensors", frames=3, moving_clips=0.125, augment=False,
                         steps=12, instance_prompt=MOVING)
    moving = load_concept(train(config, progress=False).concept)
    assert moving.training["moving_clips"] == 0.125 and moving.training["frames"] == 3
    # Every way comes up; a clip that stays says nothing; no caption keeps the placeholder.
    assert set(seen) == {f"a <new1> dog moving {way} on grass" for way in ("left", "right", "up", "down")} \
        | {"a <new1> dog on grass"}
    # Still clips of the same photos (the same seed) train another concept.
    still = load_concept(train(tiny_config(images, tmp_path / "still.safetensors", frames=3, augment=False, steps=12,
                                           instance_prompt="a {token} {class_word} on grass"), progress=False).concept)
    assert any(not torch.equal(moving.deltas[k], still.deltas[k]) for k in still.deltas)


def test_moving_clips_refuse_what_they_cannot_use_in_one_line_before_loading(tmp_path, capsys, no_model_loading):
    masked = make_masked_images(tmp_path / "dog")
    out = tmp_path / "x.safetensors"

    def refused(match, **overrides):
        settings = dict(frames=3, moving_clips=0.125, augment=False, instance_prompt=MOVING)
        settings.update(overrides)
        with pytest.raises(ConfigError, match=match):
            train(tiny_config(masked, out, **settings), progress=False)

    refused(r"needs captions that name \{motion\}", instance_prompt="a {token} {class_word}")
    refused(r"a caption names \{motion\}, which only --moving-clips fills", moving_clips=0.0)
    refused(r"rules out random rescale \(pass --no-augment\)", augment=True)
    refused(r"rules out --loss-on-subject", loss_on_subject=True)
    refused(r"in \[0, 0.5\)", moving_clips=0.5)
    refused(r"this model trains single images: pass --frames 8", frames=1)
    for path in masked.glob("*.mask.png"):
        path.unlink()
    refused("--moving-clips needs subject masks: put NAME.mask.png")
    code = main(["train", "--images", str(masked), "--class-word", "dog", "--out", str(out), "--model", "tiny",
                 "--frames", "3", "--moving-clips", "0.1", "--no-augment"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "needs subject masks" in err[0]
    assert not out.exists()


def test_the_documented_shapes_training_command_runs_as_written(tmp_path):
    """docs/personalization.md's Shapes training command (the one the example concept was trained with), on five photos
    of the world's two-tone circle with their masks, shortened to 2 steps: it trains, and the concept records what it
    was trained with."""
    import re
    import shlex
    from pathlib import Path

    from cdvideo.concept import load_concept
    from cdvideo.shapes.world import CONCEPT
    from conftest import load_script

    doc = (Path(__file__).resolve().parents[1] / "docs" / "personalization.md").read_text()
    block = re.search(r"\n    (cdvideo train --model shapes .*?)\n    cdvideo render", doc, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))
    photos = load_script("shapes_personalization").write_training_images(tmp_path / "photos", CONCEPT)  # with masks
    argv = [a.replace("photos/", str(photos)).replace("circle.safetensors", str(tmp_path / "circle.safetensors"))
            for a in argv[1:]]
    assert "--steps" not in argv  # the model's training defaults give the rest
    assert main(argv + ["--steps", "2", "--checkpoint-every", "2", "--no-validation-video", "--device", "cpu"]) == 0
    training = load_concept(tmp_path / "circle.safetensors").training
    assert training["moving_clips"] == 0.0625 and training["frames"] == 8 and training["binding"] == "token"
    assert training["images"] == [20]  # each photo on black, white, red and green; yellow and blue, its own, are skipped
