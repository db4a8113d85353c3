"""A model preset's concept_schedule: what `cdvideo render --concept X` uses when no schedule is given."""

import numpy as np
import pytest
from PIL import Image

from cdvideo.config import ConceptSpec, RenderSettings
from cdvideo.errors import ConfigError
from cdvideo.models import load_preset
from cdvideo.render import resolve_settings

EXAMPLE = "examples/shapes-twotone-circle.safetensors"


def resolved(**fields):
    return resolve_settings(RenderSettings(prompt="a <new1> circle on a red background", model="shapes", seed=1, **fields),
                            load_preset("shapes"))


def test_the_presets_schedule_is_the_default_for_text_to_video_with_concepts(tmp_path):
    preset = load_preset("shapes")
    assert preset.concept_schedule == "0:0.5, 0.3:1"
    # (The example concept renders region-bound by default, without the schedule: tests/test_concept_binding_default.py.)
    assert resolved(concepts=[ConceptSpec(EXAMPLE)]).concept_schedule is None
    assert resolved(concepts=[ConceptSpec(EXAMPLE)], concept_binding="token").concept_schedule == preset.concept_schedule
    # What the user says wins; no concept, no schedule.
    assert resolved(concepts=[ConceptSpec(EXAMPLE)], concept_schedule="0:1").concept_schedule == "0:1"
    start = resolved(concepts=[ConceptSpec(EXAMPLE)], concept_start=0.2)
    assert start.concept_schedule is None and start.concept_start == 0.2
    assert resolved().concept_schedule is None
    # A source video gives the motion: concepts act at full strength.
    source = tmp_path / "source"
    source.mkdir()
    for i in range(8):
        Image.fromarray(np.full((32, 32, 3), 30 * i, dtype=np.uint8)).save(source / f"{i:03d}.png")
    assert resolved(concepts=[ConceptSpec(EXAMPLE)], concept_binding="token", video=str(source)).concept_schedule is None


def test_the_shipped_model_directory_carries_the_same_default():
    from cdvideo.models.sources import shapes_model_dir

    assert load_preset(str(shapes_model_dir())).concept_schedule == load_preset("shapes").concept_schedule
    assert load_preset(str(shapes_model_dir())).concept_binding == load_preset("shapes").concept_binding == "region"


def test_a_bad_preset_schedule_names_the_file(tmp_path):
    from cdvideo.models.presets import presets_dir

    text = (presets_dir() / "shapes.yaml").read_text()
    bad = tmp_path / "mine.yaml"
    bad.write_text(text.replace('concept_schedule: "0:0.5, 0.3:1"', 'concept_schedule: "0.5:0.5, 0.3:1"'))
    with pytest.raises(ConfigError, match=r"mine\.yaml: concept_schedule"):
        load_preset(str(bad))
