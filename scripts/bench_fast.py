"""Speed modes against plain diffusers, with their quality cost, in one run (issue 19).

Speed (at real size, random weights): the SD 1.5 + AnimateDiff v2 model of scripts/bench_realsize.py
(built once, nothing downloaded), each variant in its own process through bench_realsize's child,
on the same inputs and seed: (a) plain diffusers, (c) cdvideo's defaults (full compute), then cdvideo
with each step-cache setting (`--cache INTERVAL:BRANCH ...`, cdvideo.step_cache), and with `--compile`
cdvideo's regional compilation (cdvideo.regional_compile) alone and with each step-cache setting. Per
variant: seconds per clip and per UNet call, the ratio to plain diffusers' seconds per clip, peak memory
(RSS of the child on the CPU; CUDA max allocated on a GPU), and per-frame PSNR against (c)'s frames (full
compute; mean and worst frame; inf = identical). A compiled variant renders a first clip (compilation
included), the timed warm clip, then the same clip eager (in the same process, so that a shared machine's
drift between processes does not count as a speed-up), each child with an empty inductor / Triton cache of
its own (cold, as a user's first run): compile time = first clip - warm clip, and the break-even clip count
= compile time / the seconds per clip it saves against that eager clip.

Quality (the Shapes world, trained weights): held-out prompts x seeds rendered with full compute and
each cache setting on the same prompts and seeds, read back by the pixel judge
(cdvideo.shapes.evaluate): background, objects, both (shares of frames), motion (share of clips),
each setting's difference to full compute and whether it is within issue 19's 0.03; seconds per
clip and the ratio to full compute.

    python scripts/bench_fast.py                                   # both parts, defaults by device
    python scripts/bench_fast.py --part speed --size 512 --frames 16 --steps 25 --cache 2:0 3:0 4:0 3:3
    python scripts/bench_fast.py --part shapes --shapes-prompts 20 --shapes-seeds 2 --json fast.json
    python scripts/bench_fast.py --part speed --size 64 --frames 8 --steps 12 --cache 3:0 --compile
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_realsize  # noqa: E402  (scripts/ is not a package: the real-size builder and child live there)

DEFAULT_CACHE = ("2:0", "3:0", "4:0", "3:2")
TOLERANCE = 0.03  # issue 19: judged scores within this of full compute
SHAPES_MEASURES = ("background", "objects", "both", "motion")


def parse_cache(text: str) -> tuple[int, int]:
    """"INTERVAL:BRANCH" (or "INTERVAL", branch 0) -> (interval, branch)."""
    interval, _, branch = text.partition(":")
    try:
        parsed = int(interval), int(branch or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cache takes INTERVAL:BRANCH, e.g. 3:0, got {text!r}") from None
    if parsed[0] < 2 or parsed[1] < 0:
        raise argparse.ArgumentTypeError(f"--cache needs an interval of at least 2 and a branch >= 0, got {text!r}")
    return parsed


def cache_label(interval: int, branch: int) -> str:
    return f"step cache {interval}:{branch}"


FULL_LABEL = "cdvideo default (full compute)"
COMPILE_LABEL = "cdvideo --compile"


def compile_label(interval: int, branch: int) -> str:
    return f"--compile + {cache_label(interval, branch)}"


def break_even(compile_s: float, uncompiled_clip_s: float, compiled_clip_s: float) -> int | None:
    """Clips of one shape after which compiling has paid for itself; None when compiled clips are not faster."""
    saved = uncompiled_clip_s - compiled_clip_s
    return math.ceil(compile_s / saved) if saved > 0 else None


def psnr_per_frame(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """PSNR in dB of each uint8 frame against the reference's (inf where identical)."""
    error = ((frames.astype(np.float64) - reference.astype(np.float64)) ** 2).reshape(len(frames), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / error)


def child(args) -> None:
    """One variant in this process: bench_realsize's child, with the step cache on for cached variants."""
    extra = json.loads(args.extra) if args.extra else None
    bench_realsize.child(args.child, str(args.model_dir), args.device, args.size, args.frames, args.steps, args.out,
                         extra=extra)


