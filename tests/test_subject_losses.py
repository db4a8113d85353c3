"""Subject masks and Break-A-Scene's two losses: --loss-on-subject and --attention-loss-weight."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from cdvideo.cli import main
from cdvideo.errors import ConfigError, InputFileError
from cdvideo.train import ConceptData, TrainConfig, train

SIZE = 32


def make_masked_images(folder, count=3, seed=0, full=False):
    """Photos with a square subject and its mask beside each (`NAME.mask.png`); `full`: the mask is everything."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = np.full((40, 40, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        mask = np.full((40, 40), 255 if full else 0, dtype=np.uint8)
        x, y = rng.integers(4, 20, 2)
        image[y : y + 16, x : x + 16] = rng.integers(0, 255, 3)
        mask[y : y + 16, x : x + 16] = 255
        Image.fromarray(image).save(folder / f"{i}.png")
        Image.fromarray(mask).save(folder / f"{i}.mask.png")
    return folder


def tiny_config(images, out, **overrides):
    settings = dict(concepts=[ConceptData(str(images), "dog")], out=str(out), model="tiny", steps=2,
                    resolution=SIZE, validation_video=False, device="cpu", learning_rate=1e-3, hflip=False)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_masks_are_read_beside_their_images_and_are_not_images(tmp_path):
    from cdvideo.train.data import image_captions, load_image_folder, load_subject_masks

    folder = make_masked_images(tmp_path / "dog")
    images = load_image_folder(folder)
    assert len(images) == 3  # the .mask.png files are not training images
    assert len(image_captions(folder, "a {token} {class_word}")) == 3
    masks = load_subject_masks(folder, images)
    assert [m.size for m in masks] == [im.size for im in images]
    assert np.array_equal(np.asarray(masks[1]), np.asarray(Image.open(folder / "1.mask.png").convert("L")))

    (folder / "1.mask.png").unlink()
    with pytest.raises(InputFileError, match=r"1\.png has no subject mask 1\.mask\.png"):
        load_subject_masks(folder, images)
    Image.new("L", (8, 8)).save(folder / "1.mask.png")
    with pytest.raises(InputFileError, match=r"1\.mask\.png is 8x8, its image 40x40"):
        load_subject_masks(folder, images)
    for path in folder.glob("*.mask.png"):
        path.unlink()
    assert load_subject_masks(folder, images) is None


def test_the_subject_mask_moves_exactly_as_the_image():
    """Flips, shrinking onto the canvas and enlarged crops: the mask still covers the subject's pixels."""
    from cdvideo.train.data import random_rescale

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[10:30, 36:60] = 255  # a white subject off-centre, so a flip or a crop that is not applied shows
    mask = Image.fromarray((image[..., 0] > 0).astype(np.uint8) * 255)
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        pixels, _, _, subject = random_rescale(Image.fromarray(image), "a dog", 32, generator, latent_factor=4,
                                               subject=mask)
        bright = pixels.mean(dim=0) > 0  # the subject's pixels ([-1, 1]; the canvas and background are -1)
        assert subject.shape == (1, 32, 32)
        assert torch.equal(subject[0] > 0.5, bright)


def test_the_subject_does_not_change_the_random_stream():
    """A run with masks sees exactly the crops, flips and prompts of a run without (resume relies on it)."""
    from cdvideo.train.data import random_rescale

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    mask = Image.new("L", (40, 40), 255)
    with_mask, without = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(8):
        a = random_rescale(image, "a dog", 32, with_mask, subject=mask)
        b = random_rescale(image, "a dog", 32, without)
        assert torch.equal(a[0], b[0]) and a[2] == b[2] and b[3] is None


def test_attention_loss_is_zero_on_the_mask_and_grows_with_leakage():
    from cdvideo.train.losses import attention_loss

    subjects = torch.zeros(2, 1, 8, 8)
    subjects[0, :, :4, :4] = 1  # example 0: the top-left quarter
    subjects[1, :, 4:, 4:] = 1  # example 1: the bottom-right quarter
    on_mask = torch.stack([subjects.flatten(1) * 0.3, torch.rand(2, 64)])  # (c=2, b=2, q): concept 0's map is exact
    assert float(attention_loss([on_mask], subjects, [0, 0])) == 0.0
    spread = on_mask.clone()
    spread[0, 0] += 0.3 * (1 - subjects[0].flatten())  # example 0's token attended everywhere
    assert float(attention_loss([spread], subjects, [0, 0])) == pytest.approx(0.75 / 2)
    # Each example reads its own concept's map: concept 1's random map for example 1 counts.
    assert float(attention_loss([on_mask], subjects, [0, 1])) > 0
    coarse = torch.zeros(2, 2, 4)  # a 2x2 layer: the mask pooled by area
    coarse[0, :, 0] = 1.0
    assert float(attention_loss([coarse], subjects[:1].expand(2, -1, -1, -1).contiguous(), [0, 0])) == 0.0


