"""Does a concept keep the whole prompt? Every way of training and rendering one, measured exactly on Shapes.

A concept is a two-tone shape the base world never shows (`circle`: yellow above, blue below, as
`<new1> circle`; `square`: red above, white below, as `<new2> square`, which nothing was tuned on),
learned from 5 images on black by `cdvideo train` with the shipped defaults (on Shapes since session 11: each
photo a still clip of 8 frames through the motion module) and per row only the flags that row names (variants
that name no --frames train on single images, as they did when they were measured). Each row renders the same compositional prompts (other backgrounds, sizes,
a second object, each motion) for the same seeds, and the pixel judge reads every clip back:

    concept     share of frames showing the concept (its shape in both its colours)
    others      share of frames showing the asked second object (prompts that ask one)
    motion      share of clips moving the asked way (prompts that ask one)
    everything  share of frames where the whole prompt is right (0 for a clip with the wrong motion)

Means come with 95 % bootstrap intervals over clips. Concepts already trained by the same command
against the same base weights are reused (--retrain trains again).

    python scripts/shapes_personalization.py --concept circle --seeds 8 --markdown docs/personalization-circle.md
    python scripts/shapes_personalization.py --concept square --rows base classdiffusion token --seeds 8
    python scripts/shapes_personalization.py --rows two_concepts ...   # <new1> circle and <new2> square together
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cdvideo.shapes.world import COLOURS, SIZE, SPEED


def world_backgrounds(names=("black", "white", "red", "green", "blue", "yellow")) -> str:
    """World colours as `cdvideo train --backgrounds` takes them ("black=#191919, ..."); the default order is that of
    session 14's tables (the order of the painted copies is the order training draws them in)."""
    return ", ".join("{}=#{:02x}{:02x}{:02x}".format(name, *COLOURS[name]) for name in names)


WORLD_BACKGROUNDS = world_backgrounds()
BACKGROUND_CAPTION = ["--instance-prompt", "a {token} {class_word} on a {background} background"]  # for --backgrounds
# The colours a concept trained on black is not drawn on (session 16), beside black: the Shapes default since session 17.
BRIGHT_BACKGROUNDS = world_backgrounds(("black", "white", "yellow"))
# Moving clips at the world's own speed (SPEED pixels a frame of SIZE: 0.0625), each caption naming its clip's way.
MOVING_CLIPS = ["--moving-clips", str(SPEED / SIZE)]
MOVING_BACKGROUND_CAPTION = ["--instance-prompt", "a {token} {class_word} {motion} on a {background} background"]
# Training variants: the flags each adds to the shared `cdvideo train` command.
TRAININGS = {
    "custom_diffusion": ["--spl-weight", "0", "--binding", "merged"],
    "classdiffusion": ["--spl-weight", "1", "--binding", "merged"],  # the paper's method
    "token": ["--binding", "token"],
    "token+class": ["--binding", "token+class"],
    "values": ["--binding", "values"],
    "locked": ["--binding", "locked"],
    "locked+class": ["--binding", "locked+class"],
    "token_subject": ["--binding", "token", "--loss-on-subject"],  # Break-A-Scene's masked loss
    "token_attention": ["--binding", "token", "--attention-loss-weight", "0.1"],  # Break-A-Scene's attention loss
    "token_break": ["--binding", "token", "--loss-on-subject", "--attention-loss-weight", "0.01"],  # both, as published
    "token_break_strong": ["--binding", "token", "--loss-on-subject", "--attention-loss-weight", "0.1"],
    # Composite scenes ({composites}: the world's scenes file the script writes beside the images).
    "token_composites": ["--binding", "token", "--composites", "{composites}"],
    "token_composites_attention": ["--binding", "token", "--composites", "{composites}", "--attention-loss-weight", "0.1"],
    "token_fixed": ["--binding", "token", "--no-train-token"],
    "token+class_fixed": ["--binding", "token+class", "--no-train-token"],
    "region": ["--binding", "region"],  # trained with the change only where the base model draws the class word
    # Break-A-Scene's masked loss with the background kept at a tenth of its weight.
    "token_subject_bg": ["--binding", "token", "--loss-on-subject", "--background-loss-weight", "0.1"],
    # The masked loss with the background compared with the base model's prediction (the caption without the token).
    "token_subject_base": ["--binding", "token", "--loss-on-subject", "--background-loss-weight", "1",
                           "--background-target", "base"],
    # Video-aware training (issue 16, scope 5): each photo a still clip of 8 frames through the motion module.
    "token_video": ["--binding", "token", "--frames", "8"],
    "token_video_subject": ["--binding", "token", "--frames", "8", "--loss-on-subject"],  # and the masked loss
    # and composite scenes (the subject pasted into scenes the base model renders on other backgrounds)
    "token_video_composites": ["--binding", "token", "--frames", "8", "--composites", "{composites}"],
    # and each photo painted on each world colour that stands apart from the subject, its caption naming it
    "token_video_backgrounds": ["--binding", "token", "--frames", "8", "--backgrounds", WORLD_BACKGROUNDS,
                                *BACKGROUND_CAPTION],
    # painted contexts on single images (no still clips, so no context learns to stand still)
    "token_backgrounds": ["--binding", "token", "--frames", "1", "--backgrounds", WORLD_BACKGROUNDS, *BACKGROUND_CAPTION],
    # the same, painted only on the colours the prompts may use ({prompt_backgrounds}: allowed_colours; no green
    # beside yellow and blue), as session 13's photos in several contexts were
    "token_video_prompt_backgrounds": ["--binding", "token", "--frames", "8", "--backgrounds", "{prompt_backgrounds}",
                                       *BACKGROUND_CAPTION],
    # painted only on the bright colours (session 16: the backgrounds a concept trained on black is not drawn on)
    "token_video_bright": ["--binding", "token", "--frames", "8", "--backgrounds", BRIGHT_BACKGROUNDS, *BACKGROUND_CAPTION],
    # moving clips (session 17): the subject travels the world's 2 px a frame (1/16 of the side) left, right, up or
    # down (or stays), its caption naming the way, instead of standing still in every clip
    "token_video_moving": ["--binding", "token", "--frames", "8", *MOVING_CLIPS,
                           "--instance-prompt", "a {token} {class_word} {motion} on a black background"],
    "token_video_backgrounds_moving": ["--binding", "token", "--frames", "8", *MOVING_CLIPS, "--backgrounds",
                                       WORLD_BACKGROUNDS, *MOVING_BACKGROUND_CAPTION],
    "token_video_bright_moving": ["--binding", "token", "--frames", "8", *MOVING_CLIPS, "--backgrounds",
                                  BRIGHT_BACKGROUNDS, *MOVING_BACKGROUND_CAPTION],
    # and SPL ten times stronger (session 18): "<new1> circle" held closer to "circle" at the end of the text
    "token_video_bright_moving_spl10": ["--binding", "token", "--frames", "8", *MOVING_CLIPS, "--backgrounds",
                                        BRIGHT_BACKGROUNDS, *MOVING_BACKGROUND_CAPTION, "--spl-weight", "10"],
}
# The default trained on part of the noise levels only (session 20): the noisier half, where the layout and the colours
# form, or the cleaner half (or less), where they are refined.
TRAININGS.update({f"token_video_backgrounds_moving_{name}": [*TRAININGS["token_video_backgrounds_moving"],
                                                             "--timestep-range", levels]
                  for name, levels in (("noisy", "0.5:1"), ("clean", "0:0.5"), ("cleaner", "0:0.3"))})
