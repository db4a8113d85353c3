"""Custom Diffusion / ClassDiffusion outputs and textual inversion embeddings -> concepts.

The check that matters: frames rendered from a converted concept equal frames rendered with the
same trained weights merged into the UNet by hand (as ClassDiffusion's own video script does).
"""

import numpy as np
import pytest
import torch

from cdvideo.concept import load_concept, save_concept
from cdvideo.config import RenderSettings
from cdvideo.errors import ConceptFileError, InjectionError, UnsafeFileError, WrongFileKindError
from cdvideo.formats.concepts import open_concept
from cdvideo.formats.custom_diffusion import ldm_to_diffusers, read_custom_diffusion
from cdvideo.formats.sniff import CUSTOM_DIFFUSION, TEXTUAL_INVERSION, sniff
from cdvideo.formats.textual_inversion import read_textual_inversion
from cdvideo.inject import concepts_applied
from cdvideo.render import render_frames
from formats_fixtures import (
    compress_delta,
    diffusers_to_ldm,
    save_token_file,
    trained_unet,
    trained_weights,
    write_classdiffusion_output,
    write_repository_delta,
)

PROMPT = "a <new1> dog running"


def settings():
    return RenderSettings(prompt=PROMPT, negative_prompt="", num_frames=4, height=32, width=32, steps=2,
                          guidance_scale=7.5, seed=3)


@pytest.fixture(scope="module")
def model_dir():
    from cdvideo.models.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="module")
def trained(model_dir):
    """(unet with Custom Diffusion processors, trained k/v by parameter path)."""
    unet = trained_unet(model_dir)
    return unet, trained_weights(unet)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, trained, tiny_pipeline):
    """ClassDiffusion output directories in both serializations; the token row of each."""
    unet, _ = trained
    dim = tiny_pipeline.text_encoder.get_input_embeddings().weight.shape[1]
    root = tmp_path_factory.mktemp("classdiffusion")
    rows = {}
    for kind, safe in (("safetensors", True), ("pickle", False)):
        rows[kind] = write_classdiffusion_output(root / kind, unet, dim, safetensors=safe)
    return root, rows


def merged_by_hand(pipeline, weights, token, row):
    """Render with `weights` copied into the UNet and `token` added, as ClassDiffusion's script does; undo after."""
    params = dict(pipeline.unet.named_parameters())
    saved = {name: params[name].detach().clone() for name in weights}
    with torch.no_grad():
        for name, weight in weights.items():
            params[name].copy_(weight)
    pipeline.tokenizer.add_tokens(token)
    pipeline.text_encoder.resize_token_embeddings(len(pipeline.tokenizer))
    with torch.no_grad():
        pipeline.text_encoder.get_input_embeddings().weight[-1] = row
    try:
        return render_frames(pipeline, settings(), progress=False)
    finally:
        pipeline.unload_textual_inversion(token)
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def render_concept(pipeline, concept):
    with concepts_applied(pipeline, [(concept, 1.0, "c")]):
        return render_frames(pipeline, settings(), progress=False)


def test_diffusers_writes_the_documented_layout(outputs):
    # The quirks this module handles are really in the files diffusers and the script write.
    root, _ = outputs
    pickled = torch.load(root / "pickle" / "pytorch_custom_diffusion_weights.bin", weights_only=True)
    assert any(k.endswith("attn1.processor") and v == {} for k, v in pickled.items())
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight" in pickled
    with open(root / "safetensors" / "<new1>.bin", "rb") as handle:
        assert handle.read(9)[8:9] == b"{"  # safetensors content under a .bin name
    row = torch.load(root / "pickle" / "<new1>.bin", weights_only=True)["<new1>"]
    assert row.untyped_storage().nbytes() > row.numel() * 4  # the whole table came along


