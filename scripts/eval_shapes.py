"""Score the Shapes model on held-out captions against issue 9's targets.

Renders N held-out captions (colour/shape/background triples never shown in training, motion
always stated) for K seeds each through cdvideo's renderer, reads every frame back with the pixel
judge, and prints one table per run: the asked background colour, every asked object (shape and
colour), both together (targets: >= 80 % of frames) and the asked motion (target: >= 70 % of
videos). Several --guidance values are compared in one run, on the same prompts and seeds, with
the model loaded once.

    python scripts/eval_shapes.py --model shapes --prompts 20 --seeds 2 --steps 25 --json eval.json
    python scripts/eval_shapes.py --model shapes --prompts 20 --seeds 2 --guidance 3 5 7.5 --json eval.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

MEASURES = [  # (summary key, what it is, target key)
    ("both", "background and objects right (share of frames)", "both"),
    ("background", "asked background colour (share of frames)", "background"),
    ("objects", "asked objects, shape + colour (share of frames)", "objects"),
    ("motion", "asked motion direction (share of videos)", "motion"),
    ("extra_objects", "frames with more objects than asked", None),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="preset name, preset YAML or diffusers model directory")
    parser.add_argument("--prompts", type=int, default=20, help="held-out captions to render")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per caption (0..K-1)")
    parser.add_argument("--prompt-seed", type=int, default=0, help="seed that draws the held-out captions")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[None], metavar="G",
                        help="guidance scale(s); several are compared on the same prompts and seeds (default: the preset's)")
    parser.add_argument("--concept", default=None, help="a concept file applied to every render (default: none)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per pipeline call")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="write every clip's scores, the summaries and settings here")
    args = parser.parse_args(argv)
    for name in ("prompts", "seeds", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def report(summaries: dict, targets: dict) -> str:
    from cdvideo.shapes.evaluate import markdown_table

    header = ["measure", *(f"guidance {g}" for g in summaries), "target"]
    rows = []
    for key, label, target_key in MEASURES:
        target = targets.get(target_key)
        cells = []
        for summary in summaries.values():
            value = summary[key]
            if value is None:
                cells.append("n/a")
            elif target is None:
                cells.append(f"{value:.3f}")
            else:
                cells.append(f"{value:.3f} {'met' if value >= target else 'MISSED'}")
        rows.append([label, *cells, f">= {target:.2f}" if target is not None else ""])
    return markdown_table(header, rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from cdvideo.cli.common import quiet_libraries, warnings_as_lines

    quiet_libraries()
    warnings_as_lines()
    from cdvideo.files import write_json_atomic
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer
    from cdvideo.shapes.evaluate import TARGETS, held_out_prompts, render_and_judge, summarize

    # 1. Prompts, model.
    prompts = held_out_prompts(args.prompts, args.prompt_seed)
    items = [(prompt, seed) for prompt in prompts for seed in range(args.seeds)]
    preset = load_preset(args.model)
    t = time.perf_counter()
    renderer = Renderer(preset, device=args.device)
    load_s = time.perf_counter() - t
    print(f"model {preset.name} loaded in {load_s:.1f} s on {renderer.device}; "
          f"{len(prompts)} held-out prompts x {args.seeds} seeds", flush=True)

    # 2. Render and judge, one pass per guidance value.
    rows, summaries, render_s = [], {}, {}
    for guidance in args.guidance:
        t = time.perf_counter()
        done = []

        def progress(clip):
            done.append(clip)
            motion = "-" if clip.motion is None else ("ok" if clip.motion else "wrong")
            print(f"[{len(done)}/{len(items)}] g={clip.guidance_scale} seed {clip.seed}: {clip.prompt!r} "
                  f"background {clip.background:.2f} objects {clip.objects:.2f} motion {motion}", flush=True)

        clips = render_and_judge(items, renderer, concept=args.concept, steps=args.steps, guidance_scale=guidance,
                                 batch_size=args.batch_size, on_clip=progress)
        label = clips[0].guidance_scale
        render_s[label] = time.perf_counter() - t
        summaries[label] = summarize(clips)
        rows += [c.to_dict() for c in clips]

    # 3. Report.
    wall_s = time.perf_counter() - started
    steps = args.steps or preset.steps
    print(f"\nheld-out captions: {len(prompts)} prompts x {args.seeds} seeds, {steps} steps, model {preset.name}")
    print(report(summaries, TARGETS))
    print("render + judge: " + ", ".join(f"guidance {g}: {s:.1f} s ({s / len(items):.2f} s/clip)"
                                         for g, s in render_s.items()))
    print(f"wall time: {wall_s:.1f} s (model load {load_s:.1f} s)")
    if args.json:
        write_json_atomic({
            "command": shlex.join([sys.executable, *sys.argv]),
            "settings": {"model": preset.name, "prompts": args.prompts, "seeds": args.seeds,
                         "prompt_seed": args.prompt_seed, "steps": steps, "guidance": list(summaries),
                         "concept": args.concept, "device": renderer.device, "batch_size": args.batch_size},
            "targets": TARGETS,
            "summary": {str(g): s for g, s in summaries.items()},
            "rows": rows,
            "timings": {"load_s": round(load_s, 2), "wall_s": round(wall_s, 2),
                        "render_s": {str(g): round(s, 2) for g, s in render_s.items()}},
        }, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from cdvideo.errors import CdVideoError

    try:
        sys.exit(main())
    except (CdVideoError, ValueError) as error:  # one line, as cdvideo's own commands report them
        sys.exit(f"error: {error}")
