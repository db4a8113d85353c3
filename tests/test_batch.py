"""Batch runs on the tiny model: outputs per item, manifest, resume, failures, locking, batched calls, gallery."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdvideo.batch import output_lock, plan_batch, run_batch
from cdvideo.cli import main
from cdvideo.errors import OutputLockedError
from cdvideo.export import read_video
from cdvideo.sidecar import read_sidecar
from conftest import EXAMPLE_CONCEPT

TINY = {"model": "tiny", "num_frames": 4, "height": 32, "width": 32, "steps": 2}
CHROMIUM = "/usr/bin/chromium"


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def write_jsonl(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


@pytest.fixture(scope="module")
def finished_batch(tmp_path_factory, tiny_renderer):
    """Two prompts rendered once to mp4; tests that only look at the results share it."""
    root = tmp_path_factory.mktemp("batch")
    prompts = write_jsonl(root / "p.jsonl", [
        {"prompt": "a <new1> dog & <b>friends</b>", "seed": 1, "concepts": [EXAMPLE_CONCEPT]},
        {"prompt": "a cat on a sofa", "seed": 2},
    ])
    items = plan_batch(prompts, TINY)
    report = run_batch(items, root / "out", renderer=tiny_renderer, progress=False)
    return root, prompts, report


def test_each_item_gets_a_playable_video_sidecar_and_manifest_line(finished_batch):
    root, _, report = finished_batch
    out = root / "out"
    records = manifest(out)
    assert [r["status"] for r in records] == ["done", "done"] and report.ok
    for record in records:
        frames, _ = read_video(out / record["video"])
        assert frames.shape == (4, 32, 32, 3)
        assert read_sidecar(out / record["sidecar"])["settings"]["seed"] == record["seed"]
        assert record["timings"]["render_s"] > 0 and record["error"] is None
    assert records[0]["concepts"] == [{"path": EXAMPLE_CONCEPT, "strength": 1.0}]
    assert not list(out.glob(".*partial*")) and not list(out.glob(".manifest.part*"))


def test_rerun_skips_finished_items_and_rerenders_only_changed_ones(finished_batch, tiny_renderer, tmp_path):
    root, prompts, _ = finished_batch
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("000*")}
    again = run_batch(plan_batch(prompts, TINY), out, renderer=tiny_renderer, progress=False)
    assert [r["status"] for r in again.records] == ["skipped", "skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("000*")} == before

    entries = [json.loads(line) for line in prompts.read_text().splitlines()]
    entries[1]["guidance_scale"] = 3.0
    changed = write_jsonl(tmp_path / "changed.jsonl", entries)
    third = run_batch(plan_batch(changed, TINY), out, renderer=tiny_renderer, progress=False)
    assert [r["status"] for r in third.records] == ["skipped", "done"]
    assert read_sidecar(out / third.records[1]["sidecar"])["settings"]["guidance_scale"] == 3.0


def test_contact_sheet_has_a_row_of_three_frames_per_item(finished_batch):
    sheet = Image.open(finished_batch[0] / "out" / "contact_sheet.png")
    assert sheet.height == 2 * (128 + 30)  # two items: 32 px frames shown at 128 px, plus captions
    assert sheet.width >= 3 * 128


def test_gallery_lists_every_video_with_its_prompt_escaped(finished_batch):
    page = (finished_batch[0] / "out" / "index.html").read_text()
    assert page.count("<video ") == 2
    assert "a &lt;new1&gt; dog &amp; &lt;b&gt;friends&lt;/b&gt;" in page and "<b>friends" not in page


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium at /usr/bin/chromium")
def test_gallery_plays_in_headless_chromium(finished_batch):
    page = finished_batch[0] / "out" / "index.html"
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=90,
    ).stdout
    assert dom.count('data-playable="yes"') == 2, dom[-2000:]
    assert "a cat on a sofa" in dom


def test_failing_item_is_recorded_and_the_batch_goes_on(tmp_path, capsys, tiny_pipeline):
    # tiny_pipeline: the session's tiny model is built, so the command loads it from the cache.
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a dog", "seed": 1, "concepts": ["missing.safetensors"]},
        {"prompt": "a cat", "seed": 1},
    ])
    out = tmp_path / "out"
    flags = ["--model", "tiny", "--num-frames", "4", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]
    assert main(["batch", str(prompts), "--out", str(out), *flags]) == 1
    records = manifest(out)
    assert [r["status"] for r in records] == ["failed", "done"]
    assert "concept file not found" in records[0]["error"] and "missing.safetensors" in records[0]["error"]
    printed = capsys.readouterr().out
    assert "1 done, 1 failed" in printed and "concept file not found" in printed


def test_second_batch_on_the_same_folder_is_refused(tmp_path, tiny_renderer):
    items = plan_batch(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a dog", "seed": 1}]), TINY)
    with output_lock(tmp_path / "out"):
        with pytest.raises(OutputLockedError, match=r"in use by another cdvideo batch \(pid \d+\)"):
            run_batch(items, tmp_path / "out", renderer=tiny_renderer, progress=False)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_batched_calls_equal_one_by_one_renders(tmp_path, tiny_renderer):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a dog running", "seed": 1},
        {"prompt": "a cat on a sofa", "seed": 2**64 - 1, "negative_prompt": "blurry"},
        {"prompt": "a bird", "seed": 3},
    ])
    items = plan_batch(prompts, {**TINY, "format": "frames"})  # PNG frames: lossless, exact comparison
    report = run_batch(items, tmp_path / "out", batch_size=3, renderer=tiny_renderer, progress=False, gallery=False)
    assert [r["batched_with"] for r in report.records] == [3, 3, 3]
    worst = 0
    for item, record in zip(items, report.records):
        batched, _ = read_video(tmp_path / "out" / record["video"])
        alone = tiny_renderer.render(item.settings, progress=False)
        worst = max(worst, int(np.abs(batched.astype(int) - alone.astype(int)).max()))
    assert worst <= 2, f"largest pixel difference {worst}/255"  # float rounding of batched kernels only


def test_concepts_are_switched_by_injection_and_taken_off(tmp_path, tiny_renderer, tiny_pipeline):
    before = {k: v.clone() for k, v in tiny_pipeline.unet.state_dict().items()}
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a <new1> dog", "seed": 4, "concepts": [{"path": EXAMPLE_CONCEPT, "strength": [0.0, 1.0]}]},
        {"prompt": "a dog", "seed": 4},
    ])
    items = plan_batch(prompts, {**TINY, "format": "frames"})
    report = run_batch(items, tmp_path / "out", renderer=tiny_renderer, progress=False, gallery=False)
    frames = [read_video(tmp_path / "out" / r["video"])[0] for r in report.records]
    assert not np.array_equal(frames[0], frames[1])  # strength 0 vs 1: the sweep changes the video
    assert np.array_equal(frames[2], tiny_renderer.render(items[2].settings, progress=False))
    assert all(torch.equal(before[k], v) for k, v in tiny_pipeline.unet.state_dict().items())


def test_random_seed_is_recorded_and_kept_on_resume(tmp_path, tiny_renderer):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a dog", "seed": -1}])
    first = run_batch(plan_batch(prompts, TINY), tmp_path / "out", renderer=tiny_renderer, progress=False,
                      gallery=False)
    again = run_batch(plan_batch(prompts, TINY), tmp_path / "out", renderer=tiny_renderer, progress=False,
                      gallery=False)
    assert first.records[0]["random_seed"] and again.records[0]["status"] == "skipped"
    assert again.records[0]["seed"] == first.records[0]["seed"]
    assert read_sidecar(tmp_path / "out" / first.records[0]["sidecar"])["settings"]["seed"] == first.records[0]["seed"]
