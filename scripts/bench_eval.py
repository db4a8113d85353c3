"""Benchmark `cdvideo eval`'s two costs in one run: decoding (decord vs imageio) and embeddings (batched vs one frame at a time).

Embedding models default to full-size ViT-B/32 CLIP and ViT-S/16 DINO architectures with random
weights built from their configs (throughput does not depend on the weights, and nothing is
downloaded); `--clip-model` / `--dino-model` point at real weights instead.

    python scripts/bench_eval.py                       # 48 frames of 256x256, CPU
    python scripts/bench_eval.py --device cuda --frames 96 --size 512
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cdvideo.export import write_video
from cdvideo.metrics.backbones import load_backbone
from cdvideo.metrics.embedding import embed_images
from cdvideo.metrics.flow import estimate_flow


def best_times(functions: dict[str, object], repeats: int) -> dict[str, float]:
    """Best wall time of each function over `repeats` rounds, after one warm-up call each.

    The functions take turns within every round, so a burst of load from another process hits
    both sides of a comparison alike; the best time is the least disturbed one.
    """
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def synthetic_video(frames: int, size: int) -> np.ndarray:
    """A textured canvas panning 3 px per frame: realistic enough for the codec and the flow."""
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 256, (size // 8 + 1, (size + 3 * frames) // 8 + 1, 3), dtype=np.uint8)
    canvas = np.kron(canvas, np.ones((8, 8, 1), np.uint8))  # blocky texture, (H, W, 3)
    return np.stack([canvas[:size, 3 * t : 3 * t + size] for t in range(frames)])  # (f, size, size, 3)


def random_model_dir(kind: str, root: Path) -> str:
    """Save a full-size architecture with random weights (ViT-B/32 CLIP or ViT-S/16 DINO) for timing."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer, ViTConfig, ViTImageProcessor, ViTModel

    directory = root / kind
    torch.manual_seed(0)
    if kind == "clip":
        CLIPModel(CLIPConfig()).save_pretrained(directory)  # CLIPConfig() defaults are ViT-B/32
        CLIPImageProcessor().save_pretrained(directory)
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
        CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(directory)
    else:
        config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16, image_size=224)
        ViTModel(config).save_pretrained(directory)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(directory)
    return str(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clip-model", default=None, help="hub id or dir (default: random ViT-B/32 CLIP)")
    parser.add_argument("--dino-model", default=None, help="hub id or dir (default: random ViT-S/16 DINO)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames = synthetic_video(args.frames, args.size)
        video = write_video(frames, root / "bench.mp4", fps=8)
        print(f"video: {args.frames} frames of {args.size}x{args.size} (mp4, H.264); torch threads {torch.get_num_threads()}; device {args.device}")
        print(f"{'what (best of ' + str(args.repeats) + ')':<44} {'frames/s':>10}")

        # 1. Decoding
        import decord
        import imageio.v2 as imageio

        def read_decord():
            reader = decord.VideoReader(str(video), ctx=decord.cpu(0))
            return reader.get_batch(list(range(len(reader)))).asnumpy()

        def read_imageio():
            with imageio.get_reader(video, format="FFMPEG") as reader:
                return np.stack([frame for frame in reader])  # list(reader) would ask len(): inf for a pipe

        assert read_decord().shape == read_imageio().shape == frames.shape
        decoding = best_times({"decode: decord": read_decord, "decode: imageio (ffmpeg pipe)": read_imageio}, args.repeats)
        for name, seconds in decoding.items():
            print(f"{name:<44} {args.frames / seconds:>10.1f}")

        # 2. Optical flow (pairs per second, reported per frame pair)
        flows = {
            f"flow: opencv-{method} (pairs/s)": lambda method=method: [
                estimate_flow(a, b, method) for a, b in zip(frames[:-1], frames[1:])
            ]
            for method in ("dis", "farneback")
        }
        for name, seconds in best_times(flows, 1).items():
            print(f"{name:<44} {(args.frames - 1) / seconds:>10.1f}")

        # 3. Embeddings, batched vs one frame at a time (preprocessing included, as eval runs it)
        for kind, given in (("clip", args.clip_model), ("dino", args.dino_model)):
            model_id = given or random_model_dir(kind, root)
            backbone = load_backbone(kind, model_id, args.device)
            label = given or {"clip": "ViT-B/32 CLIP", "dino": "ViT-S/16 DINO"}[kind]
            one, many = embed_images(backbone, frames, 1), embed_images(backbone, frames, args.batch_size)
            assert torch.allclose(one, many, atol=1e-4), "batching changed the embeddings"
            embedding = best_times(
                {
                    f"embed: {label}, batch {args.batch_size}": lambda: embed_images(backbone, frames, args.batch_size),
                    f"embed: {label}, one frame at a time": lambda: embed_images(backbone, frames, 1),
                },
                args.repeats,
            )
            for name, seconds in embedding.items():
                print(f"{name:<44} {args.frames / seconds:>10.1f}")


if __name__ == "__main__":
    main()