# Rows: the training variant (None: the base model, prompts without the token) and render settings.
ROWS = {
    "base": dict(training=None),
    # The ceiling: the base model drawing a subject it knows (a plain shape of the concept's upper colour) in the
    # same prompts, judged as the concept would be, so "others", motion and "everything" say what these prompts
    # allow at best; no concept can keep more of the prompt than the model draws around a word it knows.
    "plain": dict(training=None, plain=True),
    "custom_diffusion": dict(training="custom_diffusion"),
    "classdiffusion": dict(training="classdiffusion"),
    "classdiffusion_start": dict(training="classdiffusion", concept_start=0.24),
    "classdiffusion_as_token": dict(training="classdiffusion", concept_binding="token"),
    "token": dict(training="token"),
    "token+class": dict(training="token+class"),
    "values": dict(training="values"),
    "locked": dict(training="locked"),
    "locked+class": dict(training="locked+class"),
    "token_as_merged": dict(training="token", concept_binding="merged"),
    "token_subject": dict(training="token_subject"),
    "token_attention": dict(training="token_attention"),
    "token_break": dict(training="token_break"),
    "token_break_strong": dict(training="token_break_strong"),
    "token_attention_schedule": dict(training="token_attention", concept_schedule="0:0.5, 0.3:1"),
    "token_composites": dict(training="token_composites"),
    "token_composites_attention": dict(training="token_composites_attention"),
    "token_fixed": dict(training="token_fixed"),
    "token+class_fixed": dict(training="token+class_fixed"),
    # `cdvideo render --concept X` with no other flag (the Shapes preset's concept_binding, region) for the concept
    # trained by the documented Shapes training command (session 19: token-bound, clips of 8 frames whose subject
    # moves, the photos painted on the world's six colours: `video_backgrounds_moving`). Until session 10 `defaults`
    # trained on single images (now `defaults_images`), until session 16 on still clips of the photos as given (now
    # `video_defaults`), in sessions 17-18 on the photos painted on black, white and yellow (now
    # `video_bright_moving`; the `defaults_*` rows of session 18 render those concepts).
    "defaults": dict(training="token_video_backgrounds_moving", render_defaults=True),
    "video_defaults": dict(training="token_video", render_defaults=True),  # the default of sessions 11-16
    "defaults_images": dict(training="token", render_defaults=True),
    "video_subject": dict(training="token_video_subject", render_defaults=True),
    "video_composites": dict(training="token_video_composites", render_defaults=True),
    "video_backgrounds": dict(training="token_video_backgrounds", render_defaults=True),
    "backgrounds_images": dict(training="token_backgrounds", render_defaults=True),
    "video_prompt_backgrounds": dict(training="token_video_prompt_backgrounds", render_defaults=True),
    "video_bright": dict(training="token_video_bright", render_defaults=True),
    "video_moving": dict(training="token_video_moving", render_defaults=True),
    "video_backgrounds_moving": dict(training="token_video_backgrounds_moving", render_defaults=True),
    "defaults_noisy": dict(training="token_video_backgrounds_moving_noisy", render_defaults=True),
    "defaults_clean": dict(training="token_video_backgrounds_moving_clean", render_defaults=True),
    "defaults_cleaner": dict(training="token_video_backgrounds_moving_cleaner", render_defaults=True),
    # the cleaner half's concept applied only where it was trained (the second half of the steps), region-bound
    "defaults_clean_late": dict(training="token_video_backgrounds_moving_clean", concept_binding="region",
                                concept_schedule="0:0, 0.5:1"),
    "video_bright_moving": dict(training="token_video_bright_moving", render_defaults=True),
    # the painted concepts, region-bound with the preset's schedule (which the preset leaves out of region renders)
    "video_backgrounds_schedule": dict(training="token_video_backgrounds", concept_binding="region",
                                       concept_schedule="0:0.5, 0.3:1"),
    # The documented concept (session 17's default training) rendered other ways than the preset's region binding
    # (session 18): token-bound with the preset's schedule (what `--concept-binding token` gives), region-bound with it.
    "defaults_token": dict(training="token_video_bright_moving", concept_binding="token", concept_schedule="0:0.5, 0.3:1"),
    "defaults_region_schedule": dict(training="token_video_bright_moving", concept_binding="region",
                                     concept_schedule="0:0.5, 0.3:1"),
    "defaults_spl10": dict(training="token_video_bright_moving_spl10", render_defaults=True),
    "defaults_guidance3": dict(training="token", render_defaults=True, guidance_scale=3.0),  # the preset's is 2
    "token_start": dict(training="token", concept_start=0.24),
    "token_schedule": dict(training="token", concept_schedule="0:0.5, 0.3:1"),
    "token_step_cache": dict(training="token", step_cache=3),  # issue 19's step caching with a concept
    # Trained token-bound, rendered with the change restricted to where the base model draws the class word.
    "token_region": dict(training="token", concept_binding="region"),
    "token_region_schedule": dict(training="token", concept_binding="region", concept_schedule="0:0.5, 0.3:1"),
    "token_region_strong": dict(training="token", concept_binding="region", strength=1.5),
    # Break-A-Scene's masked loss (the subject only), rendered region-bound (the region keeps the rest base).
    "token_subject_region": dict(training="token_subject", concept_binding="region"),
    "token_subject_bg_region": dict(training="token_subject_bg", concept_binding="region"),
    "token_subject_base_region": dict(training="token_subject_base", concept_binding="region"),
    "token_subject_base": dict(training="token_subject_base"),
    "region": dict(training="region"),
    "region_schedule": dict(training="region", concept_schedule="0:0.5, 0.3:1"),
}
DEFAULT_ROWS = ["base", "custom_diffusion", "classdiffusion", "classdiffusion_start", "token", "token+class",
                "values", "locked", "token_start", "token_schedule"]
