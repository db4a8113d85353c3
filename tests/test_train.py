"""`cdvideo train` on the tiny model: what trains, SPL, resume, errors, and the concept it writes."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cdvideo.cli import main
from cdvideo.errors import ConfigError, InputFileError
from cdvideo.train import ConceptData, TrainConfig, train

SIZE = 32


def make_images(folder, count=4, seed=0):
    """Small coloured photos with a square 'subject': enough structure for a loss to move."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = np.full((40, 40, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        x, y = rng.integers(4, 20, 2)
        image[y : y + 16, x : x + 16] = rng.integers(0, 255, 3)
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def dog_images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("dog"))


def tiny_config(images, out, **overrides):
    settings = dict(concepts=[ConceptData(str(images), "dog")], out=str(out), model="tiny", steps=2,
                    resolution=SIZE, validation_video=False, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


def load_components():
    from cdvideo.models import load_preset, load_training_components

    return load_training_components(load_preset("tiny"), device="cpu", dtype=torch.float32)


def phrase_distance(components, token="<new1>", class_word="dog", template="a photo of a {} {}"):
    """1 - cos of the EOS features of 'a photo of a <new1> dog' and 'a photo of a dog' with trained components."""
    from cdvideo.train.losses import text_features

    tokenizer, encoder = components["tokenizer"], components["text_encoder"]
    phrases = [" ".join(template.format(token, class_word).split()), " ".join(template.format("", class_word).split())]
    ids = tokenizer(phrases, padding="max_length",
                    max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        features = text_features(encoder, ids, tokenizer.eos_token_id, "eos")
    return float(1 - torch.cosine_similarity(features[0], features[1], dim=0))


def test_only_the_token_row_and_cross_attention_kv_change(dog_images, tmp_path):
    components = load_components()
    before = {part: {k: v.clone() for k, v in components[part].state_dict().items()}
              for part in ("unet", "vae", "text_encoder")}
    result = train(tiny_config(dog_images, tmp_path / "dog.safetensors", learning_rate=1e-3), progress=False,
                   components=components)

    changed = {k for k, v in components["unet"].state_dict().items() if not torch.equal(v, before["unet"][k])}
    assert changed, "training changed nothing"
    assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed), sorted(changed)
    assert not any("motion" in k for k in changed)
    assert all(torch.equal(v, before["vae"][k]) for k, v in components["vae"].state_dict().items())
    # The text encoder: every original embedding row and weight bit-identical, only the new row trained.
    embedding = components["text_encoder"].get_input_embeddings()
    assert torch.equal(embedding.base.weight, before["text_encoder"]["embeddings.token_embedding.weight"])
    others = {k: v for k, v in components["text_encoder"].state_dict().items() if "new_rows" not in k}
    assert all(torch.equal(v, before["text_encoder"][k.replace("token_embedding.base.", "token_embedding.")])
               for k, v in others.items())

    # Finite losses in the log, and the concept holds exactly the trained tensors as deltas.
    log = np.genfromtxt(result.output_dir / "loss.csv", delimiter=",", names=True)
    assert len(log) == 2 and np.isfinite(log["loss"]).all() and np.isfinite(log["spl"]).all()
    from cdvideo.concept import load_concept

    concept = load_concept(result.concept)
    assert set(concept.deltas) == changed
    unet = dict(components["unet"].named_parameters())
    for name, delta in concept.deltas.items():
        # base + (trained - base) equals trained up to float32 rounding.
        torch.testing.assert_close(before["unet"][name] + delta, unet[name].detach(), rtol=0, atol=1e-6)
    assert torch.equal(concept.tokens["<new1>"], embedding.new_rows.detach())
    assert concept.class_words == {"<new1>": "dog"} and concept.method == "classdiffusion"
    assert (result.output_dir / "config.yaml").is_file()


def test_crossattn_mode_also_trains_query_and_output(dog_images, tmp_path):
    from cdvideo.train.loop import trainable_param_names

    names = trainable_param_names(load_components()["unet"], "crossattn")
    kinds = {name.split(".attn2.")[1] for name in names}
    assert kinds == {"to_k.weight", "to_v.weight", "to_q.weight", "to_out.0.weight", "to_out.0.bias"}


def test_spl_keeps_the_token_closer_to_its_class(dog_images, tmp_path):
    distances = {}
    for weight in (0.0, 1.0):
        components = load_components()
        train(tiny_config(dog_images, tmp_path / f"spl{weight}.safetensors", steps=2, learning_rate=1e-3,
                          spl_weight=weight), progress=False, components=components)
        distances[weight] = phrase_distance(components)
    assert distances[1.0] < distances[0.0], distances


def test_captions_follow_the_instance_and_spl_prompts(dog_images, tmp_path):
    from cdvideo.concept import load_concept

    default = tmp_path / "default.safetensors"
    train(tiny_config(dog_images, default, learning_rate=1e-3), progress=False)
    snow = tmp_path / "snow.safetensors"
    train(tiny_config(dog_images, snow, learning_rate=1e-3, instance_prompt="a {token} {class_word} in the snow"),
          progress=False)
    a, b = load_concept(default), load_concept(snow)
    assert any(not torch.equal(a.deltas[k], b.deltas[k]) for k in a.deltas), "the caption was ignored"

    # SPL pulls together the pair made from spl_prompt, not the default "a photo of a" pair.
    template = "a {} {} on the grass"
    distances = {}
    for weight in (0.0, 1.0):
        components = load_components()
        train(tiny_config(dog_images, tmp_path / f"grass{weight}.safetensors", learning_rate=1e-3, spl_weight=weight,
                          spl_prompt="a {token} {class_word} on the grass"), progress=False, components=components)
        distances[weight] = phrase_distance(components, template=template)
    assert distances[1.0] < distances[0.0], distances


def test_a_prompt_template_without_its_placeholders_is_one_line(dog_images, tmp_path, capsys):
    with pytest.raises(ConfigError, match="instance_prompt .* must name {token} and {class_word}"):
        train(tiny_config(dog_images, tmp_path / "x.safetensors", instance_prompt="a photo of a {tok} dog"))
    assert main(["train", "--images", str(dog_images), "--class-word", "dog", "--out", str(tmp_path / "x.safetensors"),
                 "--spl-prompt", "a photo of a dog"]) == 2
    err = capsys.readouterr().err
    assert "spl_prompt 'a photo of a dog' must name {token} and {class_word}" in err and len(err.strip().splitlines()) == 1


def test_resume_equals_an_uninterrupted_run(dog_images, tmp_path):
    from cdvideo.concept import load_concept

    settings = dict(learning_rate=1e-3, checkpoint_every=1, batch_size=2)
    whole = train(tiny_config(dog_images, tmp_path / "whole.safetensors", steps=3, **settings), progress=False)
    # The interrupted run goes through the CLI: 2 steps, then --resume to 3.
    out = tmp_path / "parts.safetensors"
    common = ["train", "--images", str(dog_images), "--class-word", "dog", "--out", str(out), "--model", "tiny",
              "--resolution", str(SIZE), "--learning-rate", "1e-3", "--checkpoint-every", "1",
              "--no-validation-video", "--device", "cpu", "--quiet"]
    assert main(common + ["--steps", "2"]) == 0
    assert main(common + ["--steps", "3", "--resume"]) == 0

    a, b = load_concept(whole.concept), load_concept(out)
    assert torch.equal(a.tokens["<new1>"], b.tokens["<new1>"])
    assert all(torch.equal(a.deltas[k], b.deltas[k]) for k in a.deltas)
    logs = [np.genfromtxt(folder / "loss.csv", delimiter=",", names=True)
            for folder in (whole.output_dir, tmp_path / "parts-train")]
    assert len(logs[1]) == 3
    for column in ("step", "loss", "diffusion", "spl"):  # everything but the step's wall time
        assert np.array_equal(logs[0][column], logs[1][column])
    # keep: last leaves only the newest checkpoint.
    assert [p.name for p in (tmp_path / "parts-train" / "checkpoints").iterdir()] == ["step-000003"]


def test_resume_refuses_changed_settings(dog_images, tmp_path):
    out = tmp_path / "dog.safetensors"
    train(tiny_config(dog_images, out, steps=1), progress=False)
    with pytest.raises(ConfigError, match="spl_weight"):
        train(tiny_config(dog_images, out, steps=2, spl_weight=0.5, resume=True), progress=False)


def test_keep_best_scores_checkpoints_by_heldout_loss(dog_images, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(tiny_config(dog_images, tmp_path / "best.safetensors", steps=2, checkpoint_every=1,
                                   keep="best", score="heldout_loss"), progress=False)
    assert set(result.scores) == {1, 2} and all(np.isfinite(v) for v in result.scores.values())
    best = min(result.scores, key=result.scores.get)
    assert result.step == best
    from cdvideo.concept import load_concept

    training = load_concept(result.concept).training
    assert training["score"] == {"name": "heldout_loss", "value": result.scores[best]}
    assert training["images"] == [3]  # one of the four held out
    assert not [w for w in caught if "few" in str(w.message)]


def test_a_vae_that_downsamples_by_4_trains(dog_images, tmp_path):
    """Loss masks follow the VAE's factor: the Shapes model's 32 px frames have 8x8 latents, not 4x4."""
    from cdvideo.shapes.model import build_vae

    components = load_components()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        components["vae"] = build_vae()  # 3 levels: 32 px -> 8x8 latents
    # Augmentation (shrunk images: partial masks) and held-out scoring (plain batches) both make masks.
    result = train(tiny_config(dog_images, tmp_path / "f4.safetensors", keep="best", score="heldout_loss",
                               checkpoint_every=1), progress=False, components=components)
    log = np.genfromtxt(result.output_dir / "loss.csv", delimiter=",", names=True)
    assert len(log) == 2 and np.isfinite(log["diffusion"]).all()
    assert all(np.isfinite(v) for v in result.scores.values())


def test_saved_concept_renders(dog_images, tmp_path, tiny_renderer):
    from cdvideo.config import ConceptSpec, RenderSettings
    from cdvideo.render import render_to_file

    result = train(tiny_config(dog_images, tmp_path / "dog.safetensors", steps=1, learning_rate=1e-3), progress=False)
    video = render_to_file(
        RenderSettings(prompt="a <new1> dog running", model="tiny", seed=1, num_frames=2, steps=1, height=32,
                       width=32, concepts=[ConceptSpec(str(result.concept))], format="frames", device="cpu"),
        tmp_path / "video", renderer=tiny_renderer, progress=False,
    )
    assert video.frames.shape == (2, 32, 32, 3)
    from cdvideo.concept import load_concept
    # Strength 0 keeps the token but not the key/value changes: the trained deltas reach the motion UNet.
    without = render_to_file(
        RenderSettings(prompt="a <new1> dog running", model="tiny", seed=1, num_frames=2, steps=1, height=32,
                       width=32, concepts=[ConceptSpec(str(result.concept), strength=0.0)], format="frames",
                       device="cpu"),
        tmp_path / "video0", renderer=tiny_renderer, progress=False,
    )
    assert not np.array_equal(video.frames, without.frames)
    assert load_concept(result.concept).base_model == "builtin:tiny"


def test_eos_pooling_picks_end_of_text_even_with_legacy_config():
    """SD 1.5's config says eos_token_id 2: transformers then pools at the largest id, i.e. <new1>."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from cdvideo.models.tiny import TEXT_ENCODER_CONFIG, build_tokenizer
    from cdvideo.train.losses import eos_positions, text_features

    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["<new1>"])
    ids = tokenizer(["a photo of a <new1> dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    eos_at, new_at = tokens.index("<|endoftext|>"), tokens.index("<new1>")
    assert int(eos_positions(ids, tokenizer.eos_token_id, "eos")[0]) == eos_at
    assert int(eos_positions(ids, tokenizer.eos_token_id, "legacy")[0]) == new_at

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=0, pad_token_id=1, **TEXT_ENCODER_CONFIG)
    config.eos_token_id = 2  # the legacy value in SD 1.5's text_encoder/config.json
    encoder = CLIPTextModel(config).eval()
    with torch.no_grad():
        output = encoder(ids)
        ours = text_features(encoder, ids, tokenizer.eos_token_id, "eos")
        legacy = text_features(encoder, ids, tokenizer.eos_token_id, "legacy")
    hidden = output.last_hidden_state[0]
    assert torch.equal(ours[0], hidden[eos_at])
    assert torch.equal(legacy[0], hidden[new_at]) and torch.equal(output.pooler_output[0], hidden[new_at])


def test_masked_loss_ignores_the_canvas():
    from cdvideo.train.losses import masked_diffusion_loss

    prediction, target = torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)
    prediction[:, :, :2] = 1.0  # wrong only in the top half
    mask = torch.ones(2, 1, 4, 4)
    mask[:, :, :2] = 0
    assert float(masked_diffusion_loss(prediction, target, mask)) == 0.0
    # Summed over the 4 channels, averaged over valid pixels: diffusers' Custom Diffusion script's scale.
    assert float(masked_diffusion_loss(prediction, target, torch.ones_like(mask))) == pytest.approx(2.0)
    noisy = prediction + torch.linspace(0, 1, 128).reshape(2, 4, 4, 4)
    recipe = ((F.mse_loss(noisy, target, reduction="none") * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean()
    assert float(masked_diffusion_loss(noisy, target, mask)) == pytest.approx(float(recipe))


def test_random_rescale_matches_custom_diffusion():
    from cdvideo.train.data import LARGE_PREFIXES, SMALL_PREFIXES, random_rescale

    image = Image.new("RGB", (50, 50), (255, 255, 255))
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(60):
        pixels, mask, prompt, _ = random_rescale(image, "photo of a <new1> dog", 128, generator)
        assert pixels.shape == (3, 128, 128) and mask.shape == (1, 16, 16)
        prefix = prompt.removesuffix("photo of a <new1> dog")
        if prefix in SMALL_PREFIXES:
            seen.add("small")
            assert 0 < mask.sum() < 256 and (pixels == 0).any()  # a mid-grey (0) canvas around a small subject
            # Where the mask is on, the image is (white) subject, never canvas.
            inside = torch.nn.functional.interpolate(mask[None], scale_factor=8)[0].bool().expand(3, -1, -1)
            assert (pixels[inside] == 1).all()
        elif prefix in LARGE_PREFIXES:
            seen.add("large")
            assert mask.sum() == 256
        else:
            assert prefix == ""
    assert seen == {"small", "large"}


def test_bad_input_is_one_line_before_training(tmp_path, dog_images, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="holds no images"):
        train(tiny_config(empty, tmp_path / "x.safetensors"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputFileError, match="cannot read image .*a.png"):
        train(tiny_config(broken, tmp_path / "x.safetensors"))
    with pytest.raises(ConfigError, match="already exists"):
        train(tiny_config(dog_images, tmp_path / "x.safetensors", concepts=[
            ConceptData(str(dog_images), "dog", token="<|endoftext|>")]), progress=False)

    assert main(["train", "--images", str(empty), "--class-word", "dog", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no images" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--images", str(dog_images), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "one --class-word per --images" in capsys.readouterr().err


def test_warnings_for_few_images_and_multi_token_class_word(tmp_path):
    few = make_images(tmp_path / "few", count=2)
    with pytest.warns(UserWarning) as caught:
        train(tiny_config(few, tmp_path / "x.safetensors", steps=1, concepts=[ConceptData(str(few), "corgi")]),
              progress=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "only 2 image(s)" in messages and "'corgi' is 5 tokens" in messages


def test_unknown_yaml_key_is_an_error(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("out: x.safetensors\nspl_wieght: 2\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown key(s) 'spl_wieght'" in capsys.readouterr().err


@pytest.mark.slow  # samples class images with the base model: tens of seconds on a busy CPU
def test_prior_preservation_generates_class_images_with_the_base_model(dog_images, tmp_path):
    result = train(tiny_config(dog_images, tmp_path / "dog.safetensors", steps=1, with_prior_preservation=True,
                               num_class_images=2, binding="merged"), progress=False)
    generated = sorted((result.output_dir / "class_images" / "1-dog").glob("*.png"))
    assert [p.name for p in generated] == ["0000.png", "0001.png"]
    assert Image.open(generated[0]).size == (SIZE, SIZE)
    log = np.genfromtxt(result.output_dir / "loss.csv", delimiter=",", names=True)
    assert np.isfinite(log["prior"]) and log["prior"] > 0


@pytest.mark.parametrize("binding, trained", [("token", {"to_k", "to_v"}), ("values", {"to_v"}), ("merged", {"to_k", "to_v"}),
                                              ("region", {"to_k", "to_v"})])
def test_binding_trains_through_the_token_and_the_file_says_how(dog_images, tmp_path, binding, trained):
    from cdvideo.binding import BoundAttnProcessor
    from cdvideo.concept import load_concept

    components = load_components()
    processors = {n: m.processor for n, m in components["unet"].named_modules() if hasattr(m, "processor")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(tiny_config(dog_images, tmp_path / "c.safetensors", binding=binding, learning_rate=1e-3),
              progress=False, components=components)
    concept = load_concept(tmp_path / "c.safetensors")
    assert concept.training["binding"] == binding
    assert {name.split(".")[-2] for name in concept.deltas} == trained
    assert all(float(concept.delta(name).abs().max()) > 0 for name in concept.deltas)
    # The training processors are gone again: the components are a plain UNet afterwards.
    after = {n: m.processor for n, m in components["unet"].named_modules() if hasattr(m, "processor")}
    assert after == processors and not any(isinstance(p, BoundAttnProcessor) for p in after.values())


@pytest.mark.parametrize("binding", ["token", "region"])
def test_bound_training_sees_the_change_only_at_the_token(binding):
    """With binding token, a caption without the token puts no gradient into the key/value weights; with it, some."""
    from cdvideo.binding import install_bound_training
    from cdvideo.train.loop import trainable_param_names

    components = load_components()
    unet, encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    tokenizer.add_tokens(["<new9>"])
    encoder.resize_token_embeddings(len(tokenizer))
    names = trainable_param_names(unet, "kv")
    params = dict(unet.named_parameters())
    unet.requires_grad_(False)
    for name in names:
        params[name].requires_grad_(True)
    remove = install_bound_training(unet, encoder, tokenizer, ["<new9>"], ["dog"], binding)
    latents = torch.randn(1, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    grads = {}
    for caption in ("a dog on grass", "a <new9> dog on grass"):
        ids = tokenizer([caption], padding="max_length", max_length=77, return_tensors="pt").input_ids
        unet(latents, torch.tensor([500]), encoder(ids)[0]).sample.square().mean().backward()
        grads[caption] = sum(float(params[n].grad.abs().sum()) if params[n].grad is not None else 0.0 for n in names)
        unet.zero_grad(set_to_none=True)
    remove()
    assert grads["a dog on grass"] == 0.0
    assert grads["a <new9> dog on grass"] > 0.0


def test_prior_preservation_under_a_bound_binding_is_refused_before_any_work(dog_images, tmp_path, capsys):
    """The class captions carry no token, so a bound change gets no gradient from them (the test above): the flag
    would only double the learning rate. One line, before anything is loaded or generated."""
    with pytest.raises(ConfigError, match="binding merged"):
        tiny_config(dog_images, tmp_path / "c.safetensors", with_prior_preservation=True).check()
    tiny_config(dog_images, tmp_path / "c.safetensors", with_prior_preservation=True, binding="merged").check()
    out = tmp_path / "dog.safetensors"
    assert main(["train", "--images", str(dog_images), "--class-word", "dog", "--model", "tiny", "--out", str(out),
                 "--with-prior-preservation", "--binding", "region"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--with-prior-preservation does nothing with --binding region" in err and len(err.splitlines()) == 1
    assert not out.exists() and not (tmp_path / "dog-train").exists()


def test_crossattn_cannot_be_bound(dog_images, tmp_path):
    with pytest.raises(ConfigError, match="binding merged"):
        tiny_config(dog_images, tmp_path / "c.safetensors", train="crossattn", binding="token").check()


def test_per_image_captions_beside_the_images(tmp_path):
    from cdvideo.errors import InputFileError
    from cdvideo.train.data import image_captions

    folder = make_images(tmp_path / "photos", count=3)
    (folder / "1.txt").write_text("a {token} {class_word}  on a beach\n")
    assert image_captions(folder, "photo of a {token} {class_word}") == [
        "photo of a {token} {class_word}", "a {token} {class_word} on a beach", "photo of a {token} {class_word}"]
    (folder / "2.txt").write_text("a dog on a beach")
    with pytest.raises(InputFileError, match="2.txt must name {token}"):
        image_captions(folder, "photo of a {token} {class_word}")


def test_training_reads_the_captions(dog_images, tmp_path, monkeypatch):
    """A caption file changes what that image is trained with: the loss of the first step differs."""
    import shutil

    captioned = tmp_path / "captioned"
    shutil.copytree(dog_images, captioned)
    for path in captioned.glob("*.png"):
        path.with_suffix(".txt").write_text("a {token} {class_word} on a beach")
    losses = []
    for folder, out in ((dog_images, "a.safetensors"), (captioned, "b.safetensors")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train(tiny_config(folder, tmp_path / out, steps=1, spl_weight=0), progress=False)
        losses.append((result.output_dir / "loss.csv").read_text().splitlines()[1].split(",")[2])
    assert losses[0] != losses[1]


def test_timestep_range_trains_only_those_noise_levels(dog_images, tmp_path, monkeypatch, capsys):
    import cdvideo.train.loop as loop
    from cdvideo.concept import load_concept

    seen = []
    real_predict = loop.predict

    def recording(unet, noisy, timesteps, hidden):
        seen.extend(timesteps.tolist())
        return real_predict(unet, noisy, timesteps, hidden)

    monkeypatch.setattr(loop, "predict", recording)
    components = load_components()
    total = components["noise_scheduler"].config.num_train_timesteps
    train(tiny_config(dog_images, tmp_path / "noisy.safetensors", steps=6, timestep_range="0.6:1"),
          components=components, progress=False)
    assert seen and min(seen) >= 0.6 * total and max(seen) < total
    assert load_concept(tmp_path / "noisy.safetensors").training["timestep_range"] == "0.6:1"  # the file says how
    seen.clear()
    train(tiny_config(dog_images, tmp_path / "clean.safetensors", steps=6, timestep_range="0:0.3"),
          components=load_components(), progress=False)
    assert seen and max(seen) < 0.3 * total

    capsys.readouterr()
    assert main(["train", "--images", str(dog_images), "--class-word", "dog", "--model", "tiny",
                 "--timestep-range", "0.7:0.2", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "timestep_range '0.7:0.2'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()
