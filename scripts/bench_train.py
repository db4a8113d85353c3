"""Time a `cdvideo train` step on an SD-1.5-shaped narrow random model, with and without SPL.

Builds the narrow model of bench_render.py (SD 1.5's UNet block layout at a fraction of the width)
and a few generated photos, then runs `cdvideo.train.train` in fresh processes for SPL weight 0
(plain Custom Diffusion) and 1 (ClassDiffusion), alternating, --repeats times. The time of a step is
the median of the per-step wall times in the loss log, the first (warm-up) step left out, so
loading, checkpointing and a neighbour's burst of work on a shared machine do not count. Prints
in one run:

  steps/s              per SPL setting (median step time over steps and repeats)
  peak memory          process peak RSS on CPU, torch's peak allocation on CUDA
  SPL cost             (step with SPL - step without) / step without

    python scripts/bench_train.py [--size 128] [--steps 6] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(args) -> None:
    """One training run; prints its step times and peak memory as JSON."""
    import resource

    import torch

    from cdvideo.train import ConceptData, TrainConfig, train

    config = TrainConfig(
        concepts=[ConceptData(args.images, "dog")], out=str(Path(args.work) / f"c-{args.steps}-{args.spl}.safetensors"),
        model=args.model, steps=args.steps, resolution=args.size, spl_weight=args.spl, checkpoint_every=10**6,
        validation_video=False, device=args.device,
    )
    result = train(config, progress=False)
    import numpy as np

    seconds = np.atleast_1d(np.genfromtxt(result.output_dir / "loss.csv", delimiter=",", names=True)["seconds"])
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print(json.dumps({"seconds": seconds[1:].tolist(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_cuda_mb": peak_cuda}))


def run_child(args, work: Path, model: Path, images: Path, spl: float) -> dict:
    command = [sys.executable, __file__, "--child", "--work", str(work), "--model", str(model), "--images", str(images),
               "--size", str(args.size), "--steps", str(args.steps), "--spl", str(spl), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"training run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="training resolution in pixels")
    parser.add_argument("--steps", type=int, default=6, help="steps per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--spl", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import numpy as np
    import torch
    from PIL import Image

    from bench_render import build_narrow_sd15

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "narrow-sd15"
        build_narrow_sd15(model)
        images = work / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(images / f"{i}.png")

        step_seconds: dict[float, list[float]] = {0.0: [], 1.0: []}
        peaks: dict[float, list[dict]] = {0.0: [], 1.0: []}
        for _ in range(args.repeats):
            for spl in (0.0, 1.0):  # alternate, so a busy machine slows both alike
                run = run_child(args, work, model, images, spl)
                step_seconds[spl] += run["seconds"]
                peaks[spl].append(run)

    print(f"narrow SD-1.5-shaped model, {args.size}px, batch 2, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median step of {args.repeats} runs x {args.steps - 1} steps")
    median = {spl: statistics.median(values) for spl, values in step_seconds.items()}
    for spl, label in ((0.0, "diffusion only (--spl-weight 0)"), (1.0, "diffusion + SPL (--spl-weight 1)")):
        rss = max(p["peak_rss_mb"] for p in peaks[spl])
        cuda = peaks[spl][0]["peak_cuda_mb"]
        memory = f"peak RSS {rss:.0f} MiB" + (f", CUDA peak {cuda:.0f} MiB" if cuda is not None else "")
        print(f"  {label:34s} {1 / median[spl]:6.2f} steps/s ({median[spl] * 1000:.0f} ms/step), {memory}")
    print(f"  SPL cost: {(median[1.0] - median[0.0]) / median[0.0]:+.1%} of a diffusion step (ratio "
          f"{median[1.0] / median[0.0]:.3f})")


if __name__ == "__main__":
    main()
