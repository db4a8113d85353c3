"""Fixtures for the metric tests: synthetic videos with known answers and tiny seeded CLIP / DINO models.

The tiny models are saved with `save_pretrained` and loaded back through cdvideo's own loader,
the same code path a hub id or a downloaded model directory takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SIZE = 64  # frame side in pixels


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path_factory):
    """Never download; an empty HF cache so "missing weights" does not depend on the machine."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))


def textured_canvas(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture (uint8 (h, w, 3)): enough structure for optical flow to lock on."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(noise, (0, 0), 2.5)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)


def still_video(frames: int = 8) -> np.ndarray:
    """The same textured frame repeated: (f, SIZE, SIZE, 3)."""
    return np.repeat(textured_canvas(SIZE, SIZE)[None], frames, axis=0)


def panning_video(frames: int = 8, shift: int = 2) -> np.ndarray:
    """A window sliding `shift` pixels right per frame over a larger texture: content moves left by `shift`."""
    canvas = textured_canvas(SIZE + 40, SIZE + shift * frames + 40, seed=1)
    return np.stack([canvas[20 : 20 + SIZE, 20 + shift * t : 20 + shift * t + SIZE] for t in range(frames)])


def alternating_video(frames: int = 8, low: int = 100, high: int = 150) -> np.ndarray:
    """Flat frames alternating between two grey levels: the worst flicker for a given contrast."""
    levels = [low if t % 2 == 0 else high for t in range(frames)]
    return np.stack([np.full((SIZE, SIZE, 3), level, np.uint8) for level in levels])


def varied_video(frames: int = 6, seed: int = 2) -> np.ndarray:
    """Unrelated textures per frame, so embedding similarities differ from pair to pair."""
    return np.stack([textured_canvas(SIZE, SIZE, seed=seed + t) for t in range(frames)])


def write_sidecar(video_path: Path, document: dict) -> Path:
    path = video_path.with_suffix(".json")
    path.write_text(json.dumps(document))
    return path


PROMPT_WORDS = ["a", "photo", "of", "dog", "cat", "wearing", "headphones", "<new1>"]


def build_tiny_clip(directory: Path) -> Path:
    """A 2-layer CLIP (image 32 px, projection 16) with a local BPE tokenizer, saved to `directory`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz<>0123456789"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in [*letters, *(c + "</w>" for c in letters)]:
        vocab.setdefault(piece, len(vocab))
    # Merges that build a few whole words, so prompts are not only letters.
    merges = [("d", "o"), ("do", "g</w>"), ("c", "a"), ("ca", "t</w>"), ("o", "f</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)

    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_tiny_dino(directory: Path, seed: int = 1) -> Path:
    """A 2-layer ViT (DINO v1 architecture, image 32 px) saved to `directory`."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    torch.manual_seed(seed)
    model = ViTModel(config).eval()  # with the pooler, as hub DINO checkpoints are saved; metrics never use it
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_dino_dir(tmp_path_factory) -> Path:
    return build_tiny_dino(tmp_path_factory.mktemp("tiny_dino"))


@pytest.fixture(scope="session")
def tiny_models(tiny_clip_dir, tiny_dino_dir) -> dict[str, str]:
    """`--model` overrides pointing every embedding metric at the tiny local models."""
    clip, dino = str(tiny_clip_dir), str(tiny_dino_dir)
    return {
        "clip_temporal_consistency": clip,
        "background_consistency": clip,
        "clip_t": clip,
        "clip_i": clip,
        "subject_consistency": dino,
        "dino_i": dino,
    }


@pytest.fixture(scope="session")
def reference_images() -> list[np.ndarray]:
    """Three concept photos of different sizes (processors resize them)."""
    return [textured_canvas(48, 40, seed=10), textured_canvas(64, 64, seed=11), textured_canvas(30, 50, seed=12)]