def test_recording_attention_keeps_the_forward_and_gives_the_token_column():
    from cdvideo.binding import BoundChange, TokenPositions, TrainingBoundAttnProcessor
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    positions = TokenPositions()
    index = positions.add_concept([7], [])
    ids = torch.tensor([[1, 7, 3, 2, 2], [1, 3, 3, 2, 2]])
    states = torch.randn(2, 5, 12)
    positions.record(ids, states)

    class Live:
        strength, factor = 1.0, 1.0

    processor = TrainingBoundAttnProcessor(positions, [BoundChange(Live, index, "token", None, None)],
                                           attn.to_k.weight.detach().clone(), attn.to_v.weight.detach().clone())
    with torch.no_grad():
        attn.to_k.weight.add_(0.5 * torch.randn_like(attn.to_k.weight))  # a trained change, acting at id 7 only
    hidden = torch.randn(2, 9, 16)
    attn.set_processor(processor)
    plain = attn(hidden, encoder_hidden_states=states)
    processor.maps = []
    recorded = attn(hidden, encoder_hidden_states=states)
    torch.testing.assert_close(recorded, plain, rtol=1e-5, atol=1e-6)
    (tokens_map,) = processor.maps
    assert tokens_map.shape == (1, 2, 9)
    assert torch.equal(tokens_map[0, 1], torch.zeros(9))  # no token in the second prompt: no attention to it
    # The first prompt's map is the softmax column at position 1, averaged over the heads.
    query = attn.to_q(hidden[:1]).view(1, 9, 2, 8).transpose(1, 2)
    key = (states[:1] @ processor.base_k.T)
    key[:, 1] = states[:1, 1] @ attn.to_k.weight.T
    key = key.view(1, 5, 2, 8).transpose(1, 2)
    expected = (query @ key.transpose(-1, -2) / 8 ** 0.5).softmax(-1)[..., 1].mean(dim=1)
    torch.testing.assert_close(tokens_map[0, :1].detach(), expected.detach(), rtol=1e-5, atol=1e-6)


def load_components():
    from cdvideo.models import load_preset, load_training_components

    return load_training_components(load_preset("tiny"), device="cpu", dtype=torch.float32)


