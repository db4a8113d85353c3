"""The concept file: round trip, validation, and one-line errors for bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cdvideo.concept import Concept, load_concept, save_concept
from cdvideo.errors import ConceptFileError, InputFileError

PARAM = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
MOTION_PARAM = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.to_k.weight"


def small_concept():
    g = torch.Generator().manual_seed(0)
    return Concept(
        tokens={"<new1>": torch.randn(1, 32, generator=g), "<new2>": torch.randn(3, 32, generator=g)},
        class_words={"<new1>": "dog", "<new2>": "hat"},
        deltas={
            PARAM: torch.randn(32, 32, generator=g),
            PARAM.replace("to_k", "to_v"): (torch.randn(32, 4, generator=g), torch.randn(4, 32, generator=g)),
        },
        base_model="builtin:tiny",
        base_fingerprint="0123456789abcdef",
        method="classdiffusion",
        training={"steps": 500, "spl_weight": 1.0},
    )


def test_round_trip_keeps_every_tensor_and_field(tmp_path):
    concept = small_concept()
    path = save_concept(concept, tmp_path / "c.safetensors")
    loaded = load_concept(path)
    assert set(loaded.tokens) == {"<new1>", "<new2>"}
    for token, embedding in concept.tokens.items():
        assert torch.equal(loaded.tokens[token], embedding)
    assert torch.equal(loaded.deltas[PARAM], concept.deltas[PARAM])
    up, down = concept.deltas[PARAM.replace("to_k", "to_v")]
    assert torch.equal(loaded.delta(PARAM.replace("to_k", "to_v")), up @ down)
    assert loaded.class_words == concept.class_words
    assert (loaded.base_model, loaded.base_fingerprint, loaded.training) == (
        "builtin:tiny", "0123456789abcdef", {"steps": 500, "spl_weight": 1.0})


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(InputFileError, match="nope.safetensors"):
        load_concept(tmp_path / "nope.safetensors")


def test_truncated_file_is_a_one_line_error(tmp_path):
    path = save_concept(small_concept(), tmp_path / "c.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConceptFileError, match="corrupt or truncated") as info:
        load_concept(path)
    assert "\n" not in str(info.value)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ConceptFileError, match="not a readable safetensors"):
        load_concept(path)


def test_foreign_safetensors_points_to_convert(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"<new1>": torch.zeros(32)}, path)
    with pytest.raises(ConceptFileError, match="concept convert"):
        load_concept(path)


def test_unexpected_tensor_is_named(tmp_path):
    path = tmp_path / "c.safetensors"
    meta = {"format": "cdvideo.concept", "format_version": "1", "tokens": "[]"}
    save_file({f"unet.{PARAM}.delta": torch.zeros(32, 32), "text_encoder.foo": torch.zeros(2)}, path, metadata=meta)
    with pytest.raises(ConceptFileError, match="text_encoder.foo"):
        load_concept(path)


def test_motion_module_parameters_are_refused(tmp_path):
    concept = small_concept()
    concept.deltas = {MOTION_PARAM: torch.zeros(32, 32)}
    with pytest.raises(ConceptFileError, match="motion_modules"):
        save_concept(concept, tmp_path / "c.safetensors")


def test_newer_format_version_asks_for_upgrade(tmp_path):
    path = tmp_path / "c.safetensors"
    meta = {"format": "cdvideo.concept", "format_version": "9", "tokens": json.dumps(["<x>"])}
    save_file({"token.<x>": torch.zeros(1, 32)}, path, metadata=meta)
    with pytest.raises(ConceptFileError, match="upgrade cdvideo"):
        load_concept(path)


def test_header_token_list_must_match_tensors(tmp_path):
    path = tmp_path / "c.safetensors"
    meta = {"format": "cdvideo.concept", "format_version": "1", "tokens": json.dumps(["<a>", "<b>"])}
    save_file({"token.<a>": torch.zeros(1, 32)}, path, metadata=meta)
    with pytest.raises(ConceptFileError, match="<b>"):
        load_concept(path)


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = save_concept(small_concept(), tmp_path / "c.safetensors")
    before = path.read_bytes()
    bad = small_concept()
    bad.tokens["<new1>"] = torch.zeros(32)  # 1-D: invalid
    with pytest.raises(ConceptFileError):
        save_concept(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
