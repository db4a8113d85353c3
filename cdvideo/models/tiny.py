"""The `tiny` model: an SD-1.5-shaped text-to-video model, small and random, built offline.

It exists so that everything (quickstart, tests, benchmarks of overhead) runs without a download.
The components are built from configs with a fixed seed and written once as an ordinary diffusers
directory (unet/ vae/ text_encoder/ tokenizer/ scheduler/ motion_adapter/), which is then read by
the same loading code as a real model. Its frames are noise-like: it is random, not trained.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path

# Bump when the architecture or the seed changes, so an old cached copy is not reused.
TINY_VERSION = 2
TINY_SEED = 0

# Words that get their own token (a whole-word BPE merge); any other text still tokenizes,
# character by character, because every printable character is in the vocabulary.
_WORDS = """a an the of on in at with and photo video dog cat bear toy running sitting walking
jumping beach grass park snow city street wearing headphones hat sunglasses red blue green
bad quality worse best high low close up far away small""".split()

# Shapes follow AnimateDiff's layout: two UNet levels with two layers each and a mid block, so the
# tiny motion adapter matches the original-format fixture (block_out_channels=(32, 64)).
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
MOTION_ADAPTER_CONFIG = dict(
    block_out_channels=(32, 64),
    motion_layers_per_block=2,
    motion_norm_num_groups=32,
    motion_num_attention_heads=2,
    use_motion_mid_block=True,
    motion_max_seq_length=32,
)
# Four levels: latents are 1/8 of the frame size, as with SD 1.5's VAE.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=64,
)
TEXT_ENCODER_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=5,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
)
# AnimateDiff's sampling settings, as for the real preset.
SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    clip_sample=False,
    timestep_spacing="linspace",
    steps_offset=1,
)


def _apply_merges(parts: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """BPE as CLIP's tokenizer runs it: repeatedly join the adjacent pair with the lowest rank."""
    ranks = {pair: i for i, pair in enumerate(merges)}
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
    return parts


def build_tokenizer(words=_WORDS, model_max_length: int = 77, vocab_size: int | None = None):
    """A CLIP BPE tokenizer over printable ASCII plus whole-word merges for `words`.

    `vocab_size` pads the vocabulary with entries no text produces (SD 1.5's 49,408, so an embedding
    table and what trains it have their real size); the special tokens stay the last two ids, as in CLIP."""
    from transformers import CLIPTokenizer

    chars = [c for c in string.printable if not c.isspace()]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges: list[tuple[str, str]] = []
    for word in words:
        # Start from what the merges so far make of the word (an earlier word's ("a", "n") fires
        # inside "triangle" before any of triangle's own merges would), then join left to right.
        # New merges rank after all earlier ones, so they never break an earlier word.
        parts = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], merges)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            parts = [pair[0] + pair[1]] + parts[2:]
    for i in range(max(0, (vocab_size or 0) - 2 - len(vocab))):
        vocab[f"\u0100pad{i}"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_text_encoder(tokenizer, config: dict):
    """A CLIP text model of `config`'s size over the tokenizer's vocabulary and special tokens (tiny and Shapes)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    ))


def build_tiny_components(seed: int = TINY_SEED) -> dict:
    """Build the tiny components from configs, seeded, without touching the global RNG state."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        motion_adapter = MotionAdapter(**MOTION_ADAPTER_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_encoder = build_text_encoder(tokenizer, TEXT_ENCODER_CONFIG)
    return dict(
        unet=unet,
        motion_adapter=motion_adapter,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
    )


def save_model_dir(components: dict, path: str | os.PathLike) -> Path:
    """Write components as an SD-layout diffusers directory plus `motion_adapter/`, atomically."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        # diffusers' own writer makes model_index.json and the subfolders, so the directory also
        # loads with plain `AnimateDiffPipeline.from_pretrained(path, motion_adapter=...)`.
        StableDiffusionPipeline(
            vae=components["vae"],
            text_encoder=components["text_encoder"],
            tokenizer=components["tokenizer"],
            unet=components["unet"],
            scheduler=components["scheduler"],
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        ).save_pretrained(tmp)
        components["motion_adapter"].save_pretrained(tmp / "motion_adapter")
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "model_index.json").exists():
                raise
            shutil.rmtree(tmp)  # another process materialised it first: use theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def cache_dir() -> Path:
    """Where cdvideo keeps what it builds: $CDVIDEO_CACHE, else $XDG_CACHE_HOME/cdvideo."""
    if os.environ.get("CDVIDEO_CACHE"):
        return Path(os.environ["CDVIDEO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cdvideo"


def tiny_model_dir() -> Path:
    return cache_dir() / "models" / f"tiny-v{TINY_VERSION}"


def ensure_tiny_model() -> Path:
    """The tiny model's directory, built on first use."""
    path = tiny_model_dir()
    if not (path / "model_index.json").exists():
        save_model_dir(build_tiny_components(), path)
    return path
