"""What binding a concept costs at SD 1.5 size: token- and region-bound against merged, in one process, interleaved.

scripts/bench_realsize.py times whole renders, each variant in its own process; on a shared 2-core CPU their
run-to-run spread (+-30 %) hid a cost of a few per cent (docs/personalization.md, "Cost at SD 1.5 size"). This
script keeps one pipeline loaded (bench_realsize's real-size random model: SD 1.5's UNet with AnimateDiff v2's motion
modules, a CLIP ViT-L-sized text encoder) and a random full-size concept (a token and a change on every spatial
to_k / to_v), and times the UNet calls of a CFG-batched denoising step with the concept merged, token-bound and
region-bound in turn, round after round, in a new order each round. Each round's ratios compare calls made seconds
apart, so a slow stretch of the machine moves both sides of a ratio; the report gives each variant's median and the
median of the paired ratios with a bootstrap interval.

The binding changes only the UNet's spatial cross-attentions (and one position match per pipeline call, which each
round includes: its first call sees new encoder states); the text encoder, the scheduler and the VAE decode are the
same for every binding, so a render's ratio lies between 1 and the UNet's.

    python scripts/bench_binding.py [--size 128] [--frames 8] [--rounds 6] [--calls 2] [--model-dir DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "a <new1> dog running on the beach"
NEGATIVE = "bad quality, worse quality"
BINDINGS = ("merged", "token", "region")


def bootstrap_interval(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of the median of `values`."""
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(draws, len(values))), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def time_calls(pipe, concept, binding: str, size: int, frames: int, calls: int, generator) -> float:
    """Seconds per UNet call of `calls` CFG-batched calls with `concept` applied as `binding` (applying it, and
    encoding the prompt, stay outside the timing)."""
    from cdvideo.inject import concepts_applied

    with concepts_applied(pipe, [(concept, 1.0, "bench")], binding=binding), torch.no_grad():
        states, negative = pipe.encode_prompt(PROMPT, pipe.unet.device, 1, True, NEGATIVE)
        states = torch.cat([negative, states]).repeat_interleave(frames, dim=0)  # as AnimateDiffPipeline batches them
        shape = (2, pipe.unet.config.in_channels, frames, size // 8, size // 8)
        device = pipe.unet.device
        latents = torch.randn(shape, generator=generator).to(device, pipe.unet.dtype)
        synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        synchronize()
        start = time.perf_counter()
        for t in np.linspace(900, 500, calls).round():
            pipe.unet(latents, torch.tensor(int(t), device=device), encoder_hidden_states=states)
        synchronize()
        return (time.perf_counter() - start) / calls


def main() -> None:
    from bench_realsize import BUILD_VERSION, _random_concept, build_realsize

    from cdvideo.cli.common import quiet_libraries
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="pixels (latents are 1/8)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of every binding in a new order")
    parser.add_argument("--calls", type=int, default=2, help="UNet calls per binding and round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the real-size random model is built once (default: a temporary folder)")
    args = parser.parse_args()
    quiet_libraries()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp) / "sd15-realsize"
        marker = model_dir / f".bench-realsize-v{BUILD_VERSION}"
        if not marker.exists():
            build_realsize(model_dir)
            marker.touch()
        pipe = Renderer(load_preset(str(model_dir)), device=args.device).pipeline
        pipe.set_progress_bar_config(disable=True)
        concept = _random_concept(pipe)
        print(f"SD 1.5 + AnimateDiff v2 at real size (random weights), {args.size}x{args.size}, {args.frames} frames, "
              f"CFG batch 2; a random full-size concept; {args.rounds} rounds x {args.calls} UNet calls per binding; "
              f"{args.device}, torch threads {torch.get_num_threads()}", flush=True)
        generator = torch.Generator().manual_seed(0)
        time_calls(pipe, concept, "token", args.size, args.frames, 1, generator)  # warm-up: allocator, thread pool
        seconds = {b: [] for b in BINDINGS}
        order = list(BINDINGS)
        for r in range(args.rounds):
            random.Random(r).shuffle(order)
            for binding in order:
                seconds[binding].append(time_calls(pipe, concept, binding, args.size, args.frames, args.calls,
                                                   torch.Generator().manual_seed(r)))
            print(f"  round {r + 1}: " + ", ".join(f"{b} {seconds[b][-1]:.2f} s" for b in BINDINGS), flush=True)

    print("\n| binding | s per UNet call (median) | vs merged, paired median [95 % interval] |")
    print("| --- | ---: | ---: |")
    for binding in BINDINGS:
        ratios = [s / m for s, m in zip(seconds[binding], seconds["merged"])]
        low, high = bootstrap_interval(ratios)
        print(f"| {binding} | {statistics.median(seconds[binding]):.2f} | "
              f"{statistics.median(ratios):.3f} [{low:.3f}, {high:.3f}] |")


if __name__ == "__main__":
    main()
