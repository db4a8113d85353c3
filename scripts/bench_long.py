"""Time and peak memory of long renders in FreeNoise windows: 16, 32 and 64 frames.

Each configuration runs in its own process, so peak RSS (CPU) or peak CUDA memory belongs to that
render alone; the model is loaded before the clock starts. With windows the motion module and the
spatial layers see one window of frames at a time, so time should grow about linearly with frames
and peak memory stay near that of one window. "plain" rows (all frames at once, up to the motion
module's maximum) show what windows save.

    python scripts/bench_long.py                      # tiny model, 128x128, 2 steps
    python scripts/bench_long.py --model sd15-animatediff-v2 --size 512 --steps 25 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def child(args) -> None:
    import torch

    from cdvideo.config import RenderSettings
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer, check_inputs, resolve_settings

    torch.set_num_threads(args.threads)
    preset = load_preset(args.model)
    renderer = Renderer(preset, args.device, "auto")
    windows = dict(context_length=args.context_length, context_stride=args.context_stride) if args.windows else {}
    settings = resolve_settings(RenderSettings(
        prompt="a dog running on the beach", model=args.model, num_frames=args.frames, height=args.size,
        width=args.size, steps=args.steps, seed=0, device=args.device, **windows), preset)
    check_inputs(settings, preset)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if renderer.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started, cpu_started = time.perf_counter(), time.process_time()
    frames = renderer.render(settings, progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    result = {
        "frames": int(frames.shape[0]), "windows": bool(args.windows), "seconds": round(seconds, 2),
        # CPU seconds of this process: on a shared machine wall time also counts other people's work.
        "cpu_seconds": round(cpu_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loaded_rss_mb": round(loaded_rss),
    }
    if renderer.device.startswith("cuda"):
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-length", type=int, default=16)
    parser.add_argument("--context-stride", type=int, default=4)
    parser.add_argument("--frame-counts", default="16,32,64")
    parser.add_argument("--plain", default="16,32", help="frame counts also rendered without windows")
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames:
        return child(args)

    runs = [(int(n), 1) for n in args.frame_counts.split(",")] + [(int(n), 0) for n in args.plain.split(",") if n]
    shared = ["--model", args.model, "--size", str(args.size), "--steps", str(args.steps), "--device", args.device,
              "--threads", str(args.threads), "--context-length", str(args.context_length),
              "--context-stride", str(args.context_stride)]
    print(f"{args.model} {args.size}x{args.size}, {args.steps} steps, {args.device}, windows "
          f"{args.context_length}/{args.context_stride}; one process per row")
    print(f"{'frames':>6} {'mode':>8} {'seconds':>8} {'CPU s':>8} {'CPU s/frame':>11} {'peak RSS MB':>12} "
          f"{'after load MB':>14}")
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    for frames, windows in runs:
        out = subprocess.run([sys.executable, __file__, *shared, "--frames", str(frames), "--windows", str(windows)],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{frames:>6} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        extra = f" {r['peak_cuda_mb']:>10} MB CUDA" if "peak_cuda_mb" in r else ""
        print(f"{r['frames']:>6} {'windows' if windows else 'plain':>8} {r['seconds']:>8.2f} {r['cpu_seconds']:>8.2f} "
              f"{r['cpu_seconds'] / r['frames']:>11.3f} {r['peak_rss_mb']:>12} {r['loaded_rss_mb']:>14}{extra}")


if __name__ == "__main__":
    main()