@pytest.mark.parametrize("kind", ["safetensors", "pickle"])
def test_converted_classdiffusion_output_renders_like_a_hand_merge(outputs, trained, tiny_pipeline, kind, tmp_path):
    root, rows = outputs
    _, weights = trained
    source = open_concept(root / kind, class_word="dog")
    assert source.kind.kind == CUSTOM_DIFFUSION and source.needs_base
    concept = source.resolve(tiny_pipeline.unet, base_model="builtin:tiny")
    # Stored and read back, as `cdvideo concept convert` does.
    path = save_concept(concept, tmp_path / "dog.safetensors")
    concept = load_concept(path)
    assert set(concept.deltas) == set(weights) and concept.class_words == {"<new1>": "dog"}
    assert torch.equal(concept.tokens["<new1>"][0], rows[kind])

    ours = render_concept(tiny_pipeline, concept)
    reference = merged_by_hand(tiny_pipeline, weights, "<new1>", rows[kind])
    largest = int(np.abs(ours.astype(int) - reference.astype(int)).max())
    print(f"largest pixel difference, converted {kind} vs hand merge: {largest}/255")
    assert largest <= 1


def test_token_file_is_compact_after_reading(outputs):
    root, _ = outputs
    weights = read_custom_diffusion(root / "pickle")
    row = weights.tokens["<new1>"]
    assert row.shape == (1, row.shape[1]) and row.untyped_storage().nbytes() == row.numel() * 4


def test_crossattn_training_converts_q_and_out(model_dir, tiny_pipeline, tmp_path):
    unet = trained_unet(model_dir, seed=5, train_q_out=True)
    unet.save_attn_procs(tmp_path, safe_serialization=True)
    concept = open_concept(tmp_path).resolve(tiny_pipeline.unet)
    projections = {name.split(".attn2.")[1] for name in concept.deltas}
    assert projections == {"to_k.weight", "to_v.weight", "to_q.weight", "to_out.0.weight", "to_out.0.bias"}
    weights = trained_weights(unet)
    params = dict(tiny_pipeline.unet.named_parameters())
    for name, weight in weights.items():
        assert torch.allclose(params[name] + concept.delta(name), weight, atol=1e-6)


def test_ldm_names_map_to_diffusers_paths():
    assert ldm_to_diffusers("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 2) \
        == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert ldm_to_diffusers("model.diffusion_model.input_blocks.8.1.transformer_blocks.0.attn2.to_v.weight", 2) \
        == "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_v.weight"
    assert ldm_to_diffusers("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight", 2) \
        == "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert ldm_to_diffusers("model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.bias", 2) \
        == "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0.bias"


@pytest.mark.parametrize("compressed", [False, True])
def test_repository_delta_renders_like_a_hand_merge(trained, tiny_pipeline, tmp_path, compressed):
    _, weights = trained
    params = dict(tiny_pipeline.unet.named_parameters())
    base = {name: params[name].detach().clone() for name in weights}
    embed = torch.randn(1, 32, generator=torch.Generator().manual_seed(9))
    write_repository_delta(tmp_path / "delta.ckpt", weights, embed, base=base if compressed else None)
    assert diffusers_to_ldm(next(iter(weights))).startswith("model.diffusion_model.")

    source = open_concept(tmp_path / "delta.ckpt")
    concept = source.resolve(tiny_pipeline.unet)
    expected = weights
    if compressed:
        factors = {n: compress_delta(w, base[n]) for n, w in weights.items()}
        assert all(isinstance(v, tuple) for v in concept.deltas.values())
        expected = {n: base[n] + f["u"] @ f["v"] for n, f in factors.items()}
    ours = render_concept(tiny_pipeline, concept)
    reference = merged_by_hand(tiny_pipeline, expected, "<new1>", embed[0])
    largest = int(np.abs(ours.astype(int) - reference.astype(int)).max())
    print(f"largest pixel difference, repository delta (compressed={compressed}) vs hand merge: {largest}/255")
    assert largest <= 1


def test_repository_diffusers_delta_bin(trained, tiny_pipeline, tmp_path):
    _, weights = trained
    torch.save({"unet": weights, "modifier_token": {"<new1>": torch.ones(32)}}, tmp_path / "delta.bin")
    concept = open_concept(tmp_path).resolve(tiny_pipeline.unet)
    assert set(concept.deltas) == set(weights) and concept.tokens["<new1>"].shape == (1, 32)


def test_base_with_other_shapes_names_module_and_both_shapes(trained, tmp_path, tiny_pipeline):
    _, weights = trained
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    sd2 = {name: torch.zeros(32, 1024)}  # an SD 2.x-sized key projection
    torch.save({"unet": sd2}, tmp_path / "delta.bin")
    with pytest.raises(InjectionError, match=rf"{name} is \(32, 1024\) in the file but \(32, 32\)"):
        open_concept(tmp_path / "delta.bin").resolve(tiny_pipeline.unet)


def test_unexpected_entries_are_named(tmp_path):
    from safetensors.torch import save_file

    save_file({"x.attn2.processor.to_k_custom_diffusion.weight": torch.zeros(2, 2), "junk": torch.zeros(1)},
              str(tmp_path / "pytorch_custom_diffusion_weights.safetensors"))
    with pytest.raises(ConceptFileError, match="'junk'"):
        read_custom_diffusion(tmp_path)


# Textual inversion


def test_diffusers_learned_embeds(tmp_path):
    from safetensors.torch import save_file

    save_file({"<cat-toy>": torch.arange(32.0)}, str(tmp_path / "learned_embeds.safetensors"))
    assert sniff(tmp_path / "learned_embeds.safetensors").kind == TEXTUAL_INVERSION
    tokens = read_textual_inversion(tmp_path / "learned_embeds.safetensors")
    assert list(tokens) == ["<cat-toy>"] and torch.equal(tokens["<cat-toy>"][0], torch.arange(32.0))


@pytest.mark.parametrize("vectors", [1, 3])
def test_a1111_pt_single_and_multi_vector(tmp_path, vectors, tiny_pipeline):
    # The layout A1111's `textual_inversion.py` saves (string_to_token / string_to_param / name / step).
    embedding = torch.randn(vectors, 32)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": embedding}, "name": "mystyle",
                "step": 500, "sd_checkpoint": "abc", "sd_checkpoint_name": "v1-5"}, tmp_path / "mystyle.pt")
    source = open_concept(tmp_path / "mystyle.pt", class_word="style")
    concept = source.resolve()
    assert torch.equal(concept.tokens["mystyle"], embedding) and concept.class_words == {"mystyle": "style"}
    settings_ = settings()
    settings_.prompt = "a dog in mystyle"
    before = render_frames(tiny_pipeline, settings_, progress=False)
    with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")]):
        after = render_frames(tiny_pipeline, settings_, progress=False)
    assert not np.array_equal(before, after)