def run_speed(args, tmp: Path) -> dict:
    import torch

    model_dir = args.model_dir or tmp / "sd15-realsize"
    marker = model_dir / f".bench-realsize-v{bench_realsize.BUILD_VERSION}"
    if not marker.exists():
        t = time.perf_counter()
        bench_realsize.build_realsize(model_dir)
        marker.touch()
        print(f"built the real-size random model in {time.perf_counter() - t:.0f} s: {model_dir}", flush=True)
    print(f"speed: SD 1.5 + AnimateDiff v2 at real size (random weights); {args.size}x{args.size}, {args.frames} frames, "
          f"{args.steps} DDIM steps, guidance 7.5 (CFG batch 2), {args.device}, torch threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}; each variant in its own process", flush=True)
    variants = [("a", "plain diffusers", None), ("c", FULL_LABEL, None)]
    variants += [("c", cache_label(i, b), {"step_cache": i, "step_cache_branch": b}) for i, b in args.cache]
    uncompiled = {}  # compiled variant -> the same variant without compilation (its break-even is against that)
    if args.compile:
        variants.append(("c", COMPILE_LABEL, {"compile": True}))
        uncompiled[COMPILE_LABEL] = FULL_LABEL
        for i, b in args.cache:
            variants.append(("c", compile_label(i, b), {"step_cache": i, "step_cache_branch": b, "compile": True}))
            uncompiled[compile_label(i, b)] = cache_label(i, b)
    results, frames_of = {}, {}
    for n, (variant, label, extra) in enumerate(variants):
        out = str(tmp / f"frames-{n}.npy")
        # Each compiled child compiles from nothing: an inductor (and Triton) cache of its own, empty.
        cache = tmp / f"inductor-{n}"
        env = {"TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}
        results[label] = bench_realsize.run_child(__file__, variant, model_dir, args.device, args.size, args.frames,
                                                  args.steps, out, label,
                                                  ["--extra", json.dumps(extra)] if extra else [],
                                                  env=env if label in uncompiled else None)
        frames_of[label] = np.load(out)
        first = results[label].get("first_clip_s")
        print(f"  {label}: load {results[label]['load_s']:.1f} s, " + (f"first clip {first:.1f} s, " if first else "")
              + f"clip {results[label]['clip_s']:.1f} s", flush=True)

    cuda = args.device.startswith("cuda")
    mem_key, mem_name = ("cuda_peak_mb", "CUDA max alloc") if cuda else ("peak_rss_mb", "peak RSS")
    base, full = results["plain diffusers"], frames_of["cdvideo default (full compute)"]
    print(f"\n| variant | s/clip | s/UNet call | UNet calls | speed vs plain diffusers | {mem_name} MB "
          "| PSNR vs full compute, mean / worst frame (dB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = {}
    for label, r in results.items():
        psnr = psnr_per_frame(frames_of[label], full) if frames_of[label].shape == full.shape else None
        # JSON has no infinity: identical frames are recorded as psnr None with identical True.
        rows[label] = dict(r, speed=base["clip_s"] / r["clip_s"],
                           identical=bool(np.array_equal(frames_of[label], full)),
                           psnr_mean=None if psnr is None or not np.isfinite(psnr.mean()) else float(np.mean(psnr)),
                           psnr_min=None if psnr is None or not np.isfinite(psnr.min()) else float(np.min(psnr)))
        shown = "-" if psnr is None else f"{np.mean(psnr):.1f} / {np.min(psnr):.1f}"
        print(f"| {label} | {r['clip_s']:.2f} | {r['step_s']:.3f} | {r['unet_calls']} | {rows[label]['speed']:.2f}x "
              f"| {r[mem_key]:.0f} | {shown} |")
    print("\nspeed: plain diffusers' s/clip / this s/clip (>1 is faster); s/UNet call is the mean over full and cached "
          "steps; PSNR of the uint8 frames against cdvideo's full-compute frames (inf: identical).", flush=True)
    if uncompiled:
        print("\n| compiled variant | first clip s | warm clip s | compile s | uncompiled s/clip: own process, "
              "same process | speed vs uncompiled, same process | break-even clips | max abs pixel diff to uncompiled "
              "| graphs |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, plain_label in uncompiled.items():
            r, plain = results[label], results[plain_label]
            compile_s = r["first_clip_s"] - r["clip_s"]
            clips = break_even(compile_s, r["eager_clip_s"], r["clip_s"])
            diff = int(np.abs(frames_of[label].astype(int) - frames_of[plain_label].astype(int)).max())
            rows[label].update(compile_s=compile_s, saved_s=r["eager_clip_s"] - r["clip_s"], break_even_clips=clips,
                               max_diff_to_uncompiled=diff)
            print(f"| {label} | {r['first_clip_s']:.1f} | {r['clip_s']:.2f} | {compile_s:.1f} | {plain['clip_s']:.2f}, "
                  f"{r['eager_clip_s']:.2f} | {r['eager_clip_s'] / r['clip_s']:.2f}x "
                  f"| {clips if clips is not None else 'never (not faster)'} | {diff}/255 | {r['compiled_graphs']} |")
            for hit in r["recompile_limit_hits"]:
                print(f"  {label}: recompile limit hit, later calls eager: {hit}")
        print("compile s: first clip - warm clip (cold inductor cache); uncompiled s/clip: the variant without compile "
              f"({', '.join(sorted(set(uncompiled.values())))}) in its own process, and the same clip rendered eager in "
              "the compiled child right after its warm clip; break-even: compile s / (same-process uncompiled - warm "
              "clip).", flush=True)
    return rows


def run_shapes(args) -> dict:
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer
    from cdvideo.shapes.evaluate import held_out_prompts, markdown_table, render_and_judge, summarize

    prompts = held_out_prompts(args.shapes_prompts, 0)
    items = [(prompt, seed) for prompt in prompts for seed in range(args.shapes_seeds)]
    renderer = Renderer(load_preset("shapes"), device=args.shapes_device)
    settings = [("full compute", 0, 0)] + [(cache_label(i, b), i, b) for i, b in args.cache]
    summaries, seconds = {}, {}
    print(f"\nquality: Shapes model, {len(prompts)} held-out prompts x {args.shapes_seeds} seeds, "
          f"{args.shapes_steps or renderer.preset.steps} steps, {renderer.device}", flush=True)
    for label, interval, branch in settings:
        t = time.perf_counter()
        clips = render_and_judge(items, renderer, steps=args.shapes_steps, step_cache=interval,
                                 step_cache_branch=branch, batch_size=args.shapes_batch_size)
        seconds[label] = (time.perf_counter() - t) / len(items)
        summaries[label] = summarize(clips)
        print(f"  {label}: {seconds[label]:.2f} s/clip", flush=True)

    full = summaries["full compute"]
    header = ["measure", *summaries]
    rows = []
    for key in SHAPES_MEASURES:
        cells = []
        for label, summary in summaries.items():
            value = summary[key]
            if value is None:
                cells.append("n/a")
            elif label == "full compute":
                cells.append(f"{value:.3f}")
            else:
                diff = value - full[key]
                cells.append(f"{value:.3f} ({diff:+.3f}{'' if abs(diff) <= TOLERANCE else ' OVER'})")
        rows.append([key, *cells])
    rows.append(["s/clip", *(f"{s:.2f}" for s in seconds.values())])
    rows.append(["speed vs full compute", *(f"{seconds['full compute'] / s:.2f}x" for s in seconds.values())])
    print(markdown_table(header, rows))
    print(f"(difference to full compute in brackets; OVER: more than issue 19's {TOLERANCE}; background, objects, both: "
          "shares of frames; motion: share of clips)", flush=True)
    return {label: dict(summary, s_per_clip=seconds[label]) for label, summary in summaries.items()}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("both", "speed", "shapes"), default="both")
    parser.add_argument("--cache", type=parse_cache, nargs="+", default=[parse_cache(c) for c in DEFAULT_CACHE],
                        metavar="INTERVAL:BRANCH", help=f"step-cache settings to compare (default: {' '.join(DEFAULT_CACHE)})")
    parser.add_argument("--compile", action="store_true",
                        help="speed: also cdvideo --compile, alone and with each --cache setting (compile time, break-even)")
    parser.add_argument("--size", type=int, default=None, help="speed: frame size (default: 128 on CPU, 512 on CUDA)")
    parser.add_argument("--frames", type=int, default=None, help="speed: frames (default: 8 on CPU, 16 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="speed: DDIM steps (default: 12 on CPU, 25 on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the real-size random model is built once (default: a temporary folder)")
    parser.add_argument("--shapes-prompts", type=int, default=20, help="quality: held-out prompts")
    parser.add_argument("--shapes-seeds", type=int, default=2, help="quality: seeds per prompt")
    parser.add_argument("--shapes-steps", type=int, default=None, help="quality: steps (default: the preset's, 25)")
    parser.add_argument("--shapes-batch-size", type=int, default=8, help="quality: clips per pipeline call")
    parser.add_argument("--shapes-device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write both tables' numbers and the settings here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--extra", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.size = args.size or (512 if cuda else 128)
    args.frames = args.frames or (16 if cuda else 8)
    args.steps = args.steps or (25 if cuda else 12)
    if args.child:
        child(args)
        return

    started = time.perf_counter()
    report = {"command": " ".join([sys.executable, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M"),
              "cache": [list(c) for c in args.cache], "compile": args.compile}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("both", "speed"):
            report["speed"] = run_speed(args, Path(tmp))
        if args.part in ("both", "shapes"):
            report["shapes"] = run_shapes(args)
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    if args.json:
        from cdvideo.files import write_json_atomic

        write_json_atomic(report, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
