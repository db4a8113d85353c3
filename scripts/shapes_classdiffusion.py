"""ClassDiffusion's effect, measured exactly on the Shapes world: does the learned concept keep composing?

The concept is a two-tone circle (yellow above, blue below) that the base world never shows,
learned as `<new1> circle` from 5 images on the training background (black). Two concepts are
trained with `cdvideo train`, identical but for the semantic preservation loss:

    classdiffusion     --spl-weight 1   (ClassDiffusion)
    custom_diffusion   --spl-weight 0   (Custom Diffusion, the baseline)

and then, with the base model as a third row ("a circle ..." without the token), every method
renders the same compositional prompts (other backgrounds, a second object, a motion) for the
same seeds. The pixel judge reads each clip back: is the concept there (both colours on a
circle), is the rest of the prompt there (background, second object, motion), and all of it at
once; cdvideo's weight-free temporal metrics are added. Written: a JSON of every clip, a markdown
table of means per method (plus per prompt), the exact command lines, and the ClassDiffusion
concept copied to --example-out.

    python scripts/shapes_classdiffusion.py --model shapes --work runs/shapes-cd \\
        --steps 500 --seeds 4 --markdown docs/shapes-classdiffusion.md \\
        --example-out examples/shapes-twotone-circle.safetensors

Concepts already in --work that were trained with the same command against the same base
weights are reused (--retrain trains again).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Compositions the five training images never show. No background is yellow or blue (the concept's
# own colours) or green: green is the palette colour nearest a yellow/blue blend, so a soft edge
# between the concept's halves on green would cut it in two for the judge.
PROMPTS = [
    "a <new1> circle on a black background",  # the training context: concept fidelity alone
    "a <new1> circle on a white background",
    "a <new1> circle on a red background",
    "a <new1> circle moving left on a white background",
    "a <new1> circle moving up on a red background",
    "a <new1> circle and a red square on a white background",
    "a <new1> circle and a white triangle on a black background",
    "a <new1> circle and a green square moving right on a red background",
]
METHODS = {  # row name -> SPL weight of its concept (None: the base model, no concept)
    "base": None,
    "custom_diffusion": 0.0,
    "classdiffusion": 1.0,
}
TRAIN_IMAGES = 5
JUDGED = ["concept", "background", "others", "motion", "composition", "everything", "extra_objects"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="preset name, preset YAML or diffusers model directory")
    parser.add_argument("--work", type=Path, default=Path("runs/shapes-classdiffusion"),
                        help="training images, training folders and concepts go here")
    parser.add_argument("--steps", type=int, default=500, help="training steps per concept (official: 500)")
    parser.add_argument("--learning-rate", type=float, default=5e-5,
                        help="per image, scaled by the batch as cdvideo train does (5e-5 x 2 = 1e-4); see the README")
    parser.add_argument("--batch-size", type=int, default=2, help="training images per step (official: 2)")
    parser.add_argument("--train-seed", type=int, default=42, help="training seed (official: 42)")
    parser.add_argument("--seeds", type=int, default=4, help="render seeds per prompt (0..K-1, the same for every method)")
    parser.add_argument("--render-steps", type=int, default=None, help="denoising steps (default: the preset's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the preset's)")
    parser.add_argument("--concept-start", type=float, default=0.0,
                        help="share of the steps before the concepts' key/value changes go on (cdvideo render --concept-start)")
    parser.add_argument("--batch", type=int, default=8, help="clips per pipeline call")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="every clip's scores (default: WORK/results.json)")
    parser.add_argument("--markdown", type=Path, default=None, help="the tables (default: WORK/results.md)")
    parser.add_argument("--example-out", type=Path, default=None, help="copy the ClassDiffusion concept here")
    # Captions in the world's own grammar: the Shapes model never saw "photo" or "of" in training.
    parser.add_argument("--instance-prompt", default="a {token} {class_word} on a black background",
                        help="caption of the training images (cdvideo train --instance-prompt)")
    parser.add_argument("--spl-prompt", default="a {token} {class_word}",
                        help="SPL's phrase, with and without the token (cdvideo train --spl-prompt)")
    parser.add_argument("--initializer-token", default="circle",
                        help="the new token starts from this word's embedding (cdvideo train --initializer-token)")
    parser.add_argument("--retrain", action="store_true", help="train the concepts again even if WORK has them")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "seeds", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    args.json = args.json or args.work / "results.json"
    args.markdown = args.markdown or args.work / "results.md"
    return args


def write_training_images(folder: Path) -> Path:
    """The concept's training images: world.concept_scene with seeds 0..4 on black, 32x32 PNGs."""
    from PIL import Image

    from cdvideo.shapes.world import concept_scene, draw_frame

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(TRAIN_IMAGES):
        Image.fromarray(draw_frame(concept_scene(np.random.default_rng(seed)), 0)).save(folder / f"{seed}.png")
    return folder


