"""Time `cdvideo batch` against a naive loop, and concept switching by injection against reloading.

On the built-in tiny model (offline), in one run:

  (a) items/s of a naive loop that builds the pipeline for every prompt (`render_to_file` without a
      renderer), of `run_batch` (the model loaded once), and of `run_batch` with --batch-size N
      (all prompts in one pipeline call); ratios against the naive loop;
  (b) switching concepts: applying + removing a concept on the loaded pipeline (injection) vs
      loading the pipeline again and applying it (reloading), median of --repeats; the ratio;
  (c) the largest pixel difference between batched and one-by-one frames (PNG frames, lossless).

    python scripts/bench_batch.py [--items 6] [--size 32] [--frames 4] [--steps 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

EXAMPLE_CONCEPT = Path(__file__).resolve().parent.parent / "examples" / "tiny-dog.safetensors"
PROMPTS = ["a <new1> dog running on the beach", "a <new1> dog wearing headphones", "a <new1> dog in the snow",
           "a <new1> dog swimming", "a <new1> dog on a skateboard", "a <new1> dog sleeping on a sofa"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from cdvideo.batch import plan_batch, run_batch
    from cdvideo.cli.common import quiet_libraries
    from cdvideo.concept import load_concept
    from cdvideo.config import RenderSettings
    from cdvideo.export import read_video
    from cdvideo.inject import concepts_applied
    from cdvideo.models import load_pipeline, load_preset
    from cdvideo.render import render_to_file

    quiet_libraries()
    preset = load_preset("tiny")
    settings = dict(model="tiny", num_frames=args.frames, height=args.size, width=args.size, steps=args.steps,
                    concepts=[{"path": str(EXAMPLE_CONCEPT), "strength": 1.0}], device="cpu", format="frames")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.items)]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Warm-up outside the timings: builds the tiny model, imports, first-call kernel set-up, file cache.
        render_to_file(RenderSettings.from_dict({**settings, "prompt": prompts[0], "seed": 0}), tmp / "warm",
                       progress=False)
        prompt_file = tmp / "prompts.jsonl"
        prompt_file.write_text("".join(json.dumps({"prompt": p, "seed": i}) + "\n" for i, p in enumerate(prompts)))

        # (a) naive loop: a fresh pipeline per prompt, as a shell loop over `cdvideo render` would do.
        started = time.perf_counter()
        for i, prompt in enumerate(prompts):
            render_to_file(RenderSettings.from_dict({**settings, "prompt": prompt, "seed": i}),
                           tmp / "naive" / f"{i}", progress=False)
        naive = args.items / (time.perf_counter() - started)

        rates = {}
        for batch_size in (1, args.items):
            out = tmp / f"batch{batch_size}"
            started = time.perf_counter()
            report = run_batch(plan_batch(prompt_file, settings), out, batch_size=batch_size, progress=False,
                               gallery=False)
            rates[batch_size] = args.items / (time.perf_counter() - started)
            assert report.ok, report.records

        # (c) batched vs one by one, frame by frame
        worst = 0
        for name in sorted(p.name for p in (tmp / "batch1").iterdir() if p.is_dir()):
            alone = read_video(tmp / "batch1" / name)[0].astype(int)
            together = read_video(tmp / f"batch{args.items}" / name)[0].astype(int)
            worst = max(worst, int(np.abs(alone - together).max()))

    # (b) concept switching
    concept = load_concept(EXAMPLE_CONCEPT)
    pipeline = load_pipeline(preset, device="cpu", dtype=torch.float32)
    injection, reloading = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        with concepts_applied(pipeline, [(concept, 1.0, "dog")]):
            pass
        injection.append(time.perf_counter() - started)
        started = time.perf_counter()
        fresh = load_pipeline(preset, device="cpu", dtype=torch.float32)
        with concepts_applied(fresh, [(concept, 1.0, "dog")]):
            pass
        reloading.append(time.perf_counter() - started)
    inject_s, reload_s = statistics.median(injection), statistics.median(reloading)

    print(f"tiny model, {args.items} items of {args.frames} frames {args.size}x{args.size}, {args.steps} steps, "
          f"one concept, CPU ({torch.get_num_threads()} threads)")
    print(f"naive loop (pipeline built per prompt): {naive:.3f} items/s")
    print(f"cdvideo batch:                          {rates[1]:.3f} items/s  ({rates[1] / naive:.2f}x the naive loop)")
    print(f"cdvideo batch --batch-size {args.items}:           {rates[args.items]:.3f} items/s  "
          f"({rates[args.items] / naive:.2f}x the naive loop, {rates[args.items] / rates[1]:.2f}x batch-size 1)")
    print(f"largest pixel difference, batched vs one by one: {worst}/255")
    print(f"concept switch: injection {inject_s * 1000:.1f} ms, reloading {reload_s * 1000:.1f} ms "
          f"({reload_s / inject_s:.0f}x faster by injection), median of {args.repeats}")


if __name__ == "__main__":
    main()
