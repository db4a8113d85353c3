"""Does a concept cost the Shapes model its motion words? Concept and motion against the concept's
strength and against `--concept-start` (the share of steps before its key/value changes go on).

Renders the concept in four moving prompts (one per direction, on its training background and on
red) for K seeds at each strength x start, and judges each clip: the share of frames showing the
concept and whether the asked direction is the one the object took.

    python scripts/shapes_concept_motion.py --concept examples/shapes-twotone-circle.safetensors \\
        --strengths 1 0.75 0.5 --starts 0 --seeds 5
    python scripts/shapes_concept_motion.py --strengths 1 --starts 0 0.12 0.24 0.4 --seeds 5
"""

from __future__ import annotations

import argparse

import numpy as np

PROMPTS = [
    "a <new1> circle moving up on a red background",
    "a <new1> circle moving left on a black background",
    "a <new1> circle moving right on a red background",
    "a <new1> circle moving down on a black background",
]


def main(argv=None) -> list[tuple[float, float, float, float]]:
    """Prints the table; returns its rows (strength, concept start, concept share, motion share)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--concept", default="examples/shapes-twotone-circle.safetensors")
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    parser.add_argument("--starts", type=float, nargs="+", default=[0.0],
                        help="concept_start values: share of the steps before the key/value changes go on")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per prompt (0..K-1)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from cdvideo.concept import load_concept
    from cdvideo.config import RenderSettings
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer, resolve_settings
    from cdvideo.shapes.judge import judge_concept_clip

    renderer = Renderer(load_preset(args.model), device=args.device)
    concept = load_concept(args.concept)
    print(f"| strength | concept start | concept (share of frames) | asked motion (share of {len(PROMPTS) * args.seeds} clips) |")
    print("| ---: | ---: | ---: | ---: |")
    rows = []
    for strength, start in [(strength, start) for strength in args.strengths for start in args.starts]:
        shown, moved = [], []
        for prompt in PROMPTS:
            requests = [RenderSettings(prompt=prompt, model=args.model, seed=seed, steps=args.steps, concept_start=start)
                        for seed in range(args.seeds)]
            settings = [resolve_settings(request, renderer.preset) for request in requests]
            clips = renderer.render_batch(settings, [(concept, strength, args.concept)], progress=False)
            for s, frames in zip(settings, clips):
                judged = judge_concept_clip(frames, prompt, s.seed)
                shown.append(judged.concept)
                moved.append(judged.motion)
        rows.append((strength, start, float(np.mean(shown)), float(np.mean(moved))))
        print(f"| {strength:g} | {start:g} | {rows[-1][2]:.3f} | {rows[-1][3]:.3f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