def test_a1111_safetensors_emb_params(tmp_path):
    from safetensors.torch import save_file

    save_file({"emb_params": torch.ones(2, 32)}, str(tmp_path / "fancy.safetensors"))
    assert read_textual_inversion(tmp_path / "fancy.safetensors")["fancy"].shape == (2, 32)


def test_classdiffusion_token_file_alone_is_an_embedding(tmp_path):
    row = save_token_file(tmp_path / "<new1>.bin", "<new1>", 32, safetensors=True)
    concept = open_concept(tmp_path / "<new1>.bin").resolve()
    assert torch.equal(concept.tokens["<new1>"][0], row) and not concept.deltas


def test_sdxl_embedding_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"clip_l": torch.ones(1, 768), "clip_g": torch.ones(1, 1280)}, str(tmp_path / "xl.safetensors"))
    with pytest.raises(ConceptFileError, match="SDXL"):
        open_concept(tmp_path / "xl.safetensors").resolve()


def test_embedding_of_other_size_names_both_sizes(tmp_path, tiny_pipeline):
    torch.save({"<big>": torch.ones(768)}, tmp_path / "big.bin")
    concept = open_concept(tmp_path / "big.bin").resolve()
    with pytest.raises(InjectionError, match="embedding size 768, the text encoder expects 32"):
        with concepts_applied(tiny_pipeline, [(concept, 1.0, "c")]):
            pass


# Safety and wrong kinds


class NotATensor:
    pass


def test_pickle_that_needs_code_is_refused(tmp_path):
    torch.save({"<new1>": torch.ones(32), "config": NotATensor()}, tmp_path / "evil.bin")
    with pytest.raises(UnsafeFileError, match="needs code.*safetensors"):
        open_concept(tmp_path / "evil.bin")


def test_lora_given_as_concept_is_named(tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(32, 4)},
              str(tmp_path / "style.safetensors"))
    with pytest.raises(WrongFileKindError, match=r"is a LoRA \(kohya\).*--lora"):
        open_concept(tmp_path / "style.safetensors")


def test_motion_module_given_as_concept_is_named():
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "animatediff_v2_tiny.ckpt"
    with pytest.raises(WrongFileKindError, match="AnimateDiff motion module.*--motion"):
        open_concept(fixture)