def train_command(args, images: Path, spl_weight: float, out: Path) -> list[str]:
    """`cdvideo train` for one concept; the two methods differ only in --spl-weight."""
    from cdvideo.shapes.world import CONCEPT, SIZE

    return [
        sys.executable, "-m", "cdvideo", "train",
        "--images", str(images), "--class-word", CONCEPT["class_word"], "--token", CONCEPT["token"],
        "--model", args.model, "--out", str(out), "--output-dir", str(out.with_suffix("")) + "-train",
        "--resolution", str(SIZE),
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate),
        # No random rescale: it shrinks the 12 px circle to 4..12 px (the world's objects are 8 or
        # 12) and prefixes "a far away" / "zoomed in", words outside the Shapes vocabulary.
        "--no-augment",
        "--spl-weight", str(spl_weight),
        "--instance-prompt", args.instance_prompt, "--spl-prompt", args.spl_prompt,
        "--initializer-token", args.initializer_token,
        "--seed", str(args.train_seed),
        "--checkpoint-every", str(args.steps),
        "--no-validation-video",  # the clips below are the validation
        "--device", args.device,
    ]


def is_current(concept_path: Path, command: list[str], fingerprint: str) -> bool:
    """A concept in WORK was made by exactly this command against these base weights."""
    from cdvideo.concept import load_concept

    record = concept_path.with_suffix(".command.json")
    if not (concept_path.is_file() and record.is_file()):
        return False
    if json.loads(record.read_text())["command"][1:] != command[1:]:  # the interpreter's path may differ
        return False
    return load_concept(concept_path).base_fingerprint == fingerprint


