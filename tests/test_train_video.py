"""Video-aware training (`cdvideo train --frames N`): each photo a still clip through the motion module."""

import pytest
import torch

from cdvideo.cli import main
from cdvideo.errors import ConfigError
from cdvideo.train import train
from test_train import dog_images, make_images, tiny_config  # noqa: F401 (dog_images is a fixture)


def components():
    from cdvideo.models import load_preset, load_training_components

    return load_training_components(load_preset("tiny"), device="cpu", dtype=torch.float32)


def test_a_still_clip_with_silent_motion_modules_is_the_2d_unet_frame_by_frame():
    """The clip path's plumbing: text states go to their own clip's frames (two prompts, three frames), and the
    motion UNet shares the 2D UNet's tensors. With every motion module's output projection zeroed (so each adds
    nothing), frame k of a clip is what the 2D UNet predicts for that frame alone."""
    from cdvideo.models import load_preset
    from cdvideo.train.loop import predict, with_motion_module

    parts = components()
    unet2d = parts["unet"]
    unet = with_motion_module(load_preset("tiny"), unet2d)
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.data_ptr() == \
        unet2d.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.data_ptr()
    with torch.no_grad():
        silenced = [m for m in unet.modules() if type(m).__name__ == "AnimateDiffTransformer3D"]
        assert silenced
        for module in silenced:  # each adds proj_out(...) to its input
            module.proj_out.weight.zero_()
            module.proj_out.bias.zero_()
    generator = torch.Generator().manual_seed(0)
    channels, size = unet2d.config.in_channels, 8
    clips = torch.randn(2, channels, 3, size, size, generator=generator)
    hidden = torch.randn(2, 77, unet2d.config.cross_attention_dim, generator=generator)
    timesteps = torch.tensor([100, 700])
    with torch.no_grad():
        got = predict(unet, clips, timesteps, hidden)  # (2, c, 3, s, s)
        for b in range(2):
            for k in range(3):
                alone = unet2d(clips[b : b + 1, :, k], timesteps[b : b + 1], hidden[b : b + 1]).sample
                torch.testing.assert_close(got[b : b + 1, :, k], alone, rtol=1e-4, atol=1e-5)


def test_frames_train_through_the_motion_module_and_leave_it_unchanged(dog_images, tmp_path):
    from cdvideo.concept import load_concept

    parts = components()
    before = {k: v.clone() for k, v in parts["unet"].state_dict().items()}
    config = tiny_config(dog_images, tmp_path / "clip.safetensors", learning_rate=1e-3, frames=3)
    result = train(config, progress=False, components=parts)
    concept = load_concept(result.concept)
    assert concept.training["frames"] == 3
    # Only the spatial cross-attention keys/values moved (the motion UNet trained the 2D UNet's own tensors).
    changed = {k for k, v in parts["unet"].state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed), sorted(changed)
    assert set(concept.deltas) == changed

    # Single images with the same seed train another concept: the clips went through the motion module.
    single = load_concept(train(tiny_config(dog_images, tmp_path / "image.safetensors", learning_rate=1e-3),
                                progress=False).concept)
    assert single.training["frames"] == 1
    assert any(not torch.equal(concept.deltas[k], single.deltas[k]) for k in single.deltas)


def test_frames_refuse_what_they_cannot_do_in_one_line_before_loading(tmp_path, capsys, no_model_loading):
    images = make_images(tmp_path / "dog")
    out = tmp_path / "x.safetensors"
    with pytest.raises(ConfigError, match="frames must be 1 or more"):
        tiny_config(images, out, frames=-1).check()
    with pytest.raises(ConfigError, match="attention_loss_weight compares single images"):
        tiny_config(images, out, frames=4, attention_loss_weight=0.01).check()
    code = main(["train", "--images", str(images), "--class-word", "dog", "--out", str(out), "--model", "tiny",
                 "--frames", "4", "--keep", "best"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--keep last" in err[0]
    assert not out.exists()


def test_the_memory_estimate_counts_every_frame_and_the_motion_adapter():
    from cdvideo.train.memory import TRAINED_SHARE, estimate_for_config, estimate_training_bytes

    counts = {"unet": 1_000_000, "text_encoder": 100_000, "vae": 100_000, "motion_adapter": 500_000}
    without_motion = {k: v for k, v in counts.items() if k != "motion_adapter"}
    config = tiny_config("unused", "x.safetensors", resolution=64, frames=1)
    one, eight = estimate_for_config(config, counts, "cpu"), estimate_for_config(tiny_config(
        "unused", "x.safetensors", resolution=64, frames=8), counts, "cpu")
    assert eight - one > 4 * 500_000  # the adapter's weights, and seven more frames of activations
    assert estimate_for_config(config, without_motion, "cpu") == one
    # The motion modules' own activations count too: more than 8 single-image rows and the adapter's weights.
    trained = int(TRAINED_SHARE[config.train] * counts["unet"])
    rows_only = estimate_training_bytes(without_motion, "cpu", 64, 8 * config.batch_size, trained) + 4 * 500_000
    assert eight > rows_only


def test_a_model_may_train_on_still_clips_by_default(dog_images, tmp_path):
    """`train_frames` in a model's preset (Shapes: 8) is what a run without --frames uses; --frames 1 overrides it,
    and an option that needs single images falls back to them with one warning."""
    from cdvideo.concept import load_concept
    from cdvideo.models import presets_dir

    model = tmp_path / "tiny-clips.yaml"
    model.write_text((presets_dir() / "tiny.yaml").read_text() + "\ntrain_frames: 3\n")
    by_model = load_concept(train(tiny_config(dog_images, tmp_path / "a.safetensors", model=str(model)),
                                  progress=False).concept)
    assert by_model.training["frames"] == 3
    assert load_concept(train(tiny_config(dog_images, tmp_path / "b.safetensors", model=str(model), frames=1),
                              progress=False).concept).training["frames"] == 1
    assert load_concept(train(tiny_config(dog_images, tmp_path / "c.safetensors"), progress=False).concept
                        ).training["frames"] == 1  # the tiny preset says nothing: single images
    with pytest.warns(UserWarning, match=r"--keep best needs single images.*--frames 1"):
        result = train(tiny_config(dog_images, tmp_path / "d.safetensors", model=str(model), keep="best",
                                   checkpoint_every=1, score="heldout_loss"), progress=False)
    assert load_concept(result.concept).training["frames"] == 1

    bad = tmp_path / "bad.yaml"
    bad.write_text((presets_dir() / "tiny.yaml").read_text() + "\ntrain_frames: -2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train_frames must be 0 or more"):
        train(tiny_config(dog_images, tmp_path / "e.safetensors", model=str(bad)), progress=False)
