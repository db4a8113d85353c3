"""Metric tests with analytic answers, and embedding metrics against a direct computation of each formula."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from cdvideo.errors import ConfigError
from cdvideo.metrics import (
    METRICS,
    EvalContext,
    MetricResult,
    Unavailable,
    Video,
    evaluate_video,
    get_metric,
    parse_metric_names,
)
from cdvideo.metrics.identity import identity_over_time
from metrics_fixtures import (  # noqa: F401  (pytest fixtures are used by name)
    SIZE,
    alternating_video,
    offline_hub,
    panning_video,
    reference_images,
    still_video,
    tiny_clip_dir,
    tiny_dino_dir,
    tiny_models,
    varied_video,
)

FLOW_METRICS = ["temporal_flickering", "warping_error", "motion_magnitude", "dynamic_degree"]
EMBEDDING_METRICS = [
    "clip_temporal_consistency",
    "subject_consistency",
    "background_consistency",
    "clip_t",
    "clip_i",
    "dino_i",
]


def score(frames: np.ndarray, names: list[str], prompt: str | None = None, **settings) -> dict[str, MetricResult]:
    video = Video(frames=frames, prompt=prompt, frame_indices=list(range(len(frames))))
    results = evaluate_video(video, names, EvalContext(**settings))
    unavailable = {name: r.reason for name, r in results.items() if isinstance(r, Unavailable)}
    assert not unavailable, unavailable
    return results


# Pixel and flow metrics: analytic answers


def test_still_video_is_perfectly_consistent_and_does_not_move():
    results = score(still_video(), FLOW_METRICS)
    assert results["temporal_flickering"].value == 1.0
    assert results["warping_error"].value == pytest.approx(0.0, abs=1e-9)
    assert results["motion_magnitude"].value < 1e-3
    assert results["dynamic_degree"].value == 0.0


def test_still_video_embedding_consistency_is_one(tiny_models, reference_images):
    results = score(still_video(), EMBEDDING_METRICS, prompt="a photo of a dog", models=tiny_models, reference_images=reference_images)
    for name in ("clip_temporal_consistency", "subject_consistency", "background_consistency"):
        assert results[name].value == pytest.approx(1.0, abs=1e-5), name
    # A still clip's identity curve is flat.
    assert results["dino_i"].details["slope_per_frame"] == pytest.approx(0.0, abs=1e-6)


def test_translating_pattern_is_explained_by_flow_but_not_without_motion_compensation():
    frames = panning_video(shift=2)
    with_flow = score(frames, ["warping_error", "motion_magnitude", "dynamic_degree"], flow_method="dis")
    without = score(frames, ["warping_error"], flow_method="none")
    assert with_flow["warping_error"].value < 1e-3
    assert without["warping_error"].value > 20 * max(with_flow["warping_error"].value, 1e-4)
    assert with_flow["warping_error"].details["flow_method"].startswith("opencv-dis")
    assert without["warping_error"].details["flow_method"].startswith("none")
    # The flow recovers the known shift: 2 pixels per frame, above the 1.5 px dynamic threshold at 64 px.
    assert with_flow["motion_magnitude"].value == pytest.approx(2.0, abs=0.15)
    assert with_flow["dynamic_degree"].value == 1.0
    assert with_flow["dynamic_degree"].details["threshold_pixels"] == pytest.approx(6 * SIZE / 256)


def test_farneback_flow_also_explains_the_translation():
    frames = panning_video(shift=2)
    assert score(frames, ["warping_error"], flow_method="farneback")["warping_error"].value < 2e-3


def test_alternating_frames_flicker_by_their_contrast():
    results = score(alternating_video(low=100, high=150), ["temporal_flickering"])
    assert results["temporal_flickering"].value == pytest.approx((255 - 50) / 255)
    black_white = score(alternating_video(low=0, high=255), ["temporal_flickering"])
    assert black_white["temporal_flickering"].value == 0.0


def test_reversed_video_has_the_same_symmetric_scores(tiny_models, reference_images):
    frames = np.concatenate([panning_video(frames=5, shift=2), varied_video(frames=3)])
    names = ["temporal_flickering", "motion_magnitude", "dynamic_degree", *EMBEDDING_METRICS]
    settings = dict(models=tiny_models, reference_images=reference_images, prompt="a photo of a cat")
    forward = score(frames, names, **settings)
    backward = score(frames[::-1].copy(), names, **settings)
    for name in ("temporal_flickering", "dynamic_degree", "clip_temporal_consistency", "clip_t", "clip_i", "dino_i"):
        assert backward[name].value == pytest.approx(forward[name].value, abs=1e-5), name
    # Flow from t+1 to t is not bit-identical to the reverse of t to t+1, only close.
    assert backward["motion_magnitude"].value == pytest.approx(forward["motion_magnitude"].value, rel=0.1)
    all_pairs = [score(f, ["clip_temporal_consistency"], models=tiny_models, all_pairs=True) for f in (frames, frames[::-1].copy())]
    assert all_pairs[0]["clip_temporal_consistency"].value == pytest.approx(all_pairs[1]["clip_temporal_consistency"].value, abs=1e-5)


# Embedding metrics: the formula computed directly, one image at a time, through the plain transformers API


@pytest.fixture(scope="module")
def direct_features(tiny_clip_dir, tiny_dino_dir, reference_images):
    """Independent features: unbatched processor calls, `get_image_features` / the ViT forward."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, ViTModel

    clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    clip_processor = AutoImageProcessor.from_pretrained(tiny_clip_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    dino = ViTModel.from_pretrained(tiny_dino_dir).eval()
    dino_processor = AutoImageProcessor.from_pretrained(tiny_dino_dir)

    def unit(vector):
        vector = vector.detach().double().reshape(-1)
        return vector / vector.norm()

    def clip_image(image):
        out = clip.get_image_features(pixel_values=clip_processor(images=image, return_tensors="pt")["pixel_values"])
        return unit(getattr(out, "pooler_output", out))

    def clip_text(text):
        tokens = tokenizer(text, return_tensors="pt")
        out = clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return unit(getattr(out, "pooler_output", out))

    def dino_image(image):
        return unit(dino(pixel_values=dino_processor(images=image, return_tensors="pt")["pixel_values"]).last_hidden_state[0, 0])

    with torch.no_grad():
        yield {"clip_image": clip_image, "clip_text": clip_text, "dino_image": dino_image}


def vbench_formula(features):
    total = 0.0
    for t in range(1, len(features)):
        to_first = max(0.0, float(features[0] @ features[t]))
        to_previous = max(0.0, float(features[t - 1] @ features[t]))
        total += 0.5 * (to_first + to_previous)
    return total / (len(features) - 1)


def test_embedding_metrics_match_a_direct_computation(tiny_models, reference_images, direct_features):
    frames = varied_video(frames=6)
    prompt = "a photo of a <new1> dog wearing headphones"
    # batch_size 4 splits the 6 frames over two forward passes.
    results = score(frames, EMBEDDING_METRICS, prompt=prompt, models=tiny_models, reference_images=reference_images, batch_size=4)
    clip_frames = [direct_features["clip_image"](frame) for frame in frames]
    dino_frames = [direct_features["dino_image"](frame) for frame in frames]
    clip_refs = [direct_features["clip_image"](image) for image in reference_images]
    dino_refs = [direct_features["dino_image"](image) for image in reference_images]
    text = direct_features["clip_text"](prompt)

    consecutive = [float(clip_frames[t] @ clip_frames[t + 1]) for t in range(len(frames) - 1)]
    expected = {
        "clip_temporal_consistency": sum(consecutive) / len(consecutive),
        "subject_consistency": vbench_formula(dino_frames),
        "background_consistency": vbench_formula(clip_frames),
        "clip_t": sum(float(f @ text) for f in clip_frames) / len(frames),
        "clip_i": sum(float(f @ r) for f in clip_frames for r in clip_refs) / (len(frames) * len(clip_refs)),
        "dino_i": sum(float(f @ r) for f in dino_frames for r in dino_refs) / (len(frames) * len(dino_refs)),
    }
    for name, value in expected.items():
        assert results[name].value == pytest.approx(value, abs=1e-5), name
    assert results["clip_temporal_consistency"].per_pair == pytest.approx(consecutive, abs=1e-5)
    # The metrics must not be trivially saturated on this clip, or the comparison proves little.
    assert results["subject_consistency"].value < 0.999
    per_frame_dino = [sum(float(f @ r) for r in dino_refs) / len(dino_refs) for f in dino_frames]
    assert results["dino_i"].per_frame == pytest.approx(per_frame_dino, abs=1e-5)

    all_pairs = score(frames, ["clip_temporal_consistency"], models=tiny_models, all_pairs=True)
    pairs = [float(clip_frames[i] @ clip_frames[j]) for i in range(6) for j in range(i + 1, 6)]
    assert all_pairs["clip_temporal_consistency"].value == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)