def train_concepts(args, images: Path, fingerprint: str) -> dict[str, dict]:
    """Train (or reuse) the two concepts; returns per method its path, command and training seconds."""
    trained = {}
    for method, spl_weight in METHODS.items():
        if spl_weight is None:
            continue
        out = args.work / "concepts" / f"{method}.safetensors"
        command = train_command(args, images, spl_weight, out)
        if not args.retrain and is_current(out, command, fingerprint):
            print(f"[train] {method}: reusing {out} (same command, same base weights; --retrain to train again)",
                  flush=True)
            seconds = json.loads(out.with_suffix(".command.json").read_text())["seconds"]
            reused = True
        else:
            print(f"[train] {method}: {shlex.join(command)}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            subprocess.run(command, check=True)
            seconds = round(time.perf_counter() - started, 1)
            out.with_suffix(".command.json").write_text(json.dumps({"command": command, "seconds": seconds}, indent=2))
            print(f"[train] {method}: done in {seconds:.0f} s", flush=True)
            reused = False
        trained[method] = {"path": str(out), "command": shlex.join(["python", *command[1:]]), "seconds": seconds,
                           "reused": reused}
    return trained


def base_prompt(prompt: str) -> str:
    """The base model's prompt: the concept token taken out ("a <new1> circle" -> "a circle")."""
    from cdvideo.shapes.world import CONCEPT

    return prompt.replace(CONCEPT["token"] + " ", "")


def render_and_judge_methods(args, renderer, trained: dict[str, dict]) -> list[dict]:
    """Every method x prompt x seed, rendered with the loaded renderer and judged; progress per clip."""
    from cdvideo.shapes.evaluate import judge_concept_clip, render_clips, temporal_metrics

    rows = []
    total = len(METHODS) * len(PROMPTS) * args.seeds
    for method in METHODS:
        concept = trained[method]["path"] if method in trained else None
        rendered = [base_prompt(p) if concept is None else p for p in PROMPTS]
        judged_as = dict(zip(rendered, PROMPTS))
        items = [(p, seed) for p in rendered for seed in range(args.seeds)]
        clips = render_clips(items, renderer, concept=concept, steps=args.render_steps,
                             guidance_scale=args.guidance, batch_size=args.batch, concept_start=args.concept_start)
        for settings, frames in clips:
            judged = judge_concept_clip(frames, judged_as[settings.prompt], settings.seed)
            row = {"method": method, "rendered_prompt": settings.prompt, **judged.to_dict(),
                   **temporal_metrics(frames), "steps": settings.steps, "guidance_scale": settings.guidance_scale}
            rows.append(row)
            print(f"[{len(rows)}/{total}] {method:16s} seed {settings.seed}: {settings.prompt!r}: "
                  f"concept {judged.concept:.2f} composition {judged.composition:.2f} "
                  f"everything {judged.everything:.2f}", flush=True)
    return rows


def mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize_methods(rows: list[dict], metrics: list[str]) -> dict[str, dict]:
    """Per method: the mean of every judged share and temporal metric over its clips (motion: over clips asking one)."""
    return {method: {key: mean(r[key] for r in rows if r["method"] == method) for key in JUDGED + metrics}
            for method in METHODS}


def tables(rows: list[dict], summary: dict[str, dict], metrics: list[str]) -> str:
    from cdvideo.shapes.evaluate import markdown_table

    main = markdown_table(["method", *JUDGED, *metrics],
                          [[method, *(summary[method][k] for k in JUDGED + metrics)] for method in METHODS])
    per_prompt = []
    for prompt in PROMPTS:
        cells = []
        for method in METHODS:
            chosen = [r for r in rows if r["method"] == method and r["prompt"] == prompt]
            cells += [mean(r["concept"] for r in chosen), mean(r["composition"] for r in chosen)]
        per_prompt.append([prompt, *cells])
    header = ["prompt", *(f"{m} {k}" for m in METHODS for k in ("concept", "composition"))]
    return f"{main}\n\nPer prompt (mean over seeds):\n\n{markdown_table(header, per_prompt)}"


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from cdvideo.cli.common import quiet_libraries, warnings_as_lines

    quiet_libraries()
    warnings_as_lines()
    from cdvideo.concept import fingerprint_unet
    from cdvideo.files import write_json_atomic
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer
    from cdvideo.shapes.evaluate import TEMPORAL_METRICS

    # 1. Training images, and the model (its fingerprint tells whether stored concepts fit it).
    images = write_training_images(args.work / "images")
    print(f"[data] {TRAIN_IMAGES} training images in {images}", flush=True)
    preset = load_preset(args.model)
    renderer = Renderer(preset, device=args.device)
    fingerprint = fingerprint_unet(renderer.pipeline.unet)

    # 2. The two concepts.
    trained = train_concepts(args, images, fingerprint)
    train_s = sum(t["seconds"] for t in trained.values() if not t["reused"])

    # 3. Render and judge every method on the same prompts and seeds.
    t = time.perf_counter()
    rows = render_and_judge_methods(args, renderer, trained)
    render_s = time.perf_counter() - t

    # 4. Report.
    metrics = list(TEMPORAL_METRICS)
    summary = summarize_methods(rows, metrics)
    wall_s = time.perf_counter() - started
    earlier = sum(t["seconds"] for t in trained.values() if t["reused"])
    reused = f"; reused concepts took {earlier:.0f} s to train in an earlier run" if earlier else ""
    command = shlex.join(["python", *sys.argv])
    text = tables(rows, summary, metrics)
    steps = args.render_steps or preset.steps
    guidance = args.guidance if args.guidance is not None else preset.guidance_scale
    markdown = (
        f"# ClassDiffusion vs Custom Diffusion on the Shapes world\n\n"
        f"Model `{preset.name}`; concept `<new1> circle` (yellow upper half, blue lower) from {TRAIN_IMAGES} images "
        f"on black; {args.steps} training steps per concept; {len(PROMPTS)} prompts x {args.seeds} seeds per method, "
        f"{steps} denoising steps, guidance {guidance}, concept start {args.concept_start:g}. Shares are of frames (motion: of clips that ask one); "
        f"`composition` = background and other objects right, `everything` = that and the concept, both 0 for a clip "
        f"whose asked motion is wrong.\n\n{text}\n\n"
        f"Command: `{command}`\n\n"
        + "".join(f"Training ({m}): `{t['command']}`\n\n" for m, t in trained.items())
        + f"Wall time: {wall_s:.0f} s (training {train_s:.0f} s, rendering and judging {render_s:.0f} s) "
        f"on {renderer.device}{reused}.\n"
    )
    print("\n" + text)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown)
    write_json_atomic({
        "command": command,
        "settings": {"model": preset.name, "training_steps": args.steps, "learning_rate": args.learning_rate,
                     "batch_size": args.batch_size, "train_seed": args.train_seed, "seeds": args.seeds,
                     "render_steps": steps, "guidance": guidance, "concept_start": args.concept_start,
                     "device": renderer.device,
                     "base_fingerprint": fingerprint},
        "prompts": PROMPTS,
        "training": trained,
        "summary": summary,
        "rows": rows,
        "timings": {"wall_s": round(wall_s, 1), "train_s": round(train_s, 1), "render_judge_s": round(render_s, 1)},
    }, args.json)
    print(f"wrote {args.json} and {args.markdown}")
    if args.example_out:
        args.example_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trained["classdiffusion"]["path"], args.example_out)
        print(f"ClassDiffusion concept copied to {args.example_out}")
    print(f"wall time: {wall_s:.1f} s (training {train_s:.1f} s, rendering and judging {render_s:.1f} s){reused}")
    return 0


if __name__ == "__main__":
    from cdvideo.errors import CdVideoError

    try:
        sys.exit(main())
    except (CdVideoError, ValueError) as error:  # one line, as cdvideo's own commands report them
        sys.exit(f"error: {error}")
    except subprocess.CalledProcessError as error:
        sys.exit(f"error: training failed (exit {error.returncode}); its message is above")
