"""A model preset's concept_binding: how concepts trained token-bound render when no --concept-binding is given."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from cdvideo.concept import load_concept, recorded_binding, save_concept
from cdvideo.config import ConceptSpec, RenderSettings
from cdvideo.errors import ConfigError
from cdvideo.models import load_preset
from cdvideo.models.presets import presets_dir
from cdvideo.render import resolve_settings

EXAMPLE = "examples/shapes-twotone-circle.safetensors"  # trained token-bound


@pytest.fixture
def region_preset(tmp_path):
    text = (presets_dir() / "shapes.yaml").read_text()
    path = tmp_path / "mine.yaml"
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith("concept_binding:"))
                    + '\nconcept_binding: "region"\n')
    return load_preset(str(path))


def resolved(preset, **fields):
    return resolve_settings(RenderSettings(prompt="a <new1> circle on a red background", model="shapes", seed=1, **fields),
                            preset)


def test_one_concept_trained_token_bound_renders_with_the_presets_binding(region_preset, tmp_path):
    assert recorded_binding(EXAMPLE) == "token"
    default = resolved(region_preset, concepts=[ConceptSpec(EXAMPLE)])
    assert default.concept_binding == "region"
    # Region-bound concepts leave the rest of the picture alone themselves: the preset's schedule is not added.
    assert region_preset.concept_schedule and default.concept_schedule is None
    # What the user says wins; no concept, no binding.
    assert resolved(region_preset, concepts=[ConceptSpec(EXAMPLE)], concept_binding="token").concept_binding == "token"
    assert resolved(region_preset, concepts=[ConceptSpec(EXAMPLE)], concept_schedule="0:0.5, 0.5:1"
                    ).concept_schedule == "0:0.5, 0.5:1"
    assert resolved(region_preset).concept_binding is None
    # A concept trained merged (as other tools' files are) keeps its own binding, and so does a mix.
    merged = load_concept(EXAMPLE)
    merged.training = {**merged.training, "binding": "merged"}
    save_concept(dataclasses.replace(merged, tokens={"<new2>": merged.tokens["<new1>"]},
                                     class_words={"<new2>": "circle"}), tmp_path / "merged.safetensors")
    assert recorded_binding(tmp_path / "merged.safetensors") == "merged"
    as_trained = resolved(region_preset, concepts=[ConceptSpec(str(tmp_path / "merged.safetensors"))])
    assert as_trained.concept_binding is None and as_trained.concept_schedule == region_preset.concept_schedule
    explicit = resolved(region_preset, concepts=[ConceptSpec(EXAMPLE)], concept_binding="token")
    assert explicit.concept_schedule == region_preset.concept_schedule
    assert resolved(region_preset, concepts=[ConceptSpec(EXAMPLE), ConceptSpec(str(tmp_path / "merged.safetensors"))]
                    ).concept_binding is None
    # Several concepts, even all trained token-bound, render as trained, with the preset's schedule.
    token2 = load_concept(EXAMPLE)
    save_concept(dataclasses.replace(token2, tokens={"<new3>": token2.tokens["<new1>"]}, class_words={"<new3>": "circle"}),
                 tmp_path / "token2.safetensors")
    two = resolved(region_preset, concepts=[ConceptSpec(EXAMPLE), ConceptSpec(str(tmp_path / "token2.safetensors"))])
    assert two.concept_binding is None and two.concept_schedule == region_preset.concept_schedule
    # A source video: as trained (the binding default is measured for text-to-video only).
    source = tmp_path / "source"
    source.mkdir()
    for i in range(8):
        Image.fromarray(np.full((32, 32, 3), 30 * i, dtype=np.uint8)).save(source / f"{i:03d}.png")
    assert resolved(region_preset, concepts=[ConceptSpec(EXAMPLE)], video=str(source)).concept_binding is None


def test_a_bad_preset_binding_names_the_file(tmp_path):
    text = (presets_dir() / "shapes.yaml").read_text()
    bad = tmp_path / "mine.yaml"
    bad.write_text(text + '\nconcept_binding: "regional"\n')
    with pytest.raises(ConfigError, match=r"mine\.yaml: concept_binding: unknown binding 'regional'"):
        load_preset(str(bad))


def test_unreadable_or_foreign_files_record_no_binding(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not a file")
    assert recorded_binding(tmp_path / "x.safetensors") is None
    assert recorded_binding(tmp_path / "missing.safetensors") is None
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"), metadata={"training": '{"binding": "token"}'})
    assert recorded_binding(tmp_path / "foreign.safetensors") is None  # not a cdvideo concept file