def test_batched_and_one_at_a_time_embeddings_agree(tiny_models):
    frames = varied_video(frames=5)
    one = score(frames, ["subject_consistency", "clip_temporal_consistency"], models=tiny_models, batch_size=1)
    many = score(frames, ["subject_consistency", "clip_temporal_consistency"], models=tiny_models, batch_size=16)
    for name in one:
        assert one[name].value == pytest.approx(many[name].value, abs=1e-5)


# Identity over time


def test_identity_curve_reports_slope_per_source_frame_and_the_worst_window():
    curve = [0.9, 0.9, 0.9, 0.5, 0.4, 0.5, 0.6, 0.9, 0.9]
    sampled_every_second_frame = list(range(0, 18, 2))
    summary = identity_over_time(curve, sampled_every_second_frame, window=4)
    assert summary["worst_window"] == {"first_frame": 6, "last_frame": 12, "frames": 4, "mean": pytest.approx(0.5)}
    line = [1.0 - 0.01 * t for t in range(8)]
    assert identity_over_time(line, list(range(0, 16, 2)), window=4)["slope_per_frame"] == pytest.approx(-0.005)
    # A window longer than the clip covers the whole clip.
    assert identity_over_time([0.5, 0.7], [0, 1], window=4)["worst_window"]["mean"] == pytest.approx(0.6)


