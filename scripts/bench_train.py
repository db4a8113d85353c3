"""Time `cdvideo train` at SD 1.5's real size (random weights) against the plain Custom Diffusion recipe.

Builds, once, bench_realsize.py's real-size SD 1.5 (UNet 320/640/1280/1280, SD's VAE, a CLIP ViT-L-sized
text encoder) with SD 1.5's 49,408-entry embedding table (the tiny tokenizer padded), random weights,
nothing downloaded. Then runs each variant in its own process on the same photos and seed, alternating
variants --repeats times, so a busy machine slows them alike:

  plain           the plain recipe: diffusers' examples/custom_diffusion/train_custom_diffusion.py written
                  out (its model mechanics: the token added by resizing the embedding table, the whole
                  table in AdamW with every other row's gradient zeroed, CustomDiffusionAttnProcessor2_0
                  holding trained copies of every attn2 to_k/to_v, grads zeroed without set_to_none), fed
                  by cdvideo's own data and random draws so that its losses can be compared step by step
  cdvideo         `cdvideo train` on the same recipe: --binding merged --spl-weight 0
  checkpointing   (cdvideo) + --gradient-checkpointing
  accumulation    (cdvideo) at half the batch x --gradient-accumulation-steps 2 (the same effective batch)
  prior           (cdvideo) + --with-prior-preservation (class images given, so none are generated)
  two             (cdvideo) with two concepts (<new1> dog, <new2> toy)
  classdiffusion  cdvideo's defaults: SPL 1, token binding
  resume          (cdvideo) stopped after half the steps, then --resume'd in a fresh process: its losses
                  after the resume against (cdvideo)'s
  frames          (classdiffusion) on still clips of --frames frames (8) through the model's frozen motion
                  module (`cdvideo train --frames`): what video-aware training costs at real size

Per variant: seconds per step (median over the steps after the first, which is warm-up, and over
repeats), peak RSS of the process (CUDA max allocated on a GPU), cdvideo's own peak-memory estimate
(the line `cdvideo train` prints before the first step) against it, and the loss of each step;
(cdvideo)'s losses must equal (plain)'s within float rounding.

    python scripts/bench_train.py [--size 128] [--batch 2] [--steps 4] [--repeats 2] [--variants plain,cdvideo] [--save runs.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "plain": "plain Custom Diffusion recipe (diffusers' train_custom_diffusion.py)",
    "cdvideo": "cdvideo train, same recipe (--binding merged --spl-weight 0)",
    "checkpointing": "(cdvideo) + --gradient-checkpointing",
    "accumulation": "(cdvideo), half batch x --gradient-accumulation-steps 2",
    "prior": "(cdvideo) + --with-prior-preservation",
    "two": "(cdvideo) with two concepts",
    "classdiffusion": "cdvideo defaults (SPL 1, --binding token)",
    "resume": "(cdvideo) stopped at half the steps, --resume'd",
    "frames": "cdvideo defaults on still clips through the motion module (--frames, 8 unless --frames says)",
}
VOCAB_SIZE = 49408  # SD 1.5's tokenizer
# One token in the tiny vocabulary: the recipe refuses an initializer of several pieces ("ktn" is 3 here).
INITIALIZER = "toy"
PROMPT = "photo of a {token} {class_word}"  # the official instance prompt, cdvideo's default
BUILD_VERSION = 1


def cdvideo_config(args, variant: str, work: Path, steps: int | None = None, resume: bool = False):
    from cdvideo.train import ConceptData, TrainConfig

    concepts = [ConceptData(args.images, "dog", class_images=args.class_images if variant == "prior" else "")]
    if variant == "two":
        concepts.append(ConceptData(args.images, "toy", token="<new2>"))
    settings = dict(
        concepts=concepts, out=str(work / f"{variant}.safetensors"), model=args.model, steps=steps or args.steps,
        batch_size=args.batch, resolution=args.size, spl_weight=0.0, binding="merged", initializer_token=INITIALIZER,
        checkpoint_every=10**6, validation_video=False, device=args.device, resume=resume,
    )
    if variant == "checkpointing":
        settings["gradient_checkpointing"] = True
    if variant == "accumulation":
        settings.update(batch_size=args.batch // 2, gradient_accumulation_steps=2)
    if variant == "prior":
        settings["with_prior_preservation"] = True
    if variant in ("classdiffusion", "frames"):
        settings.update(spl_weight=1.0, binding="token")
    # Each photo a still clip of args.frames frames in the frames variant; the others train single images.
    settings["frames"] = args.frames if variant == "frames" else 1
    if variant == "resume":
        settings["checkpoint_every"] = args.steps // 2
    return TrainConfig(**settings)


def run_cdvideo(args, variant: str) -> dict:
    """One `cdvideo train` run in this process: per-step losses and times from its loss log."""
    import csv
    import warnings

    from cdvideo.train import train

    work = Path(args.work)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "resume" and not args.resumed:
            result = train(cdvideo_config(args, variant, work, steps=args.steps // 2), progress=False)
        else:
            result = train(cdvideo_config(args, variant, work, resume=variant == "resume"), progress=False)
    with open(result.output_dir / "loss.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"losses": [float(r["loss"]) for r in rows], "seconds": [float(r["seconds"]) for r in rows]}


def run_plain(args) -> dict:
    """diffusers' Custom Diffusion training recipe (--modifier_token, --freeze_model crossattn_kv), written
    out with the same data, noise and timesteps as cdvideo draws them (one seeded generator)."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders import AttnProcsLayers
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0
    from transformers import CLIPTextModel, CLIPTokenizer

    from cdvideo.train.data import EpochSampler, Example, load_image_folder, make_batch

    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision="no")
    device = accelerator.device
    tokenizer = CLIPTokenizer.from_pretrained(args.model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(args.model, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(args.model, subfolder="scheduler")

    # The new token: a row added to the embedding table, copied from the initializer's.
    tokenizer.add_tokens(["<new1>"])
    (initializer_id,) = tokenizer.encode(INITIALIZER, add_special_tokens=False)
    modifier_id = tokenizer.convert_tokens_to_ids("<new1>")
    text_encoder.resize_token_embeddings(len(tokenizer))
    table = text_encoder.get_input_embeddings().weight.data
    table[modifier_id] = table[initializer_id]
    text = getattr(text_encoder, "text_model", text_encoder)
    for p in itertools.chain(text.encoder.parameters(), text.final_layer_norm.parameters(),
                             text.embeddings.position_embedding.parameters()):
        p.requires_grad = False
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    text_encoder.to(device)
    unet.to(device)
    vae.to(device)

    # Trained copies of every cross-attention's to_k / to_v, in Custom Diffusion processors.
    processors, state = {}, unet.state_dict()
    for name in unet.attn_processors:
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        channels = unet.config.block_out_channels
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        layer = name.split(".processor")[0]
        processors[name] = CustomDiffusionAttnProcessor2_0(train_kv=cross is not None, train_q_out=False,
                                                           hidden_size=hidden, cross_attention_dim=cross)
        if cross is not None:
            processors[name].load_state_dict({"to_k_custom_diffusion.weight": state[layer + ".to_k.weight"],
                                              "to_v_custom_diffusion.weight": state[layer + ".to_v.weight"]})
            processors[name].to(device)
    del state
    unet.set_attn_processor(processors)
    layers = AttnProcsLayers(unet.attn_processors)

    learning_rate = 1e-5 * args.batch * accelerator.num_processes  # --scale_lr (no prior preservation)
    optimizer = torch.optim.AdamW(
        itertools.chain(text_encoder.get_input_embeddings().parameters(), layers.parameters()), lr=learning_rate,
        betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    layers, text_encoder, optimizer = accelerator.prepare(layers, text_encoder, optimizer)

    # Data exactly as cdvideo draws it: one generator for the order, augmentation, posterior, noise, timesteps.
    generator = torch.Generator().manual_seed(42)
    caption = PROMPT.format(token="<new1>", class_word="dog")
    examples = [Example(image, caption, 0) for image in load_image_folder(args.images)]
    sampler = EpochSampler(len(examples), generator)
    unet.train()
    text_encoder.train()
    losses, seconds = [], []
    for _ in range(args.steps):
        started = time.perf_counter()
        with accelerator.accumulate(text_encoder):
            batch = make_batch(examples, sampler.next_indices(args.batch), args.size, generator, True, True, 8)
            latents = vae.encode(batch["pixels"].to(device)).latent_dist.sample(generator)
            latents = latents * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=generator).to(device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      generator=generator).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            ids = tokenizer(batch["prompts"], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            hidden_states = text_encoder(ids)[0]
            prediction = unet(noisy, timesteps, hidden_states).sample
            mask = batch["masks"].to(device)
            loss = F.mse_loss(prediction.float(), noise.float(), reduction="none")
            loss = ((loss * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean()
            accelerator.backward(loss)
            grads = accelerator.unwrap_model(text_encoder).get_input_embeddings().weight.grad
            grads.data[torch.arange(len(tokenizer)) != modifier_id, :] = 0
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(itertools.chain(text_encoder.parameters(), layers.parameters()), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # the script's default (--set_grads_to_none off)
        losses.append(float(loss.detach()))
        seconds.append(time.perf_counter() - started)
    return {"losses": losses, "seconds": seconds}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from cdvideo.cli.common import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    report = run_plain(args) if args.child == "plain" else run_cdvideo(args, args.child)
    report["total_s"] = time.perf_counter() - started
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print("RESULT " + json.dumps(report), flush=True)


def run_child(args, variant: str, work: Path, resumed: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--work", str(work), "--model", str(args.model_dir),
               "--images", str(args.images), "--class-images", str(args.class_images), "--size", str(args.size),
               "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device,
               "--threads", str(args.threads), "--frames", str(args.frames)] + (["--resumed"] if resumed else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{variant} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def make_photos(folder: Path, size: int, count: int, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = np.full((size, size, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        image[y : y + size // 2, x : x + size // 2] = rng.integers(0, 255, 3)
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="training resolution in pixels (official: 512)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (official: 2)")
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=8, help="frames per still clip of the frames variant")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0) or 1))
    parser.add_argument("--variants", default="plain,cdvideo,checkpointing,accumulation,prior,two,classdiffusion,resume")
    parser.add_argument("--model-dir", type=Path, default=None, help="where the real-size model is built once")
    parser.add_argument("--save", type=Path, help="write every run's numbers to this JSON file")
    parser.add_argument("--report-from", type=Path, help="print the report of a --save file (with --model-dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--resumed", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--work", "--model", "--images", "--class-images"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        vars(args).update({k: v for k, v in saved["args"].items() if k not in ("report_from", "save", "model_dir")})
        return report(args, saved["runs"])

    import torch

    from bench_realsize import build_realsize

    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args.model_dir = args.model_dir or tmp / "sd15-train"
        marker = args.model_dir / f".bench-train-v{BUILD_VERSION}"
        if not marker.exists():
            t = time.perf_counter()
            build_realsize(args.model_dir, vocab_size=VOCAB_SIZE)
            marker.touch()
            print(f"built the real-size random model in {time.perf_counter() - t:.0f} s: {args.model_dir}", flush=True)
        args.images = make_photos(tmp / "dog", 320, 4, 0)
        args.class_images = make_photos(tmp / "class", 320, 4, 1)
        print(f"SD 1.5 real size (random weights), {args.size} px, batch {args.batch}, {args.steps} steps (first is "
              f"warm-up), fp32, {args.device}, {args.threads} thread(s), torch {torch.__version__}; each run in its "
              f"own process, variants alternating, {args.repeats} repeats", flush=True)
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for repeat in range(args.repeats):
            for variant in variants:
                work = tmp / f"{variant}-{repeat}"
                if variant == "resume":
                    first = run_child(args, variant, work)
                    run = run_child(args, variant, work, resumed=True)
                    run["losses"] = first["losses"] + run["losses"][len(first["losses"]):]
                    run["peak_rss_mb"] = max(run["peak_rss_mb"], first["peak_rss_mb"])
                else:
                    run = run_child(args, variant, work)
                runs[variant].append(run)
                step = statistics.median(run["seconds"][1:])
                print(f"  [{repeat}] {variant}: {step:.2f} s/step, peak RSS {run['peak_rss_mb']:.0f} MiB, "
                      f"losses {' '.join(f'{x:.7g}' for x in run['losses'])}", flush=True)
        if args.save:
            saved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            args.save.write_text(json.dumps({"args": saved, "runs": runs}, indent=1))
        report(args, runs)  # inside: the estimates read the model's sizes


def estimate_mb(args, variant: str) -> float | None:
    """The peak-memory estimate `cdvideo train` prints for this variant (cdvideo.train.memory), in MiB."""
    if variant == "plain" or args.model_dir is None:
        return None
    from cdvideo.memory import parameter_counts
    from cdvideo.models import load_preset, locate
    from cdvideo.train.memory import estimate_for_config

    args.model = str(args.model_dir)
    counts = parameter_counts(locate(load_preset(args.model)))
    config = cdvideo_config(args, variant, Path("."))
    return estimate_for_config(config, counts, args.device) / 2**20


def report(args, runs: dict[str, list[dict]]) -> None:
    cuda = args.device.startswith("cuda")
    key = "peak_cuda_mb" if cuda else "peak_rss_mb"
    step = {v: statistics.median(s for r in rs for s in r["seconds"][1:]) for v, rs in runs.items()}
    peak = {v: max(r[key] for r in rs) for v, rs in runs.items()}
    base = "plain" if "plain" in runs else next(iter(runs))
    mine = "cdvideo" if "cdvideo" in runs else base
    print(f"\n| variant | s/step | peak {'CUDA' if cuda else 'RSS'} MiB | s/step vs ({base}) | memory vs ({base}) "
          f"| s/step vs ({mine}) | memory vs ({mine}) | estimate MiB (/ measured) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v in runs:
        value = estimate_mb(args, v)
        print(f"| ({v}) {VARIANTS[v]} | {step[v]:.2f} | {peak[v]:.0f} | {step[v] / step[base]:.2f} "
              f"| {peak[v] / peak[base]:.2f} | {step[v] / step[mine]:.2f} | {peak[v] / peak[mine]:.2f} "
              f"| {f'{value:.0f} ({value / peak[v]:.2f})' if value else '-'} |")
    if "plain" in runs and "cdvideo" in runs:
        a, b = runs["plain"][0]["losses"], runs["cdvideo"][0]["losses"]
        worst = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))
        print(f"\nlosses, plain recipe: {' '.join(f'{x:.9g}' for x in a)}\nlosses, cdvideo:      "
              f"{' '.join(f'{x:.9g}' for x in b)}\nlargest relative difference: {worst:.2e}")
    if "resume" in runs and "cdvideo" in runs:
        a, b = runs["cdvideo"][0]["losses"], runs["resume"][0]["losses"]
        print(f"resumed run's losses equal the uninterrupted run's: {a == b} ({' '.join(f'{x:.9g}' for x in b)})")


if __name__ == "__main__":
    main()
