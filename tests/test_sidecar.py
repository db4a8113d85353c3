"""The sidecar module: read back what render wrote, and decide for resume whether a render is finished."""

import json

import pytest

from cdvideo.errors import ConfigError
from cdvideo.sidecar import SIDECAR_FORMAT, changed_concepts, finished_render, read_sidecar, sidecar_path


def _finished(tmp_path, settings, concepts=()):
    video = tmp_path / "0000-dog-1.mp4"
    video.write_bytes(b"video")
    record = {"format": SIDECAR_FORMAT, "video": video.name, "settings": settings, "concepts": list(concepts)}
    sidecar_path(video).write_text(json.dumps(record))
    return video


def test_sidecar_path_is_beside_the_video_or_frames_folder(tmp_path):
    assert sidecar_path(tmp_path / "dog.mp4") == tmp_path / "dog.json"
    assert sidecar_path(tmp_path / "dog") == tmp_path / "dog.json"


def test_a_render_is_finished_only_with_the_same_settings(tmp_path):
    video = _finished(tmp_path, {"prompt": "a dog", "seed": 1})
    assert finished_render(video, {"prompt": "a dog", "seed": 1})["video"] == video.name
    assert finished_render(video, {"prompt": "a dog", "seed": 2}) is None  # a changed setting re-renders
    assert finished_render(video, {"prompt": "a dog", "seed": 2}, ignore=("seed",)) is not None  # a random seed
    video.unlink()
    assert finished_render(video, {"prompt": "a dog", "seed": 1}) is None  # the video is gone


def test_a_changed_concept_file_makes_the_render_unfinished(tmp_path):
    from cdvideo.concept import file_sha256

    concept = tmp_path / "dog.safetensors"
    concept.write_bytes(b"one")
    video = _finished(tmp_path, {"seed": 1}, [{"path": str(concept), "sha256": file_sha256(concept)}])
    sidecar = json.loads(sidecar_path(video).read_text())
    assert changed_concepts(sidecar) == [] and finished_render(video, {"seed": 1}) is not None
    concept.write_bytes(b"two")
    assert changed_concepts(sidecar) == [str(concept)] and finished_render(video, {"seed": 1}) is None


def test_read_sidecar_refuses_what_render_did_not_write(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {}}))
    with pytest.raises(ConfigError, match="not a cdvideo render sidecar"):
        read_sidecar(other)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({"format": SIDECAR_FORMAT, "video": 3, "settings": {}}))
    with pytest.raises(ConfigError, match="'video' must be a file name"):
        read_sidecar(edited)
