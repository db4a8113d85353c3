"""`cdvideo train`: a folder of photos -> ClassDiffusion tuning -> a concept file for `cdvideo render`."""

from __future__ import annotations

import argparse
import dataclasses
import shlex

EXAMPLES = """examples:
  cdvideo train --images data/dog/ --class-word dog --out dog.safetensors
  cdvideo train --images data/dog/ --class-word dog --images data/hat/ --class-word hat \\
      --out dog-hat.safetensors --steps 800                 # two concepts: <new1> dog, <new2> hat
  cdvideo train --config train.yaml --spl-weight 0           # plain Custom Diffusion (the baseline)
  cdvideo train --images data/dog/ --class-word dog --out dog.safetensors --keep best --checkpoint-every 100
  cdvideo train ... --resume --steps 800                     # continue (or extend) an interrupted run
  accelerate launch -m cdvideo train ...                     # several GPUs
  cdvideo train --model shapes --images photos/ --class-word circle --out circle.safetensors
                                        # the model's training defaults (printed at the start) give the rest
then: cdvideo render --concept dog.safetensors --prompt "a <new1> dog wearing headphones"
"""

# TrainConfig fields that get a flag of the same (kebab-case) name, with their help.
_HELP = {
    "out": "the concept file to write (.safetensors)",
    "output_dir": "training folder: config, loss log, checkpoints, samples (default: <out stem>-train/ beside --out)",
    "model": "preset name (sd15-animatediff-v2, tiny), preset YAML, or diffusers model directory",
    "steps": "optimizer steps (official: 500 for one concept, 800 for two)",
    "batch_size": "images per step and process (official: 2)",
    "learning_rate": "per image; scaled by batch x processes x accumulation (x2 with prior preservation) unless "
                     "--no-scale-lr (official: 1e-5)",
    "scale_lr": "scale the learning rate by the effective batch",
    "gradient_accumulation_steps": "micro-batches per optimizer step",
    "resolution": "square training size in pixels (default: the preset's, 512 for SD 1.5)",
    "train": "kv: cross-attention to_k/to_v (ClassDiffusion); crossattn: also to_q/to_out",
    "binding": "where the key/value change acts: token (default: only at the new token, so the rest of a prompt "
               "keeps working), token+class, values, locked, locked+class, region (the token's change only on the "
               "pixels where the base model draws the class word), or merged (every word: the paper's way)",
    "train_token": "train the new token's embedding (default); --no-train-token keeps the initializer word's",
    "loss_on_subject": "with subject masks (NAME.mask.png beside each image, white = subject): the diffusion loss "
                       "counts only the subject, so the concept does not learn the photos' backgrounds",
    "background_loss_weight": "with --loss-on-subject: the weight the background keeps in the diffusion loss (0..1; "
                              "default 0, Break-A-Scene's way)",
    "background_target": "with --background-loss-weight: what the background is compared with: data (the photo) or "
                         "base (the model's own prediction for the caption without the token, so the concept only pays "
                         "for changing the scene around its subject and does not learn the photos' backgrounds)",
    "attention_loss_weight": "with subject masks: weight of the loss that keeps the token's cross-attention on the "
                             "subject (Break-A-Scene; 0 off)",
    "composites": "with subject masks: a file of 'SCENE PROMPT | CAPTION' lines; the base model renders each scene, "
                  "the subject is pasted in, and the composite trains with its caption (the concept learns to share a scene)",
    "backgrounds": "photos in several contexts, made from yours (needs subject masks NAME.mask.png and captions that "
                   "name {background}): 'NAME=#RRGGBB, ...'; each photo trains once per colour, its background painted "
                   "that colour and its caption naming it",
    "frames": "video-aware training: each image is a still clip of this many frames denoised through the model's "
              "motion module, as renders are (1: single images through the 2D UNet, the paper; 0: the model's "
              "train_frames, 8 for shapes, else 1; 8 frames cost 3.4x the time and 2x the memory of a step at SD size)",
    "moving_clips": "with still clips (--frames): each clip's subject (needs masks NAME.mask.png) travels this share of "
                    "the image side per frame, left, right, up or down (or stays, one clip in five), named by {motion} in "
                    "the caption ('moving left'); 0 off; needs --no-augment (the Shapes world moves 0.0625)",
    "timestep_range": "LO:HI: train only the noise levels in this share of the training timesteps (0 clean, 1 pure "
                      "noise; default 0:1, all of them)",
    "spl_weight": "weight of the semantic preservation loss; 0 is plain Custom Diffusion",
    "spl_pooling": "eos: end-of-text feature (the paper); legacy: the official code's argmax pooling",
    "initializer_token": "word whose embedding starts the new token (a rare, unrelated one); {class_word}: each "
                         "concept's own class word",
    "augment": "Custom Diffusion's random rescale with 'far away'/'zoomed in' prompts",
    "hflip": "random horizontal flips",
    "with_prior_preservation": "also train on class images (generated by the base model unless --class-images); needs --binding merged",
    "prior_loss_weight": "weight of the class-image loss",
    "num_class_images": "class images to generate per concept",
    "adam_beta1": "AdamW beta1",
    "adam_beta2": "AdamW beta2",
    "adam_weight_decay": "AdamW weight decay",
    "adam_epsilon": "AdamW epsilon",
    "max_grad_norm": "gradient-norm clip (0: none)",
    "seed": "random seed (under accelerate launch every process draws the same stream and trains its share of each global batch)",
    "mixed_precision": "no (fp32, official), fp16 or bf16",
    "gradient_checkpointing": "recompute activations in the backward pass to save memory",
    "checkpoint_every": "save and score a checkpoint every N steps (the last step is always saved)",
    "keep": "last: final weights; best: best-scored checkpoint; all: keep every checkpoint",
    "score": "checkpoint score for --keep best: auto (CLIP-I if available, else held-out loss), heldout_loss, clip_i, dino_i",
    "holdout": "images per concept held out of training to score checkpoints (--keep best)",
    "instance_prompt": "caption of the training images, with {token} and {class_word} (and {background}, {motion} for --backgrounds, --moving-clips)",
    "spl_prompt": "SPL's phrase, compared with and without {token}",
    "validation_prompt": "prompt of the validation video (default: 'a <new1> dog')",
    "validation_video": "render a short video with the motion module at the end",
    "resume": "continue from the last checkpoint in the training folder",
    "device": "auto, cpu, cuda, cuda:N (under accelerate launch each process takes its own GPU)",
}