# Registry, availability, isolation


def test_every_metric_shares_one_signature_and_is_found_by_name():
    import inspect

    for name, metric in METRICS.items():
        assert get_metric(name) is metric
        assert list(inspect.signature(metric).parameters) == ["video", "context"], name
        assert metric.__doc__ and "\n" not in metric.__doc__.strip(), f"{name} needs a one-line docstring"
    assert parse_metric_names("dino_i, temporal_flickering") == ["dino_i", "temporal_flickering"]
    with pytest.raises(ConfigError, match="'dino_z'.*known metrics"):
        parse_metric_names("temporal_flickering,dino_z")


def test_missing_weights_make_only_that_metric_unavailable(tiny_models, reference_images, tmp_path):
    models = {**tiny_models, "dino_i": "facebook/dino-vits16", "subject_consistency": str(tmp_path / "no-such-dir")}
    video = Video(frames=varied_video(frames=3), frame_indices=[0, 1, 2])
    results = evaluate_video(video, ["temporal_flickering", "clip_i", "dino_i", "subject_consistency", "clip_t"], EvalContext(models=models, reference_images=reference_images))
    assert isinstance(results["dino_i"], Unavailable)
    assert "facebook/dino-vits16" in results["dino_i"].reason and "HF_HUB_OFFLINE" in results["dino_i"].reason
    assert isinstance(results["subject_consistency"], Unavailable) and "not found" in results["subject_consistency"].reason
    assert isinstance(results["clip_t"], Unavailable) and "prompt" in results["clip_t"].reason
    assert isinstance(results["clip_i"], MetricResult) and math.isfinite(results["clip_i"].value)
    assert results["temporal_flickering"].value < 1.0


def test_metrics_package_never_imports_diffusers(tmp_path, tiny_models):
    """`cdvideo eval` must run where no diffusion stack is importable (and import torch only when embedding)."""
    from cdvideo.export import write_video

    write_video(varied_video(frames=3), tmp_path / "clip.mp4", fps=8)
    models = " ".join(f"--model {name}={path}" for name, path in tiny_models.items() if name != "clip_t")
    code = f"""
import argparse, sys
sys.modules["diffusers"] = None  # any import of diffusers now fails loudly
import cdvideo.metrics
from cdvideo.cli import eval as eval_cli
assert "torch" not in sys.modules, "importing the metrics must stay light: torch loads on first embedding"
parser = argparse.ArgumentParser(); sub = parser.add_subparsers()
eval_cli.add_parser(sub)
args = parser.parse_args(["eval", {str(tmp_path / "clip.mp4")!r}, "--no-plots", *{models!r}.split()])
assert args.run(args) == 0
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "subject_consistency" in done.stdout


def test_without_opencv_only_the_flow_metrics_are_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv-python-headless were not installed
    video = Video(frames=alternating_video(frames=3), frame_indices=[0, 1, 2])
    results = evaluate_video(video, ["temporal_flickering", "warping_error", "dynamic_degree"], EvalContext())
    assert results["temporal_flickering"].value == pytest.approx(205 / 255)
    for name in ("warping_error", "dynamic_degree"):
        assert isinstance(results[name], Unavailable)
        assert results[name].reason == "optical flow needs OpenCV: pip install opencv-python-headless"