TRAIN_IMAGES = 5
COMPOSITES = 20  # composite scenes per concept (--composites rows): 20 composites beside the 5 photos
JUDGED = ["concept", "others", "motion", "everything", "background", "extra_objects"]


def concept_of(key: str) -> dict:
    """A concept of the world (circle, square) or any other two-tone circle or square written SHAPE:UPPER:LOWER
    (`circle:red:green`: red above, green below), learned as `<new1> SHAPE`."""
    from cdvideo.shapes.world import COLOURS, CONCEPTS, SHAPES

    if key in CONCEPTS:
        return CONCEPTS[key]
    parts = key.split(":")
    if len(parts) != 3 or parts[0] not in SHAPES or not set(parts[1:]) <= set(COLOURS) or parts[1] == parts[2]:
        raise argparse.ArgumentTypeError(f"{key!r} is neither {' nor '.join(sorted(CONCEPTS))} nor SHAPE:UPPER:LOWER "
                                         f"(shapes {', '.join(SHAPES)}; two different colours of {', '.join(COLOURS)})")
    if parts[0] == "triangle":  # measured: the judge reads 0.23-0.27 of white on exact frames of triangle:white:blue
        raise argparse.ArgumentTypeError(f"{key!r}: a triangle's upper half is a quarter of its area, too close to the "
                                         "judge's 20 % share per concept colour to measure; choose a circle or a square")
    if "black" in parts[1:]:
        raise argparse.ArgumentTypeError(f"{key!r}: black is the training photos' background; choose two other colours")
    return dict(token="<new1>", class_word=parts[0], upper=parts[1], lower=parts[2])