def test_a_mask_that_covers_everything_trains_as_no_mask(tmp_path):
    """--loss-on-subject with full masks is plain training, to the bit: the masks go only where they should."""
    from cdvideo.concept import load_concept

    full = make_masked_images(tmp_path / "full", full=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in full.glob("?.png"):
        (plain / path.name).write_bytes(path.read_bytes())
    a = train(tiny_config(full, tmp_path / "a.safetensors", loss_on_subject=True), progress=False)
    b = train(tiny_config(plain, tmp_path / "b.safetensors"), progress=False)
    ca, cb = load_concept(a.concept), load_concept(b.concept)
    assert all(torch.equal(ca.deltas[k], cb.deltas[k]) for k in cb.deltas)
    assert torch.equal(ca.tokens["<new1>"], cb.tokens["<new1>"])


def test_a_background_weight_of_one_trains_as_no_mask(tmp_path):
    """--background-loss-weight 1 gives the background its full weight again: plain training, to the bit; 0.5
    trains something between."""
    from cdvideo.concept import load_concept

    images = make_masked_images(tmp_path / "dog")
    one = train(tiny_config(images, tmp_path / "one.safetensors", loss_on_subject=True, background_loss_weight=1.0),
                progress=False)
    plain = train(tiny_config(images, tmp_path / "plain.safetensors"), progress=False)
    half = train(tiny_config(images, tmp_path / "half.safetensors", loss_on_subject=True, background_loss_weight=0.5),
                 progress=False)
    c1, cp, ch = (load_concept(r.concept) for r in (one, plain, half))
    assert all(torch.equal(c1.deltas[k], cp.deltas[k]) for k in cp.deltas)
    assert any(not torch.equal(ch.deltas[k], cp.deltas[k]) for k in cp.deltas)


def test_the_losses_change_training_and_are_logged(tmp_path):
    images = make_masked_images(tmp_path / "dog")
    components = load_components()
    result = train(tiny_config(images, tmp_path / "dog.safetensors", loss_on_subject=True, attention_loss_weight=0.5,
                               steps=3), progress=False, components=components)
    log = np.genfromtxt(result.output_dir / "loss.csv", delimiter=",", names=True)
    assert (log["attention"] > 0).all() and np.allclose(log["loss"], log["diffusion"] + log["spl"] + 0.5 * log["attention"],
                                                         rtol=1e-4)
    # The processors are gone after training: the returned UNet renders with its own.
    assert not any(hasattr(m.processor, "maps") for name, m in components["unet"].named_modules()
                   if name.endswith("attn2"))
    plain = train(tiny_config(images, tmp_path / "plain.safetensors", steps=3), progress=False)
    from cdvideo.concept import load_concept

    ca, cb = load_concept(result.concept), load_concept(plain.concept)
    assert any(not torch.equal(ca.deltas[k], cb.deltas[k]) for k in cb.deltas)


def test_subject_losses_refuse_bad_settings_before_loading(tmp_path, capsys, no_model_loading):
    plain = tmp_path / "plain"
    make_masked_images(plain)
    for path in plain.glob("*.mask.png"):
        path.unlink()
    with pytest.raises(ConfigError, match="has no subject masks.*NAME.mask.png"):
        train(tiny_config(plain, tmp_path / "x.safetensors", attention_loss_weight=0.01), progress=False)
    with pytest.raises(ConfigError, match="attention_loss_weight needs .*--binding token"):
        tiny_config(plain, tmp_path / "x.safetensors", attention_loss_weight=0.01, binding="merged").check()
    with pytest.raises(ConfigError, match="background_loss_weight weighs the background of --loss-on-subject"):
        tiny_config(plain, tmp_path / "x.safetensors", background_loss_weight=0.1).check()
    with pytest.raises(ConfigError, match=r"background_loss_weight must be in \[0, 1\], got 2"):
        tiny_config(plain, tmp_path / "x.safetensors", loss_on_subject=True, background_loss_weight=2.0).check()
    with pytest.raises(ConfigError, match="attention_loss_weight and --binding region"):
        tiny_config(plain, tmp_path / "x.safetensors", attention_loss_weight=0.01, binding="region").check()
    code = main(["train", "--images", str(plain), "--class-word", "dog", "--out", str(tmp_path / "x.safetensors"),
                 "--model", "tiny", "--loss-on-subject"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "NAME.mask.png" in err[0]


def test_composites_file_errors_name_the_line(tmp_path):
    from cdvideo.train.data import read_composites

    good = tmp_path / "scenes.txt"
    good.write_text("# scenes\na cat on a sofa | a photo of a {token} {class_word} and a cat on a sofa\n\n")
    assert read_composites(good) == [("a cat on a sofa", "a photo of a {token} {class_word} and a cat on a sofa")]
    bad = tmp_path / "bad.txt"
    bad.write_text("a cat on a sofa | a photo of a {token} {class_word}\na beach\n")
    with pytest.raises(InputFileError, match=r"bad\.txt:2: write 'SCENE PROMPT \| CAPTION'"):
        read_composites(bad)
    with pytest.raises(InputFileError, match="composites file not found"):
        read_composites(tmp_path / "missing.txt")


def test_the_subject_is_pasted_where_the_scene_is_plainest():
    from cdvideo.train.data import paste_subject

    scene = np.zeros((40, 40, 3), dtype=np.uint8)
    scene[:, :20] = np.random.default_rng(0).integers(0, 255, (40, 20, 3))  # busy left half, plain right half
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[5:15, 5:15] = (250, 200, 0)  # the subject at the top left
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[5:15, 5:15] = 255
    composite, moved = paste_subject(Image.fromarray(scene), Image.fromarray(image), Image.fromarray(mask))
    composite, moved = np.asarray(composite), np.asarray(moved) > 127
    assert moved.sum() == 100 and np.nonzero(moved)[1].min() >= 20  # moved whole into the plain half
    assert (composite[moved] == (250, 200, 0)).all()
    assert np.array_equal(composite[~moved], scene[~moved])  # the rest is the scene


def spy_prompts(monkeypatch) -> list[str]:
    """The captions every training batch uses, collected as training runs."""
    import cdvideo.train.loop as loop

    seen = []
    original = loop.make_batch

    def spy(examples, *args, **kwargs):
        batch = original(examples, *args, **kwargs)
        seen.extend(batch["prompts"])
        return batch

    monkeypatch.setattr(loop, "make_batch", spy)
    return seen


def test_composites_are_rendered_once_and_trained_with_their_captions(tmp_path, monkeypatch):
    images = make_masked_images(tmp_path / "dog", count=2)
    scenes = tmp_path / "scenes.txt"
    scenes.write_text("a cat | a photo of a {token} {class_word} and a cat\na sofa | a {token} {class_word} on a sofa\n")
    seen_prompts = spy_prompts(monkeypatch)
    config = tiny_config(images, tmp_path / "dog.safetensors", composites=str(scenes), steps=4, augment=False)
    result = train(config, progress=False)
    rendered = sorted((result.output_dir / "composites").glob("*.png"))
    assert [p.name[:4] for p in rendered] == ["0000", "0001"]
    assert set(seen_prompts) == {"photo of a <new1> dog", "a photo of a <new1> dog and a cat", "a <new1> dog on a sofa"}
    stamps = [p.stat().st_mtime_ns for p in rendered]
    train(dataclasses.replace(config, out=str(tmp_path / "again.safetensors"),
                              output_dir=str(result.output_dir)), progress=False)
    assert [p.stat().st_mtime_ns for p in sorted((result.output_dir / "composites").glob("*.png"))] == stamps


def test_the_attention_loss_with_gradient_checkpointing_trains_the_same_concept(tmp_path):
    """A checkpointed backward runs the UNet again, and its processors record maps again: those must not
    leak into the next step's loss."""
    from cdvideo.concept import load_concept

    images = make_masked_images(tmp_path / "dog")
    plain = train(tiny_config(images, tmp_path / "a.safetensors", attention_loss_weight=0.5, steps=3), progress=False)
    checkpointed = train(tiny_config(images, tmp_path / "b.safetensors", attention_loss_weight=0.5, steps=3,
                                     gradient_checkpointing=True), progress=False)
    logs = [np.genfromtxt(r.output_dir / "loss.csv", delimiter=",", names=True)["attention"] for r in (plain, checkpointed)]
    np.testing.assert_allclose(logs[1], logs[0], rtol=1e-5)
    a, b = load_concept(plain.concept), load_concept(checkpointed.concept)
    for key in a.deltas:
        torch.testing.assert_close(b.deltas[key], a.deltas[key], rtol=1e-4, atol=1e-6)


def test_background_target_base_is_the_base_model_for_the_caption_without_the_token():
    """--background-target base compares the background with the base model's prediction: whatever the trained
    change has become, the caption with its token taken out is predicted by the untouched model."""
    from cdvideo.binding import install_bound_training
    from cdvideo.train.loop import _tokenize, base_prediction

    parts = load_components()
    unet, text_encoder, tokenizer = parts["unet"], parts["text_encoder"], parts["tokenizer"]
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=generator)
    timesteps = torch.tensor([10, 700])
    with torch.no_grad():
        hidden = text_encoder(_tokenize(tokenizer, ["a dog on a beach", "a dog"], "cpu"))[0]
        expected = unet(noisy, timesteps, hidden).sample
    tokenizer.add_tokens(["<new1>"])
    text_encoder.resize_token_embeddings(len(tokenizer))
    remove = install_bound_training(unet, text_encoder, tokenizer, ["<new1>"], ["dog"], "token")
    try:
        with torch.no_grad():  # training has moved every key and value projection
            for name, module in unet.named_modules():
                if name.endswith("attn2"):
                    module.to_k.weight.add_(0.5)
                    module.to_v.weight.mul_(3.0)
        got = base_prediction(unet, text_encoder, tokenizer, ["<new1>"], ["a <new1> dog on a beach", "a <new1> dog"],
                              noisy, timesteps, "cpu")
        changed = unet(noisy, timesteps, text_encoder(_tokenize(tokenizer, ["a <new1> dog on a beach",
                                                                            "a <new1> dog"], "cpu"))[0]).sample
    finally:
        remove()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed, expected, atol=1e-3)  # with the token, the change is there


def test_background_target_base_trains_another_concept_and_refuses_bad_settings(tmp_path):
    from cdvideo.concept import load_concept

    images = make_masked_images(tmp_path / "dog")
    data = train(tiny_config(images, tmp_path / "data.safetensors", loss_on_subject=True, background_loss_weight=1.0),
                 progress=False)
    base = train(tiny_config(images, tmp_path / "base.safetensors", loss_on_subject=True, background_loss_weight=1.0,
                             background_target="base"), progress=False)
    cd, cb = load_concept(data.concept), load_concept(base.concept)
    assert any(not torch.equal(cb.deltas[k], cd.deltas[k]) for k in cd.deltas)
    with pytest.raises(ConfigError, match="background_target base compares .* give it a weight above 0"):
        tiny_config(images, tmp_path / "x.safetensors", loss_on_subject=True, background_target="base").check()
    with pytest.raises(ConfigError, match="background_target base needs .*--binding token"):
        tiny_config(images, tmp_path / "x.safetensors", loss_on_subject=True, background_loss_weight=1.0,
                    background_target="base", binding="merged").check()
    with pytest.raises(ConfigError, match="unknown background_target 'photo'; choose from data, base"):
        tiny_config(images, tmp_path / "x.safetensors", background_target="photo").check()
