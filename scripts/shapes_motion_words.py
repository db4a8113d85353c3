"""Does a Shapes model use its motion words? A measurement, not a render.

The first shipped Shapes model moved its objects in the asked direction only by chance in the
held-out evaluation (scripts/eval_shapes.py); this script said where its words were lost. For N
seeded one-object clips that move, it asks the model to denoise the same noisy clip three times:
with the clip's own caption, with the opposite direction ("moving left" <-> "moving right", "up"
<-> "down") and with the empty caption, and prints the error of the predicted clean clip (latent
MSE) per band of noise levels. A model that uses its motion words predicts the clip better with the
right words than with the opposite ones, most of all at high noise, where the clip itself no longer
shows where its object goes. It also prints how far apart the text encoder puts two captions that
differ in one motion word, against two that differ in one colour word.

    python scripts/shapes_motion_words.py --model shapes --clips 48
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

BANDS = [(0, 300), (300, 600), (600, 800), (800, 1000)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="preset name or preset YAML of a Shapes model")
    parser.add_argument("--clips", type=int, default=48, help="moving one-object clips to denoise")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error(f"--clips must be at least 1, got {args.clips}")
    return args


def moving_clips(count: int, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """(count, f, H, W, 3) uint8 clips, their captions, and the captions with the opposite motion."""
    from cdvideo.shapes.world import OPPOSITE_MOTION, draw_clip, sample_scene

    rng = np.random.default_rng(seed)
    clips, right, wrong = [], [], []
    while len(clips) < count:
        scene = sample_scene(rng, split="any", max_objects=1)
        if scene.motion == "still":
            continue
        scene.say_motion = True
        clips.append(draw_clip(scene))
        right.append(scene.caption())
        scene.motion = OPPOSITE_MOTION[scene.motion]
        wrong.append(scene.caption())
    return np.stack(clips), right, wrong


@torch.no_grad()
def encode_text(pipeline, captions: list[str]) -> torch.Tensor:
    """(n, tokens, width) text-encoder outputs, as the pipeline conditions on them."""
    return pipeline.encode_prompt(captions, "cpu", 1, False)[0]


@torch.no_grad()
def clean_clip_errors(pipeline, clips: np.ndarray, captions: dict[str, list[str]], seed: int) -> list[dict]:
    vae, unet = pipeline.vae, pipeline.unet
    x = torch.from_numpy(clips).float().div(127.5).sub(1).movedim(-1, -3)  # (b, f, 3, H, W)
    b, f = x.shape[:2]
    latents = vae.encode(x.flatten(0, 1)).latent_dist.mode() * vae.config.scaling_factor
    latents = latents.unflatten(0, (b, f)).movedim(1, 2)  # (b, c, f, h, w)
    alphas_cumprod = pipeline.scheduler.alphas_cumprod
    text = {name: encode_text(pipeline, c).repeat_interleave(f, dim=0) for name, c in captions.items()}
    rows = []
    for low, high in BANDS:
        generator = torch.Generator().manual_seed(seed + low)
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(low, high, (b,), generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        row = {"band": f"t {low}-{high - 1}"}
        for name, hidden in text.items():
            pred = unet(noisy, t, hidden).sample
            if pipeline.scheduler.config.prediction_type == "v_prediction":
                clean = a.sqrt() * noisy - (1 - a).sqrt() * pred
            else:  # epsilon
                clean = (noisy - (1 - a).sqrt() * pred) / a.sqrt()
            row[name] = float((clean - latents).pow(2).mean())
        rows.append(row)
    return rows


@torch.no_grad()
def best_possible_gap(vae, count: int, seed: int) -> tuple[float, float]:
    """What the motion words are worth where the clip is pure noise (t = 999 at zero terminal SNR).

    There the best clean-clip prediction is the mean of every clip the caption allows, and its error
    is their variance. For one caption ("a red circle moving left/right on a blue background"),
    `count` clips per direction: (error with the right words, error with the opposite words). The
    difference is large because objects stay inside the frame, so one moving left starts on the
    right and ends on the left."""
    from cdvideo.shapes.world import draw_clip, sample_scene

    rng = np.random.default_rng(seed)
    clips = {"left": [], "right": []}
    while min(len(c) for c in clips.values()) < count:
        scene = sample_scene(rng, split="any", max_objects=1)
        if scene.motion in clips and len(clips[scene.motion]) < count:
            # Colour, shape and background do not move an object: only its size and motion do.
            scene.background, scene.objects[0].colour, scene.objects[0].shape = "blue", "red", "circle"
            clips[scene.motion].append(draw_clip(scene))
    latents = {}
    for motion, frames in clips.items():
        x = torch.from_numpy(np.stack(frames)).float().div(127.5).sub(1).movedim(-1, -3)
        latents[motion] = vae.encode(x.flatten(0, 1)).latent_dist.mode().unflatten(0, x.shape[:2]) \
            * vae.config.scaling_factor
    means = {m: z.mean(0) for m, z in latents.items()}
    right = float(np.mean([(z - means[m]).pow(2).mean().item() for m, z in latents.items()]))
    return right, right + float((means["left"] - means["right"]).pow(2).mean())


def text_separation(pipeline) -> dict[str, float]:
    """Mean distance of the text encoder's outputs (over positions) for captions one word apart."""
    pairs = {
        "motion word (left / right)": ("a red circle moving left on a blue background",
                                       "a red circle moving right on a blue background"),
        "motion word (up / down)": ("a red circle moving up on a blue background",
                                    "a red circle moving down on a blue background"),
        "colour word (red / green)": ("a red circle moving left on a blue background",
                                      "a green circle moving left on a blue background"),
        "shape word (circle / square)": ("a red circle moving left on a blue background",
                                         "a red square moving left on a blue background"),
    }
    out = {}
    for name, (a, b) in pairs.items():
        hidden = encode_text(pipeline, [a, b])
        out[name] = float((hidden[0] - hidden[1]).norm(dim=-1).mean())
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from cdvideo.cli.common import quiet_libraries
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer
    from cdvideo.shapes.evaluate import markdown_table

    quiet_libraries()
    pipeline = Renderer(load_preset(args.model), device="cpu", dtype="float32").pipeline
    clips, right, wrong = moving_clips(args.clips, args.seed)
    rows = clean_clip_errors(pipeline, clips, {"right": right, "opposite": wrong, "empty": [""] * len(right)},
                             args.seed)
    print(f"clean-clip error (latent MSE) of {args.clips} moving clips, model {args.model}:")
    print(markdown_table(["noise", "caption as drawn", "opposite motion", "empty caption", "opposite - right"],
                         [[r["band"], f"{r['right']:.4f}", f"{r['opposite']:.4f}", f"{r['empty']:.4f}",
                           f"{r['opposite'] - r['right']:+.4f}"] for r in rows]))
    right, opposite = best_possible_gap(pipeline.vae, max(args.clips, 8) * 4, args.seed)
    print(f"\nbest possible clean-clip error from pure noise (the caption's mean clip): {right:.4f} with the right "
          f"motion words, {opposite:.4f} with the opposite ones (+{opposite - right:.4f}, "
          f"{(opposite - right) / right:.0%}); a model that uses its words gets close to that gap at the highest noise")
    print("\ntext encoder: mean distance of outputs for captions one word apart")
    print(markdown_table(["words changed", "distance"], [[k, f"{v:.3f}"] for k, v in text_separation(pipeline).items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