def file_key(key: str) -> str:
    """A concept key as file names take it ("circle:red:green" -> "circle-red-green")."""
    return key.replace(":", "-")


def _concept_key(key: str) -> str:
    concept_of(key)  # argparse's check: a bad concept is a one-line usage error
    return key


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="preset name, preset YAML or diffusers model directory")
    parser.add_argument("--concept", default="circle", type=_concept_key,
                        help="which two-tone concept: circle, square, or another written SHAPE:UPPER:LOWER "
                             "(e.g. circle:red:green)")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=sorted(ROWS) + ["two_concepts", "two_region"],
                        help="rows to measure (two_concepts: both concepts in one prompt, trained with the defaults)")
    parser.add_argument("--work", type=Path, default=Path("runs/shapes-personalization"),
                        help="training images, training folders and concepts go here")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per concept")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="per image, scaled by the batch as cdvideo train does")
    parser.add_argument("--train-seed", type=int, default=42)
    parser.add_argument("--train-seeds", type=int, default=1,
                        help="train every concept with this many seeds (--train-seed, +1, ...) and render each row "
                             "once per trained concept: the intervals then include the training's own spread")
    parser.add_argument("--train-backgrounds", choices=["black", "varied", "sizes"], default="black",
                        help="the training images all on black, or on the prompts' backgrounds in turn (captioned), or "
                             "sizes: on black, each also drawn small with a caption saying so (session 18)")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help="training images per concept")
    parser.add_argument("--prompts", type=int, default=16, help="compositional prompts per concept (a multiple of 4)")
    parser.add_argument("--prompt-seed", type=int, default=0, help="draws the prompts: another seed, other prompts")
    parser.add_argument("--seeds", type=int, default=8, help="render seeds per prompt (0..K-1, the same for every row)")
    parser.add_argument("--batch", type=int, default=16, help="clips per pipeline call")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--markdown", type=Path, default=None, help="the table (default: WORK/results-CONCEPT.md)")
    parser.add_argument("--json", type=Path, default=None, help="every clip's scores (default: WORK/results-CONCEPT.json)")
    parser.add_argument("--example-out", type=Path, default=None, help="copy the concept trained with the defaults here")
    parser.add_argument("--retrain", action="store_true", help="train the concepts again even if WORK has them")
    args = parser.parse_args(argv)
    for name in ("steps", "seeds", "batch", "prompts", "train_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    args.json = args.json or args.work / f"results-{file_key(args.concept)}.json"
    args.markdown = args.markdown or args.work / f"results-{file_key(args.concept)}.md"
    return args


def allowed_colours(concept: dict) -> list[str]:
    """Colours a prompt may give backgrounds and second objects: not the concept's own, and not green
    beside yellow and blue (green is the palette colour nearest their blend, so a soft edge between the
    halves would read as green)."""
    from cdvideo.shapes.world import COLOURS

    banned = {concept["upper"], concept["lower"]}
    if banned == {"yellow", "blue"}:
        banned.add("green")
    return [c for c in COLOURS if c not in banned]


def compositional_prompts(concept: dict, n: int, seed: int = 0) -> list[str]:
    """`n` prompts naming the concept, a quarter of each kind: another background or size; a motion; a second
    object; a second object and a motion. Every motion direction comes up; drawn from `seed`."""
    from cdvideo.shapes.world import SHAPES

    rng = np.random.default_rng(seed)
    colours = allowed_colours(concept)
    motions = ["left", "right", "up", "down"]
    subject = f"{concept['token']} {concept['class_word']}"
    prompts: list[str] = []
    for i in range(100 * n):
        if len(prompts) == n:
            break
        kind = len(prompts) % 4
        background = str(rng.choice(colours))
        size = str(rng.choice(["", "small ", "big "])) if kind == 0 else ""
        motion = f" moving {motions[(len(prompts) // 4 + (kind == 3) * 2) % 4]}" if kind in (1, 3) else ""
        second = ""
        if kind >= 2:
            shape = str(rng.choice([s for s in SHAPES if s != concept["class_word"]]))
            colour = str(rng.choice([c for c in colours if c != background]))
            second = f" and a {rng.choice(['', 'small ', 'big '])}{colour} {shape}"
        prompt = f"a {size}{subject}{second}{motion} on a {background} background"
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts


def write_training_images(folder: Path, concept: dict, backgrounds: str = "black", count: int = TRAIN_IMAGES) -> Path:
    """The concept's training images: world.concept_scene with seeds 0..4, 32x32 PNGs. "black": all on black,
    captioned by --instance-prompt; "varied": on the backgrounds a prompt may use, in turn, each with a
    caption file naming its background (as a user's photos show the subject in several places); "sizes": on black,
    and each also with its subject small, that copy's caption file saying "small" (photos at two distances)."""
    from PIL import Image

    from cdvideo.shapes.world import concept_scene, draw_frame, shape_mask

    def save(scene, name: str) -> None:
        """The scene's first frame as NAME.png, and its subject mask (as a user's segmentation would give it, read by
        --backgrounds, --moving-clips, --loss-on-subject, ...) as NAME.mask.png."""
        Image.fromarray(draw_frame(scene, 0)).save(folder / f"{name}.png")
        obj = scene.objects[0]
        mask = shape_mask(obj.shape, obj.x, obj.y, obj.extent)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{name}.mask.png")

    folder.mkdir(parents=True, exist_ok=True)
    colours = allowed_colours(concept)
    for seed in range(count):
        background = "black" if backgrounds == "black" else colours[seed % len(colours)]
        scene = concept_scene(np.random.default_rng(seed), background=background, concept=concept)
        save(scene, str(seed))
        if backgrounds == "varied":
            (folder / f"{seed}.txt").write_text(f"a {{token}} {{class_word}} on a {background} background\n")
        if backgrounds == "sizes":  # the same photo with its subject small, captioned so (session 18)
            scene.objects[0].size = "small"
            save(scene, f"{seed}s")
            (folder / f"{seed}s.txt").write_text("a small {token} {class_word} {motion} on a {background} background\n")
    return folder


def write_composites(path: Path, concept: dict, n: int = COMPOSITES, seed: int = 1000) -> Path:
    """The composite scenes file for `cdvideo train --composites`: `n` one-object scenes of the world in its
    grammar, drawn from `seed` (not the prompts' seed), each captioned with the concept beside the object."""
    from cdvideo.shapes.world import SHAPES

    rng = np.random.default_rng(seed)
    colours = allowed_colours(concept)
    lines = []
    while len(lines) < n:
        background = str(rng.choice(colours))
        colour = str(rng.choice([c for c in colours if c != background]))
        thing = f"{rng.choice(['', 'small ', 'big '])}{colour} {rng.choice(SHAPES)}"
        line = f"a {thing} on a {background} background | a {{token}} {{class_word}} and a {thing} on a {background} background"
        if line not in lines:
            lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def seed_key(key: str, seed: int, args) -> str:
    """A trained concept's key ("circle-token") for training seed `seed`: unchanged for --train-seed, so concepts
    trained before --train-seeds existed are reused."""
    return key if seed == args.train_seed else f"{key}-s{seed}"


def train_seeds(args) -> list[int]:
    return [args.train_seed + i for i in range(args.train_seeds)]


# The flags a variant that does not name them trains with, and, per flag, the value that is its absence (what a
# command recorded before the flag existed trained with).
NEUTRAL_FLAGS = (("--backgrounds", ""), ("--moving-clips", "0"), ("--frames", "1"))


def train_command(args, images: Path, concept: dict, flags: list[str], out: Path, seed: int) -> list[str]:
    """`cdvideo train` for one concept: the shipped defaults, the world's captions, and the variant's flags."""
    if any("{composites}" in f for f in flags):  # the scenes file, written once beside the images
        composites = write_composites(images.with_name(images.name + "-composites.txt"), concept)
        flags = [f.format(composites=composites) for f in flags]
    flags = [f.replace("{prompt_backgrounds}", world_backgrounds(allowed_colours(concept))) for f in flags]
    return [
        sys.executable, "-m", "cdvideo", "train",
        "--images", str(images), "--class-word", concept["class_word"], "--token", concept["token"],
        "--model", args.model, "--out", str(out), "--output-dir", str(out.with_suffix("")) + "-train",
        "--resolution", str(SIZE), "--steps", str(args.steps), "--learning-rate", str(args.learning_rate),
        # No random rescale: it shrinks the 12 px shape to 4..12 px and prefixes "a far away" / "zoomed in",
        # words outside the Shapes vocabulary. Captions in the world's grammar ("photo of" is not in it).
        "--no-augment",
        "--instance-prompt", "a {token} {class_word} on a black background", "--spl-prompt", "a {token} {class_word}",
        "--initializer-token", concept["class_word"],
        "--seed", str(seed), "--checkpoint-every", str(args.steps), "--no-validation-video",
        "--device", args.device, *flags,
        # Variants train what they name and nothing the model's training defaults added since: no --frames is single
        # images (before session 11's still clips), no --backgrounds or --moving-clips is neither (before session
        # 17's defaults), so their concept files and tables keep their meaning.
        *(word for flag, neutral in NEUTRAL_FLAGS if flag not in flags for word in (flag, neutral)),
    ]


def train_concepts(args, needed: list[tuple[str, str]], fingerprint: str) -> dict[str, dict]:
    """Train (or reuse) each (variant, concept) in `needed` with each training seed, two at a time with one CPU
    thread each (two processes with torch's default threads each would fight over the cores); returns per
    "concept-variant" (seed_key's) its path, command and training seconds."""
    import os

    from cdvideo.concept import load_concept

    records, pending = {}, []
    for (name, concept_key), seed in itertools.product(dict.fromkeys(needed), train_seeds(args)):
        concept = concept_of(concept_key)
        suffix = "" if args.train_backgrounds == "black" else f"-{args.train_backgrounds}"
        suffix += "" if args.train_images == TRAIN_IMAGES else f"-{args.train_images}"
        images = write_training_images(args.work / f"images-{file_key(concept_key)}{suffix}", concept,
                                       args.train_backgrounds, args.train_images)
        key = seed_key(f"{concept_key}-{name}", seed, args)
        stem = seed_key(f"{file_key(concept_key)}{suffix}-{name}", seed, args)
        out = args.work / "concepts" / f"{stem}.safetensors"
        command = train_command(args, images, concept, TRAININGS[name], out, seed)
        record = out.with_suffix(".command.json")
        records[key] = {"path": str(out), "command": shlex.join(["python", *command[1:]])}
        if (not args.retrain and out.is_file() and record.is_file()
                and same_training(json.loads(record.read_text())["command"], command)
                and load_concept(out).base_fingerprint == fingerprint):
            print(f"[train] {key}: reusing {out}", flush=True)
            records[key]["seconds"] = json.loads(record.read_text())["seconds"]
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            pending.append((key, command, out, record))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for start in range(0, len(pending), 2):
        running = []
        for key, command, out, record in pending[start : start + 2]:
            print(f"[train] {key}: {shlex.join(command)}", flush=True)
            log = open(out.with_suffix(".log"), "w")
            running.append((key, record, command, time.perf_counter(), subprocess.Popen(command, env=env, stdout=log, stderr=log)))
        for key, record, command, started, process in running:
            if process.wait() != 0:
                raise subprocess.CalledProcessError(process.returncode, command)
            seconds = round(time.perf_counter() - started, 1)
            record.write_text(json.dumps({"command": command, "seconds": seconds}, indent=2))
            records[key]["seconds"] = seconds
            print(f"[train] {key}: done in {seconds:.0f} s", flush=True)
    return records


def same_training(recorded: list[str], command: list[str]) -> bool:
    """Whether a concept trained by `recorded` is what `command` would train (the interpreter aside). Commands
    recorded before a flag of NEUTRAL_FLAGS was passed explicitly trained with its neutral value, which the command now
    says at its end."""
    def explicit(words: list[str]) -> list[str]:
        words = list(words[1:])
        for flag, neutral in reversed(NEUTRAL_FLAGS):  # the neutral pairs sit at the end, in this order
            if words[-2:] == [flag, neutral]:
                words = words[:-2]
        return words

    return explicit(recorded) == explicit(command)


def base_prompt(prompt: str, tokens: list[str]) -> str:
    """The base model's prompt: the concept tokens taken out ("a <new1> circle" -> "a circle")."""
    for token in tokens:
        prompt = prompt.replace(token + " ", "")
    return prompt


def plain_prompt(prompt: str, tokens: list[str], colours: tuple[str, str]) -> str:
    """The `plain` row's prompt: the concept token replaced by the concept's upper colour ("a <new1> circle" ->
    "a yellow circle"), a subject the base model knows, judged as one colour (upper, upper)."""
    if not isinstance(colours, tuple):
        raise SystemExit("the plain row measures one concept; it cannot run with two_concepts / two_region")
    for token in tokens:
        prompt = prompt.replace(token + " ", colours[0] + " ")
    return prompt


def row_schedule(row: dict) -> str | None:
    """The row's concept schedule: its own; None for a row of the model's render defaults (the preset's schedule);
    else full strength throughout ("0:1"), so that rows measure what they name whatever the preset says."""
    if "concept_schedule" in row or row.get("concept_start"):
        return row.get("concept_schedule")
    return None if row.get("render_defaults") else "0:1"


def row_binding(row: dict) -> str | None:
    """The row's concept binding: its own; None for a row of the model's render defaults (the preset's binding for
    concepts trained token-bound) and for the two-concept rows that name none; else the binding the row's
    concept was trained with, so that rows measure what they name whatever the preset says."""
    if row.get("concept_binding") or row.get("render_defaults") or not row.get("training"):
        return row.get("concept_binding")
    flags = TRAININGS[row["training"]]
    return flags[flags.index("--binding") + 1] if "--binding" in flags else "token"


def judge_rows(args, renderer, rows: dict[str, dict], prompts: list[str], colours, on_row=None) -> list[dict]:
    """Every row x prompt x seed rendered with the one loaded renderer and judged; one line per row, and
    `on_row(results so far)` after each (the table is written as rows finish)."""
    from cdvideo.shapes.evaluate import judge_concept_clip, render_clips

    from cdvideo.shapes.world import CONCEPTS

    tokens = [c["token"] for c in CONCEPTS.values()]
    results = []
    for name, row in rows.items():
        started = time.perf_counter()
        # One pass per training seed (the base model's row: one pass, with its prompts' tokens taken out).
        for train_seed, paths in (row.get("paths_by_seed") or {None: []}).items():
            if row.get("plain"):
                rendered = [plain_prompt(p, tokens, colours) for p in prompts]
            else:
                rendered = prompts if paths else [base_prompt(p, tokens) for p in prompts]
            judged_as = dict(zip(rendered, prompts))
            judged_colours = (colours[0], colours[0]) if row.get("plain") else colours
            items = [(p, seed) for p in rendered for seed in range(args.seeds)]
            for settings, frames in render_clips(items, renderer, concept=paths, batch_size=args.batch,
                                                 strength=row.get("strength", 1.0), step_cache=row.get("step_cache", 0),
                                                 guidance_scale=row.get("guidance_scale"),
                                                 concept_start=row.get("concept_start", 0.0),
                                                 concept_binding=row_binding(row),
                                                 concept_schedule=row_schedule(row)):
                judged = judge_concept_clip(frames, judged_as[settings.prompt], settings.seed, concept=judged_colours)
                results.append({"row": name, "train_seed": train_seed, "rendered_prompt": settings.prompt,
                                **judged.to_dict()})
        mine = [r for r in results if r["row"] == name]
        print(f"[render] {name}: {len(mine)} clips in {time.perf_counter() - started:.0f} s; "
              + " ".join(f"{k} {_mean([r[k] for r in mine]):.3f}" for k in ("concept", "others", "motion", "everything")),
              flush=True)
        if on_row:
            on_row(results)
    return results


def _values(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows if r[key] is not None])


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def bootstrap(groups: list[np.ndarray], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval over clips. With several groups (one per trained concept) the
    bootstrap has two levels: groups drawn with replacement, then clips within each, so the interval holds the
    training's spread as well as the sampling's."""
    groups = [g for g in groups if len(g)]
    if not groups:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = np.empty(draws)
    for d in range(draws):
        chosen = [groups[i] for i in rng.integers(0, len(groups), len(groups))] if len(groups) > 1 else groups
        means[d] = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in chosen]).mean()
    values = np.concatenate(groups)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(results: list[dict], rows: list[str]) -> dict[str, dict]:
    def groups(row, key):
        mine = [r for r in results if r["row"] == row]
        return [_values([r for r in mine if r.get("train_seed") == s], key)
                for s in dict.fromkeys(r.get("train_seed") for r in mine)]

    return {row: {key: bootstrap(groups(row, key)) for key in JUDGED} for row in rows}


def per_seed_lines(results: list[dict], rows: list[str]) -> str:
    """Each row's four main measures per training seed (for rows trained with several)."""
    lines = []
    for row in rows:
        mine = [r for r in results if r["row"] == row]
        seeds = list(dict.fromkeys(r.get("train_seed") for r in mine))
        if len(seeds) > 1:
            parts = [f"{key} " + " / ".join(f"{_mean([r[key] for r in mine if r['train_seed'] == s]):.2f}" for s in seeds)
                     for key in ("concept", "others", "motion", "everything")]
            lines.append(f"- `{row}`, training seeds {', '.join(map(str, seeds))}: " + "; ".join(parts))
    return "\n".join(lines)


def by_background(results: list[dict], rows: list[str]) -> str:
    """Each row's concept share and "everything" per background the prompts ask for, with the clip counts: the
    concept's gaps are mostly one background where it is never drawn (docs/personalization.md), which the
    whole-set means hide."""
    from cdvideo.shapes.evaluate import markdown_table
    from cdvideo.shapes.world import parse_caption

    grouped: dict[tuple[str, str], list[dict]] = {}  # (row, background) -> its clips, each caption parsed once
    for r in results:
        grouped.setdefault((r["row"], parse_caption(r["prompt"]).background or "unsaid"), []).append(r)
    names = list(dict.fromkeys(background for _, background in grouped))
    lines = []
    for row in rows:
        cells = []
        for name in names:
            here = grouped.get((row, name), [])
            cells.append(f"{_mean([r['concept'] for r in here]):.2f} / {_mean([r['everything'] for r in here]):.2f}"
                         f" ({len(here)})" if here else "-")
        lines.append([row, *cells])
    return markdown_table(["concept / everything (clips)", *names], lines)


def table(summary: dict[str, dict]) -> str:
    from cdvideo.shapes.evaluate import markdown_table

    def cell(stat):
        mean, low, high = stat
        return "-" if np.isnan(mean) else f"{mean:.2f} [{low:.2f}, {high:.2f}]"

    return markdown_table(["row", *JUDGED], [[row, *(cell(s[k]) for k in JUDGED)] for row, s in summary.items()])


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
    from cdvideo.shapes.world import CONCEPTS

    # 1. The model (its fingerprint tells whether stored concepts fit it), the prompts.
    preset = load_preset(args.model)
    renderer = Renderer(preset, device=args.device)
    fingerprint = fingerprint_unet(renderer.pipeline.unet)
    concept = concept_of(args.concept)
    two = "two_concepts" in args.rows or "two_region" in args.rows
    if two:  # "a <new1> circle and a <new2> square ...": both concepts, trained with the defaults
        first, second = CONCEPTS["circle"], CONCEPTS["square"]
        colours = {c["token"]: (c["upper"], c["lower"]) for c in (first, second)}
        backgrounds = [c for c in allowed_colours(first) if c in allowed_colours(second)]
        rng = np.random.default_rng(args.prompt_seed)
        prompts = []
        for i in range(args.prompts):
            motion = ["", " moving left", " moving right", " moving up", " moving down"][i % 5]
            prompts.append(f"a {first['token']} circle and a {second['token']} square{motion} "
                           f"on a {rng.choice(backgrounds)} background")
    else:
        colours = (concept["upper"], concept["lower"])
        prompts = compositional_prompts(concept, args.prompts, args.prompt_seed)
    print(f"[prompts] {len(prompts)} x {args.seeds} seeds:\n  " + "\n  ".join(prompts), flush=True)

    # 2. The concepts each row needs.
    rows: dict[str, dict] = {}
    needed = []
    for name in args.rows:
        if name == "two_region":  # both concepts trained token-bound, rendered token-bound and region-bound
            needed += [("token", "circle"), ("token", "square")]
            rows["two_token"] = {"keys": ["circle-token", "square-token"], "concept_binding": "token"}
            rows["two_token_region"] = {"keys": ["circle-token", "square-token"], "concept_binding": "region"}
            rows["two_defaults"] = {"keys": ["circle-token", "square-token"], "render_defaults": True}
            continue
        if name == "two_concepts":
            rows["base"] = {}
            for variant in ("classdiffusion", "token"):
                needed += [(variant, "circle"), (variant, "square")]
                rows[f"two_{variant}"] = {"keys": [f"circle-{variant}", f"square-{variant}"],
                                          "concept_binding": "merged" if variant == "classdiffusion" else "token"}
            rows["two_token_schedule"] = {"keys": ["circle-token", "square-token"], "concept_binding": "token",
                                          "concept_schedule": "0:0.5, 0.3:1"}
            rows["two_token_region"] = {"keys": ["circle-token", "square-token"], "concept_binding": "region"}
            continue
        row = dict(ROWS[name])
        if row["training"]:
            needed.append((row["training"], args.concept))
            row["keys"] = [f"{args.concept}-{row['training']}"]
        rows[name] = row
    trained = train_concepts(args, needed, fingerprint)
    for row in rows.values():
        if row.get("keys"):
            row["paths_by_seed"] = {seed: [trained[seed_key(key, seed, args)]["path"] for key in row["keys"]]
                                    for seed in train_seeds(args)}

    # 3. Render and judge.
    t = time.perf_counter()

    def partial(results):
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        done = list(dict.fromkeys(r["row"] for r in results))
        args.markdown.write_text(f"(partial: {len(done)} of {len(rows)} rows)\n\n{table(summarize(results, done))}\n")

    results = judge_rows(args, renderer, rows, prompts, colours, on_row=partial)
    render_s = time.perf_counter() - t

    # 4. Report.
    summary = summarize(results, list(rows))
    text = table(summary)
    command = shlex.join(["python", *sys.argv])
    wall_s = time.perf_counter() - started
    markdown = (
        f"Model `{preset.name}`, concept `{'both' if two else args.concept}`; {len(prompts)} prompts (prompt seed "
        f"{args.prompt_seed}) x {args.seeds} seeds per row, {preset.steps} denoising steps, guidance "
        f"{preset.guidance_scale}; {args.train_seeds} training seed(s) per trained row. Mean [95 % bootstrap "
        f"interval] over clips (two levels with several training seeds: concepts, then clips).\n\n{text}\n\n"
        + (per_seed_lines(results, list(rows)) + "\n\n" if args.train_seeds > 1 else "") +
        f"By the prompts' background:\n\n{by_background(results, list(rows))}\n\n" +
        f"Prompts: " + "; ".join(f"`{p}`" for p in prompts) + "\n\n"
        f"Command: `{command}` ({wall_s:.0f} s on {renderer.device}; rendering and judging {render_s:.0f} s)\n\n"
        + "".join(f"Training ({name}, {t['seconds']:.0f} s): `{t['command']}`\n\n" for name, t in trained.items())
    )
    print("\n" + text)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown)
    # A measure no clip of a row has (others, with two concepts) is nan in the table and null in the JSON.
    json_summary = {row: {key: None if np.isnan(stat[0]) else stat for key, stat in stats.items()}
                    for row, stats in summary.items()}
    write_json_atomic({"command": command, "prompts": prompts, "training": trained, "rows": rows,
                       "summary": json_summary, "clips": results, "wall_s": round(wall_s, 1)}, args.json)
    print(f"wrote {args.json} and {args.markdown} ({wall_s:.0f} s)")
    if args.example_out:
        source = trained.get(f"{args.concept}-token_video")
        if source is None:
            sys.exit("error: --example-out needs the 'defaults' row (the default training)")
        args.example_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source["path"], args.example_out)
        print(f"concept trained with the defaults copied to {args.example_out}")
    return 0


if __name__ == "__main__":
    from cdvideo.errors import CdVideoError

    try:
        sys.exit(main())
    except (CdVideoError, ValueError) as error:  # one line, as cdvideo's own commands report them
        sys.exit(f"error: {error}")
    except subprocess.CalledProcessError as error:
        sys.exit(f"error: training failed (exit {error.returncode}); its message is above")
