"""Bad input, as a new (or careless, or hostile) user gives it: the checklist of issue 18. Keep it growing.

Each case of the table runs one command and asserts what the user sees and keeps: a non-zero exit, one
line on stderr naming the problem, no model loaded where the input allows refusing before, and every
file the user had still there, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
from pathlib import Path

import numpy as np
import pytest
import torch

from cdvideo.cli import main
from conftest import EXAMPLE_CONCEPT

QUICK = ["--model", "tiny", "--num-frames", "4", "--height", "32", "--width", "32", "--steps", "1", "--quiet"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) -> hash of its bytes; folders as '<dir>'."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        found[name] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def user_files(tmp_path, monkeypatch):
    """A working directory holding a user's folder, video, notes and sidecar-lookalike, all precious."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "precious.txt").write_text("do not lose me")
    (tmp_path / "holiday.mp4").write_bytes(b"the user's own video")
    (tmp_path / "notes.json").write_text('{"mine": true}')
    (tmp_path / "x.json").write_text('{"also": "mine"}')
    return tmp_path


@pytest.fixture
def no_model_loading(monkeypatch):
    import cdvideo.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before validation finished")

    monkeypatch.setattr(cdvideo.models, "load_pipeline", refuse)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, message):
    assert code != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# 1. Output paths: nothing a user owns is deleted or overwritten; refused before loading.

RENDER_OUT_CASES = [
    # (--out, extra flags, message)
    ("photos", ["--format", "frames"], "existing folder that cdvideo did not write"),
    ("photos", [], "existing folder that cdvideo did not write"),
    (".", ["--format", "frames"], "names a folder, not a video"),
    ("..", ["--format", "frames"], "names a folder, not a video"),
    ("/dev/full", ["--format", "frames"], "not a plain file or folder"),
    ("/proc/x.mp4", [], "cannot write in /proc"),
    ("holiday.mp4", [], "cdvideo did not write it"),
    ("notes.mp4", [], "notes.json exists and is not a cdvideo sidecar"),
    ("x.json", ["--format", "gif"], "does not end in .gif"),
    ("x.json", ["--format", "mp4"], "does not end in .mp4"),
    ("clip.mp4", ["--format", "frames"], "a folder of PNG frames takes a path without an extension"),
    ("holiday.mp4/x.mp4", [], "holiday.mp4 is not a folder"),
]


@pytest.mark.parametrize("out,extra,message", RENDER_OUT_CASES, ids=[c[0] + " " + " ".join(c[1]) for c in RENDER_OUT_CASES])
def test_render_refuses_outputs_it_did_not_write(capsys, user_files, no_model_loading, out, extra, message):
    before = snapshot(user_files)
    code, _, err = run_cli(capsys, "render", *QUICK, "--prompt", "a dog", "--out", out, *extra)
    assert_one_line(code, err, message)
    assert snapshot(user_files) == before


def test_existing_user_folder_survives_out_untouched(capsys, user_files):
    """The reported data loss: `--out DIR` emptied the user's folder and filled it with frames."""
    before = snapshot(user_files)
    code, _, err = run_cli(capsys, "render", *QUICK, "--prompt", "a dog", "--out", "photos", "--format", "frames")
    assert code == 2 and "did not write" in err
    assert (user_files / "photos" / "precious.txt").read_text() == "do not lose me"
    assert snapshot(user_files) == before
    # Even past every check (a library caller), the writer itself refuses to replace the folder.
    from cdvideo.errors import UnsafeOutputError
    from cdvideo.export import write_video

    with pytest.raises(UnsafeOutputError):
        write_video(np.zeros((2, 8, 8, 3), np.uint8), user_files / "photos", fps=8, format="frames")
    assert snapshot(user_files) == before


def test_a_cdvideo_output_of_the_same_name_is_replaced(capsys, user_files):
    """What cdvideo wrote itself (a video its sidecar names, a marked frames folder) may be rendered again."""
    for out, extra in (("dog.mp4", []), ("frames", ["--format", "frames"])):
        for seed in ("1", "2"):
            code, _, err = run_cli(capsys, "render", *QUICK, "--prompt", "a dog", "--seed", seed, "--out", out, *extra)
            assert code == 0, err
        sidecar = json.loads((user_files / (Path(out).stem + ".json")).read_text())
        assert sidecar["settings"]["seed"] == 2


def _limit_file_size(monkeypatch, limit: int) -> None:
    """From now on, writes past `limit` bytes fail as on a full disk (RLIMIT_FSIZE: ffmpeg, a child, dies
    of SIGXFSZ mid-file; Python gets EFBIG), only while the video is encoded."""
    import cdvideo.export

    encode = cdvideo.export.encode_video

    def limited(*args, **kwargs):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            return encode(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    monkeypatch.setattr("cdvideo.render.encode_video", limited)


@pytest.mark.parametrize("format", ["mp4", "gif"])
def test_failed_encode_keeps_the_previous_video_and_exits_non_zero(capsys, user_files, monkeypatch, format):
    """The reported corruption: a full disk during the encode renamed a truncated file over a good video
    and wrote a sidecar claiming success, exit 0."""
    out = f"dog.{format}"
    flags = [*QUICK[:-5], "--height", "64", "--width", "64", "--steps", "1", "--quiet"]
    code, _, err = run_cli(capsys, "render", *flags, "--prompt", "a dog", "--seed", "1", "--out", out)
    assert code == 0, err
    before = snapshot(user_files)
    _limit_file_size(monkeypatch, 600)
    code, _, err = run_cli(capsys, "render", *flags, "--prompt", "a dog", "--seed", "2", "--out", out)
    assert_one_line(code, err, "could not write")
    assert snapshot(user_files) == before  # old video and old sidecar, nothing left behind
    assert json.loads((user_files / "dog.json").read_text())["settings"]["seed"] == 1