def add_parser(subparsers) -> None:
    from cdvideo.train.config import TrainConfig, flag_name

    parser = subparsers.add_parser(
        "train",
        help="learn a concept from a folder of photos (ClassDiffusion)",
        description="Personalization tuning with ClassDiffusion: writes a concept file for `cdvideo render --concept`.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", "--concept-dir", dest="images", action="append", metavar="DIR",
                        help="folder of photos of one subject; repeat with --class-word for several concepts")
    parser.add_argument("--class-word", dest="class_words", action="append", metavar="WORD",
                        help="the subject's class (dog, cat, backpack), one per --images")
    parser.add_argument("--token", dest="tokens", action="append", metavar="TOKEN",
                        help="the new token per concept (default <new1>, <new2>, ...)")
    parser.add_argument("--class-images", dest="class_images", action="append", metavar="DIR",
                        help="class images per concept for prior preservation")
    parser.add_argument("--config", metavar="YAML", help="settings file (keys are the flags' names with _); flags override it, and it "
                        "overrides the model's training defaults (its preset's train_defaults, printed when a run starts)")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in _HELP:
            continue
        flag = flag_name(f.name)
        # Defaults stay None so that only the flags given override the YAML file.
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{_HELP[f.name]} (default: {f.default})")
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None,
                                help=f"{_HELP[f.name]} (default: {f.default!r})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def config_from_args(args):
    """TrainConfig from --config (if given) with the given flags on top."""
    from cdvideo.config import read_yaml
    from cdvideo.errors import ConfigError
    from cdvideo.train.config import TrainConfig

    data = dict(read_yaml(args.config) or {}) if args.config else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{args.config}: expected a mapping of settings")
    for name in _HELP:
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    if args.images or args.class_words:
        images, words = args.images or [], args.class_words or []
        if len(images) != len(words):
            raise ConfigError(f"give one --class-word per --images folder (got {len(images)} folders, {len(words)} words)")
        tokens, class_images = args.tokens or [], args.class_images or []
        for name, values in (("--token", tokens), ("--class-images", class_images)):
            if values and len(values) != len(images):
                raise ConfigError(f"give one {name} per --images folder or none (got {len(values)} for {len(images)})")
        data["concepts"] = [
            {"images": d, "class_word": w, "token": tokens[i] if tokens else "",
             "class_images": class_images[i] if class_images else ""}
            for i, (d, w) in enumerate(zip(images, words))
        ]
    return TrainConfig.from_dict(data, args.config or "train settings", model_defaults=True)


def run(args) -> int:
    from cdvideo.cli.common import quiet_libraries, warnings_as_lines

    config = config_from_args(args)
    if config.from_model and not args.quiet:  # what the user did not type is said once, as flags they can change
        print(f"model {config.model}'s training defaults: " + " ".join(
            shlex.quote(part) for name in config.from_model for part in as_flag(name, getattr(config, name))))
    config.check()  # before torch and diffusers are imported
    warnings_as_lines()
    quiet_libraries()
    check_tokens(config)  # against the base model's tokenizer alone, before any model loads
    from cdvideo.train import train

    result = train(config, progress=not args.quiet)
    if not result.main_process:  # under accelerate launch the main process reports
        return 0
    print(f"concept: {result.concept} (weights of step {result.step})")
    if result.scores:
        print("scores: " + ", ".join(f"step {s}: {v:.4f}" for s, v in sorted(result.scores.items())))
    print(f"training folder: {result.output_dir} (config.yaml, loss.csv, checkpoints/, samples/)")
    if result.video:
        print(f"validation video: {result.video}")
    tokens = ", ".join(config.tokens())
    print(f'render: cdvideo render --model {config.model} --concept {result.concept} --prompt "a {config.tokens()[0]} '
          f'{config.concepts[0].class_word} ..."  (tokens: {tokens})')
    return 0


def as_flag(name: str, value) -> list[str]:
    """A setting as the command-line words that give it: ["--steps", "1500"], ["--no-augment"]."""
    from cdvideo.train.config import flag_name

    flag = flag_name(name)
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    return [flag, str(value)]


def check_tokens(config) -> None:
    """A new token that is already a word (`--token dog`) is refused before the model loads."""
    from cdvideo.concept import check_new_token
    from cdvideo.errors import ConfigError, InjectionError
    from cdvideo.models import load_preset, load_tokenizer

    tokenizer = load_tokenizer(load_preset(config.model))
    if tokenizer is None:
        return  # not local: loading the model reports that
    for token in config.tokens():
        try:
            check_new_token(tokenizer, token, "--token")
        except InjectionError as error:
            raise ConfigError(str(error)) from None
