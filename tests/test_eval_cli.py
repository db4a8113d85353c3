"""`cdvideo eval` as a user runs it: files, batch folders, bad inputs, reports and annotations."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from cdvideo.errors import ConfigError
from cdvideo.export import write_video
from cdvideo.cli import eval as eval_cli
from metrics_fixtures import (  # noqa: F401  (pytest fixtures are used by name)
    offline_hub,
    panning_video,
    reference_images,
    still_video,
    tiny_clip_dir,
    tiny_dino_dir,
    tiny_models,
    varied_video,
    write_sidecar,
)

OFFLINE = "temporal_flickering,warping_error,motion_magnitude,dynamic_degree"


def run_eval(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", *map(str, argv)])
    return args.run(args)


def model_flags(models: dict[str, str]) -> list[str]:
    return [flag for name, path in models.items() for flag in ("--model", f"{name}={path}")]


@pytest.fixture
def batch_folder(tmp_path: Path) -> Path:
    """A batch folder as `cdvideo batch` leaves it: videos, sidecars, a manifest; one video corrupt, one a single frame."""
    folder = tmp_path / "batch"
    folder.mkdir()
    write_video(panning_video(frames=6), folder / "pan.mp4", fps=8)
    write_sidecar(folder / "pan.mp4", {"settings": {"prompt": "a photo of a <new1> dog"}, "prompt": "ignored"})
    write_video(still_video(frames=4), folder / "still.mp4", fps=8)
    write_sidecar(folder / "still.mp4", {"prompt": "a photo of a cat"})
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    (folder / "empty.webm").write_bytes(b"")
    write_video(still_video(frames=1), folder / "one.mp4", fps=8)
    records = [{"video": name, "seed": i} for i, name in enumerate(["pan.mp4", "broken.mp4", "still.mp4", "one.mp4", "gone.mp4", "empty.webm"])]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_batch_folder_reports_bad_files_scores_the_rest_and_exits_non_zero(batch_folder, tiny_models, reference_images, tmp_path, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, image in enumerate(reference_images):
        Image.fromarray(image).save(refs / f"{i}.png")
    manifest_before = (batch_folder / "manifest.jsonl").read_bytes()

    code = run_eval(batch_folder, "--reference-images", refs, *model_flags(tiny_models), "--json", tmp_path / "s.json", "--csv", tmp_path / "s.csv", "--plot-dir", tmp_path / "plots")
    out = capsys.readouterr().out

    assert code == 1
    assert "broken.mp4\n  error: could not read" in out
    assert "one.mp4\n  error:" in out and "need at least 2" in out
    assert "gone.mp4\n  error: video not found" in out
    assert "empty.webm\n  error: " in out and "is empty (0 bytes)" in out
    assert "aggregate over 2 of 6 videos (4 failed)" in out

    report = json.loads((tmp_path / "s.json").read_text())
    by_name = {Path(v["video"]).name: v for v in report["videos"]}
    assert by_name["pan.mp4"]["prompt"] == "a photo of a <new1> dog"  # settings.prompt wins over the top level
    assert by_name["still.mp4"]["prompt"] == "a photo of a cat"  # top-level fallback
    still = by_name["still.mp4"]["metrics"]
    assert still["temporal_flickering"]["value"] == pytest.approx(1.0, abs=2e-3)  # after H.264 round trip
    assert still["dynamic_degree"]["value"] == 0.0
    assert by_name["pan.mp4"]["metrics"]["dynamic_degree"]["value"] == 1.0
    assert len(by_name["pan.mp4"]["metrics"]["warping_error"]["per_pair"]) == 5
    assert by_name["pan.mp4"]["metrics"]["dino_i"]["worst_window"]["frames"] == 4
    assert report["settings"]["models"]["dino_i"] == tiny_models["dino_i"]
    assert report["aggregate"]["dynamic_degree"] == {"mean": 0.5, "videos": 2}

    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [Path(r["video"]).name for r in rows] == ["pan.mp4", "broken.mp4", "still.mp4", "one.mp4", "gone.mp4", "empty.webm", "mean"]
    assert rows[1]["error"] and rows[1]["temporal_flickering"] == ""
    assert float(rows[-1]["dynamic_degree"]) == 0.5

    # The manifest is untouched; scores.jsonl carries every manifest line with its scores.
    assert (batch_folder / "manifest.jsonl").read_bytes() == manifest_before
    scored = [json.loads(line) for line in (batch_folder / "scores.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in scored] == [0, 1, 2, 3, 4, 5]
    assert scored[0]["eval_error"] is None and 0 < scored[0]["scores"]["clip_i"] <= 1
    assert scored[1]["eval_error"] and scored[1]["scores"] == {}
    assert not list(batch_folder.glob(".*partial*"))

    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["pan.identity.png", "still.identity.png"]
    with Image.open(tmp_path / "plots" / "pan.identity.png") as plot:
        assert plot.size == (640, 360) and len(set(plot.getdata())) > 3  # something drawn, not a blank canvas


def test_plots_beside_videos_do_not_turn_a_folder_into_a_frames_folder(tmp_path, tiny_models, reference_images, capsys):
    write_video(panning_video(frames=4), tmp_path / "a.mp4", fps=8)
    write_video(still_video(frames=4), tmp_path / "b.mp4", fps=8)
    Image.fromarray(reference_images[0]).save(tmp_path / "ref.jpg")
    argv = [tmp_path, "--metrics", "temporal_flickering,clip_i", "--reference-images", tmp_path / "ref.jpg", *model_flags(tiny_models)]
    assert run_eval(*argv) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a.identity.png", "b.identity.png"]
    first = capsys.readouterr().out
    assert run_eval(*argv) == 0  # the second run sees the same two videos, not a folder of PNG frames
    assert capsys.readouterr().out == first
    assert "aggregate over 2 of 2 videos" in first


def test_a_single_good_video_exits_zero_and_missing_weights_are_reported(tmp_path, capsys):
    write_video(panning_video(frames=4), tmp_path / "dog.mp4", fps=8)
    Image.fromarray(panning_video(frames=1)[0]).save(tmp_path / "ref.png")
    code = run_eval(tmp_path / "dog.mp4", "--metrics", "temporal_flickering,dino_i", "--reference-images", tmp_path / "ref.png", "--no-plots")
    out = capsys.readouterr().out
    assert code == 0
    assert "dino_i" in out and "unavailable: facebook/dino-vits16 is not in the local cache" in out


def test_stride_and_max_frames_choose_the_scored_frames(tmp_path, capsys):
    write_video(varied_video(frames=10), tmp_path / "v.mp4", fps=8)
    run_eval(tmp_path / "v.mp4", "--metrics", "temporal_flickering,dynamic_degree", "--stride", 3, "--max-frames", 3, "--json", tmp_path / "s.json", "--per-pair")
    out = capsys.readouterr().out
    assert "dynamic_degree [top-5% flow, pixels]" in out  # per-pair table, its unit named
    assert "\n0-1 " in out and "\n1-2 " in out and "\n2-3 " not in out
    video = json.loads((tmp_path / "s.json").read_text())["videos"][0]
    assert video["frames"] == 3  # frames 0, 3, 6
    assert len(video["metrics"]["temporal_flickering"]["per_pair"]) == 2


def test_frames_folder_with_mismatched_sizes_is_a_per_file_error(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (64, 64)).save(frames / "00000.png")
    Image.new("RGB", (64, 48)).save(frames / "00001.png")
    write_video(still_video(frames=3), tmp_path / "ok.mp4", fps=8)
    code = run_eval(frames, tmp_path / "ok.mp4", "--metrics", OFFLINE)
    out = capsys.readouterr().out
    assert code == 1
    assert "frames differ in size (00000.png is 64x64, 00001.png is 64x48)" in out
    assert "ok.mp4  (3 frames, 64x64)" in out


def test_unreadable_and_missing_folders_are_per_file_errors(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    original = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    # Root can read any folder, so the permission error is simulated.
    monkeypatch.setattr(Path, "iterdir", iterdir)
    write_video(still_video(frames=3), tmp_path / "ok.mp4", fps=8)
    code = run_eval(locked, tmp_path / "nowhere", tmp_path / "ok.mp4", "--metrics", "temporal_flickering")
    out = capsys.readouterr().out
    assert code == 1
    assert f"cannot list folder {locked}: Permission denied" in out
    assert f"not found: {tmp_path / 'nowhere'}" in out
    assert "aggregate over 1 of 3 videos (2 failed)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--metrics", "flicker"], "unknown metric 'flicker'"),
        (["--stride", "0"], "--stride must be 1 or more"),
        (["--max-frames", "1"], "--max-frames must be 2 or more"),
        (["--model", "warping_error=x"], "'warping_error' uses no model"),
        (["--model", "dino_i"], "--model expects METRIC=ID"),
    ],
)
def test_bad_flags_name_the_flag_before_anything_is_read(argv, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run_eval(tmp_path / "never-read.mp4", *argv)


def test_cdvideo_main_prints_one_line_for_a_bad_flag(tmp_path, capsys):
    from cdvideo.cli import main

    assert main(["eval", str(tmp_path / "x.mp4"), "--metrics", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown metric 'nope'") and err.count("\n") == 1


def test_batch_gallery_shows_scores_and_unrendered_items_are_skipped(tmp_path, capsys):
    from cdvideo.gallery import write_index_html

    folder = tmp_path / "batch"
    write_video(panning_video(frames=4), folder / "000-dog.mp4", fps=8)

    def record(index, name, status):
        return {"index": index, "name": name, "status": status, "prompt": f"a {name}", "seed": index,
                "concepts": [], "video": f"{name}.mp4", "sidecar": f"{name}.json", "error": None}

    records = [record(0, "000-dog", "done"), record(1, "001-cat", "failed")]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_index_html(folder, records)
    assert "temporal_flickering" not in (folder / "index.html").read_text()

    code = run_eval(folder, "--metrics", "temporal_flickering,dynamic_degree")
    captured = capsys.readouterr()

    assert code == 0  # a render that failed is the batch's error, not eval's
    assert "skipped" in captured.err and "001-cat.mp4: not rendered (manifest status failed)" in captured.err
    page = (folder / "index.html").read_text()
    assert "<dt>temporal_flickering</dt>" in page and "<dt>dynamic_degree</dt>" in page
    scored = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    assert [r["video"] for r in scored] == ["000-dog.mp4"]
    assert (folder / "scores.jsonl").stat().st_mode & 0o044  # readable by others, like every output
