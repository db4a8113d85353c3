"""Train the Shapes model from scratch on the synthetic world, in resumable stages, on a CPU.

    python scripts/train_shapes.py vae       --work runs/shapes  # 3000 steps, 26 min on 2 CPU cores
    python scripts/train_shapes.py base      --work runs/shapes  # text encoder + UNet on frames: 4185 steps, 42 min
    python scripts/train_shapes.py motion    --work runs/shapes  # motion modules on 8-frame clips: 2364 steps, 36 min
    python scripts/train_shapes.py decoder   --work runs/shapes  # VAE decoder on two-tone objects too: 1500 steps, 24 min
    python scripts/train_shapes.py start     --work runs/shapes  # first frames captioned with their motion: 1200 steps, 23 min
    python scripts/train_shapes.py contrast  --work runs/shapes  # zero SNR + the motion-word hinge: 1000 steps, 24 min
    python scripts/train_shapes.py contrast2 --work runs/shapes  # half the clips at t >= 600: 1500 steps, 34 min
    python scripts/train_shapes.py contrast3 --work runs/shapes  # hinge against any other motion: 750 steps, 17 min
    python scripts/train_shapes.py contrast4 --work runs/shapes  # text encoder trains too: 1736 steps, 36 min
    python scripts/train_shapes.py export    --work runs/shapes [--to cdvideo/shapes/model]

That chain makes the shipped weights: the VAE from `decoder`, the text encoder, UNet and motion
modules from `contrast4` (zero-terminal-SNR schedule, v-prediction). `export --motion-stage STAGE`
exports an earlier stage of the chain instead (`motion` is the first shipped model: it ignores its
motion words). Stages tried and dropped on the way (`words`, `motion2`, `zsnr`, `direct`) and what
they measured are in docs/shapes-world.md ("Stages tried and dropped").

The default step counts are the shipped weights' (base and motion were stopped by `--minutes`
there); `--steps N` trains on to N, `--minutes M` stops resumably after M minutes.

Each stage keeps `WORK/<stage>/state.pt` (tensors and numbers only, read with weights_only=True)
every `--save-every` steps and when `--minutes` run out; running the same command again goes on
from there. Batch k is drawn from a generator seeded with (seed, stage id, k), so a resumed run sees
the same data as an uninterrupted one. docs/shapes-world.md gives the wall times.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cdvideo.shapes import model as shapes_model
from cdvideo.shapes.world import (COLOURS, CONCEPT, MOTIONS, NUM_FRAMES, draw_clip, draw_frame, sample_scene,
                                  with_motion, with_opposite_motion)

# Each stage's id seeds its data and noise. The ids are those the shipped weights were trained with:
# the gaps are the dropped stages' (docs/shapes-world.md), so that every stage sees the same batches.
STAGE_IDS = dict(vae=0, base=1, motion=2, decoder=3, start=5, contrast=8, contrast2=9, contrast3=10, contrast4=11)
STAGES = tuple(STAGE_IDS)
ZERO_SNR_STAGES = ("contrast", "contrast2", "contrast3", "contrast4")  # trained (and sampled) with the zero-terminal-SNR schedule
MOTION_STAGES = ("motion",) + ZERO_SNR_STAGES  # stages an export can ship
OFFSET_NOISE = 0.1  # per-channel noise offset: lets the model reach flat dark/bright backgrounds
CAPTION_DROPOUT = 0.1  # empty captions, for classifier-free guidance
EMA_DECAY = 0.999
CONTRAST_MARGIN = 0.05  # contrast stage: the own caption's error must be 5 % below the opposite motion's
HIGH_NOISE_FROM = 600  # contrast2: above this the clip barely shows its direction (zero-SNR schedule)
DECODER_JITTER = 0.2  # latent noise (x their std) under which the fine-tuned decoder must match the old one


def batch_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, STAGE_IDS[stage], step])


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    x = torch.from_numpy(frames).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


def image_batch(rng: np.random.Generator, size: int, start_frames: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Single frames and their captions. start_frames: a caption that states the motion gets the
    clip's first frame, where the motion shows (an object moving left starts on the right)."""
    frames, captions = [], []
    for _ in range(size):
        scene = sample_scene(rng)
        index = int(rng.integers(NUM_FRAMES))  # drawn even when unused: the base stage's data stays as trained
        frames.append(draw_frame(scene, 0 if start_frames and scene.say_motion else index))
        captions.append(scene.caption())
    return to_tensor(np.stack(frames)), captions


def two_tone_batch(rng: np.random.Generator, size: int) -> torch.Tensor:
    """World frames whose objects get a second colour for their lower half, as concepts have.

    Only the VAE's decoder sees these (the text-to-video stages never do): like SD's VAE, ours must
    be able to show things the captions cannot name, or no concept could be learned through it.
    The example concept's own pair (yellow over blue) is left out, so the concept stays unseen.
    """
    frames = []
    for _ in range(size):
        scene = sample_scene(rng, split="any")
        for obj in scene.objects:
            pairs = [c for c in COLOURS if c not in (obj.colour, scene.background)
                     and (obj.colour, c) != (CONCEPT["upper"], CONCEPT["lower"])]
            obj.lower_colour = str(rng.choice(pairs))
        frames.append(draw_frame(scene, int(rng.integers(NUM_FRAMES))))
    return to_tensor(np.stack(frames))


def clip_batch(rng: np.random.Generator, size: int) -> tuple[torch.Tensor, list[str]]:
    clips, captions = [], []
    for _ in range(size):
        scene = sample_scene(rng)
        scene.say_motion = True  # a clip shows its motion: the caption says it
        clips.append(draw_clip(scene))
        captions.append(scene.caption())
    return to_tensor(np.stack(clips)), captions  # (b, f, 3, H, W)


class Stage:
    """Models, optimizer, EMA copies and the step counter of one stage, saved and restored as one."""

    def __init__(self, work: Path, name: str, modules: dict[str, torch.nn.Module], params, lr: float,
                 ema: tuple[str, ...] = ()):
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.modules = modules
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.ema = {k: copy.deepcopy(modules[k]).requires_grad_(False) for k in ema}
        self.step = 0
        state_path = self.dir / "state.pt"
        if state_path.exists():
            state = torch.load(state_path, weights_only=True)
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            for k, m in self.ema.items():
                m.load_state_dict(state["ema"][k])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            print(f"{name}: resumed at step {self.step}", file=sys.stderr)

    def save(self) -> None:
        state = dict(modules={k: m.state_dict() for k, m in self.modules.items()},
                     ema={k: m.state_dict() for k, m in self.ema.items()},
                     optimizer=self.optimizer.state_dict(), step=self.step)
        tmp = self.dir / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.dir / "state.pt")

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = min(EMA_DECAY, (1 + self.step) / (10 + self.step))  # warm-up: early EMA follows the model
        for k, ema in self.ema.items():
            for e, p in zip(ema.parameters(), self.modules[k].parameters()):
                e.lerp_(p.detach(), 1 - decay)


def run(stage: Stage, args, loss_fn) -> None:
    start = time.time()
    log = open(stage.dir / "log.jsonl", "a")
    bar = tqdm(total=args.steps, initial=stage.step, desc=stage.dir.name, unit="step")
    while stage.step < args.steps:
        torch.manual_seed(args.seed * 1_000_003 + STAGE_IDS[stage.dir.name] * 100_003 + stage.step)
        lr_scale = min(1.0, (stage.step + 1) / 200)  # warm-up
        for group in stage.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * lr_scale
        loss = loss_fn(batch_rng(args.seed, stage.dir.name, stage.step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in stage.optimizer.param_groups for p in g["params"]], 1.0)
        stage.optimizer.step()
        stage.optimizer.zero_grad(set_to_none=True)
        stage.step += 1
        stage.update_ema()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        log.write(json.dumps(dict(step=stage.step, loss=round(loss.item(), 5), t=round(time.time() - start, 1))) + "\n")
        out_of_time = args.minutes and time.time() - start > 60 * args.minutes
        if stage.step % args.save_every == 0 or stage.step == args.steps or out_of_time:
            stage.save()
            log.flush()
        if out_of_time:
            print(f"{stage.dir.name}: stopped at step {stage.step} after {args.minutes} min; run again to go on",
                  file=sys.stderr)
            break
    bar.close()
    spent = time.time() - start
    with open(stage.dir / "wall_time.jsonl", "a") as f:
        f.write(json.dumps(dict(until_step=stage.step, seconds=round(spent, 1), threads=torch.get_num_threads())) + "\n")


def done(work: Path, name: str) -> dict:
    path = work / name / "state.pt"
    if not path.exists():
        sys.exit(f"stage {name!r} has not been trained in {work}: run `python scripts/train_shapes.py {name}` first")
    return torch.load(path, weights_only=True)


# --- stages ------------------------------------------------------------------------------------

def train_vae(args) -> None:
    torch.manual_seed(args.seed)
    vae = shapes_model.build_vae()
    stage = Stage(args.work, "vae", dict(vae=vae), vae.parameters(), lr=args.lr or 1e-3)

    def loss_fn(rng):
        x, _ = image_batch(rng, args.batch or 32)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()

    run(stage, args, loss_fn)


def load_vae(work: Path, stage: str = "vae"):
    vae = shapes_model.build_vae()
    vae.load_state_dict(done(work, stage)["modules"]["vae"])
    return vae.requires_grad_(False).eval()


@torch.no_grad()
def latent_scale(vae, seed: int) -> float:
    """SD's scaling_factor: 1 / std of the latents, so diffusion sees unit-variance latents."""
    x, _ = image_batch(np.random.default_rng([seed, 99]), 512)
    return float(1.0 / vae.encode(x).latent_dist.mode().std())


@functools.lru_cache(maxsize=1)
def noise_scheduler():
    """Built once: only its noise schedule is used, by every step."""
    return shapes_model.build_scheduler()


def diffusion_loss(unet, text_encoder, tokenizer, latents, captions, rng, weighting: str = "eps", scheduler=None,
                   offset_noise: float = OFFSET_NOISE, contrast: float = 0.0, contrast_min_t: int = 0,
                   contrast_with: str = "opposite", high_noise: float = 0.0, **unet_kwargs):
    """The denoising loss under `scheduler`'s noise schedule and prediction type (default: the base
    stages' epsilon schedule). weighting "v" weighs an epsilon model's samples by 1 + 1/SNR(t), which
    is the loss of v-prediction written for an epsilon model: the noisiest steps, where the layout and
    the motion are decided, count as much as the rest (under the plain epsilon loss an error in the
    clean clip at t ~ 900 costs SNR ~ 0.01 times as much).

    contrast (v-prediction clips only): the weight of a hinge loss that asks each clip with a motion
    phrase to be predicted at least CONTRAST_MARGIN (relative) better with its own caption than with
    the opposite motion ("moving left" <-> "moving right"; contrast_with "other": any other of the five
    motions, drawn at random), on the same noisy clip (see `train_contrast`),
    counted only where t >= contrast_min_t. high_noise: the share of samples whose t is drawn from
    [HIGH_NOISE_FROM, 1000) instead of [0, 1000)."""
    scheduler = scheduler or noise_scheduler()
    captions = ["" if rng.random() < CAPTION_DROPOUT else c for c in captions]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    hidden = text_encoder(ids)[0]
    if latents.ndim == 5:  # UNetMotionModel wants the text once per frame, as the pipeline gives it
        hidden = hidden.repeat_interleave(latents.shape[2], dim=0)
    noise = torch.randn_like(latents)
    if offset_noise and latents.ndim == 5:  # (b, c, f, h, w): one offset per clip and channel, shared by its frames
        noise += offset_noise * torch.randn(latents.shape[0], latents.shape[1], 1, 1, 1)
    elif offset_noise:
        noise += offset_noise * torch.randn(latents.shape[0], latents.shape[1], 1, 1)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
    if high_noise:
        top = torch.rand(latents.shape[0]) < high_noise
        t[top] = torch.randint(HIGH_NOISE_FROM, scheduler.config.num_train_timesteps, (int(top.sum()),))
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, hidden, **unet_kwargs).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
        loss = F.mse_loss(pred, target)
        if contrast_with == "other":
            # Any motion but the caption's own (its word is the caption's only motion word).
            others = [str(rng.choice([m for m in MOTIONS if f"{m} " not in c + " "])) for c in captions]
            flipped = [(i, with_motion(c, m)) for i, (c, m) in enumerate(zip(captions, others))] if contrast else []
        else:
            flipped = [(i, with_opposite_motion(c)) for i, c in enumerate(captions)] if contrast else []
        flipped = [(i, c) for i, c in flipped if c is not None and t[i] >= contrast_min_t]
        if flipped:
            index = torch.tensor([i for i, _ in flipped])
            ids = tokenizer([c for _, c in flipped], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            opposite_hidden = text_encoder(ids)[0].repeat_interleave(latents.shape[2], dim=0)
            opposite = unet(noisy[index], t[index], opposite_hidden, **unet_kwargs).sample
            opposite_error = (opposite - target[index]).pow(2).flatten(1).mean(1)
            own_error = (pred[index] - target[index]).pow(2).flatten(1).mean(1)
            hinge = F.relu(own_error - opposite_error + CONTRAST_MARGIN * own_error.detach())
            loss = loss + contrast * hinge.mean()
        return loss
    if weighting == "eps":
        return F.mse_loss(pred, noise)
    alphas_cumprod = scheduler.alphas_cumprod[t]
    weight = 1 + (1 - alphas_cumprod) / alphas_cumprod  # 1 + 1/SNR
    per_sample = (pred - noise).pow(2).flatten(1).mean(1)
    return (weight * per_sample).mean()


def train_on_frames(args, name: str, tokenizer, text_encoder, unet, lr: float, start_frames: bool = False,
                    weighting: str = "eps") -> None:
    """Text encoder + spatial UNet on single frames (the base stage and `start`)."""
    vae = load_vae(args.work)
    scale = latent_scale(vae, args.seed)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    stage = Stage(args.work, name, dict(text_encoder=text_encoder, unet=unet), params, lr=lr,
                  ema=("text_encoder", "unet"))

    def loss_fn(rng):
        x, captions = image_batch(rng, args.batch or 64, start_frames=start_frames)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * scale
        return diffusion_loss(unet, text_encoder, tokenizer, latents, captions, rng, weighting=weighting)

    run(stage, args, loss_fn)


def train_base(args) -> None:
    torch.manual_seed(args.seed)
    tokenizer = shapes_model.build_tokenizer()
    text_encoder = shapes_model.build_text_encoder(tokenizer)
    unet = shapes_model.build_unet()
    train_on_frames(args, "base", tokenizer, text_encoder, unet, lr=args.lr or 3e-4)


def base_models(work: Path, stage: str = "base"):
    """A single-frame stage's (base, start) EMA text encoder and UNet."""
    state = done(work, stage)
    tokenizer = shapes_model.build_tokenizer()
    text_encoder = shapes_model.build_text_encoder(tokenizer)
    text_encoder.load_state_dict(state["ema"]["text_encoder"])
    unet = shapes_model.build_unet()
    unet.load_state_dict(state["ema"]["unet"])
    return tokenizer, text_encoder, unet


def motion_models(work: Path, stage: str):
    """A motion stage's EMA text encoder and UNetMotionModel."""
    from diffusers import UNetMotionModel

    state = done(work, stage)
    tokenizer = shapes_model.build_tokenizer()
    text_encoder = shapes_model.build_text_encoder(tokenizer)
    text_encoder.load_state_dict(state["ema"]["text_encoder"])
    unet = UNetMotionModel.from_unet2d(shapes_model.build_unet(), shapes_model.build_motion_adapter())
    unet.load_state_dict(state["ema"]["unet"])
    return tokenizer, text_encoder, unet


def train_on_clips(args, name: str, tokenizer, text_encoder, unet, params, **loss_kwargs) -> None:
    vae = load_vae(args.work)
    scale = latent_scale(vae, args.seed)
    stage = Stage(args.work, name, dict(text_encoder=text_encoder, unet=unet), params, lr=params[0]["lr"],
                  ema=("text_encoder", "unet"))

    def loss_fn(rng):
        clips, captions = clip_batch(rng, args.batch or 8)
        b, f = clips.shape[:2]
        with torch.no_grad():
            latents = vae.encode(clips.flatten(0, 1)).latent_dist.sample() * scale
        latents = latents.unflatten(0, (b, f)).movedim(1, 2)  # (b, c, f, h, w)
        return diffusion_loss(unet, text_encoder, tokenizer, latents, captions, rng, **loss_kwargs)

    run(stage, args, loss_fn)


def train_motion(args) -> None:
    from diffusers import UNetMotionModel

    tokenizer, text_encoder, unet2d = base_models(args.work)
    torch.manual_seed(args.seed)
    adapter = shapes_model.build_motion_adapter()
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    motion = [p for n, p in unet.named_parameters() if "motion_modules" in n]
    spatial = [p for n, p in unet.named_parameters() if "motion_modules" not in n]
    # The motion modules learn from scratch; the spatial UNet and text encoder follow at a quarter of
    # the rate, so that motion words ("moving left") reach the features the motion modules read.
    lr = args.lr or 5e-4
    params = [dict(params=motion, lr=lr), dict(params=spatial + list(text_encoder.parameters()), lr=lr / 4)]
    train_on_clips(args, "motion", tokenizer, text_encoder, unet, params)


def train_decoder(args) -> None:
    """Fine-tune the VAE's decoder so it can show two-tone objects; the encoder stays frozen.

    The first VAE saw one-colour objects only and decodes a yellow-over-blue circle as yellow over
    red, so no concept trained through it could come out right. Freezing the encoder keeps the latent
    space, so the UNet and motion modules trained on it stay valid (the way SD's own VAE decoder was
    fine-tuned after its UNet: sd-vae-ft-mse). Half of each batch is two-tone frames, learned from
    the pixels; the other half is world frames, where the new decoder copies the old one on
    jittered latents, so that what the UNet generates (never exactly an encoded frame) decodes as
    before: a first version learned world frames from their pixels instead, and its slightly rounder
    square corners cost 0.04 of the held-out objects score.
    """
    vae = load_vae(args.work)
    teacher = copy.deepcopy(vae)
    vae.decoder.requires_grad_(True).train()
    vae.post_quant_conv.requires_grad_(True)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    stage = Stage(args.work, "decoder", dict(vae=vae), params, lr=args.lr or 2e-4)

    def loss_fn(rng):
        half = (args.batch or 32) // 2
        world, _ = image_batch(rng, half)
        two_tone = two_tone_batch(rng, half)
        with torch.no_grad():
            z_world = vae.encode(world).latent_dist.sample()
            z_world = z_world + DECODER_JITTER * z_world.std() * torch.randn_like(z_world)
            target_world = teacher.decode(z_world).sample
            z_two_tone = vae.encode(two_tone).latent_dist.sample()
        recon = vae.decode(torch.cat([z_world, z_two_tone])).sample
        target = torch.cat([target_world, two_tone])
        return F.l1_loss(recon, target) + F.mse_loss(recon, target)

    run(stage, args, loss_fn)


def split_motion_unet(unet_motion):
    """A UNetMotionModel split back into SD's UNet and AnimateDiff's adapter: the two parts a real model has."""
    unet = shapes_model.build_unet()
    spatial = {k: v for k, v in unet_motion.state_dict().items() if "motion_modules" not in k}
    missing, unexpected = unet.load_state_dict(spatial, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    adapter = shapes_model.build_motion_adapter()
    # Same parameter names in UNetMotionModel and MotionAdapter.
    motion = {k: v for k, v in unet_motion.state_dict().items() if "motion_modules" in k}
    missing, unexpected = adapter.load_state_dict(motion, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    return unet, adapter


def train_start(args) -> None:
    """Teach the spatial UNet what the motion words say about a single frame: where the object starts.

    Every object stays inside the frame, so one moving left starts on the right. Captions that state
    the motion are paired with the clip's first frame, so the words now carry information for the
    spatial layers and the text encoder, which they ignored after the base stage (the text encoder's
    outputs for "moving left" and "moving right" were 0.12 apart, for "red" and "green" 4.7: see
    scripts/shapes_motion_words.py). Goes on from the motion stage's spatial UNet and text encoder.
    """
    tokenizer, text_encoder, unet_motion = motion_models(args.work, "motion")
    unet, _ = split_motion_unet(unet_motion)
    # Where a small object sits is settled in the noisiest steps: weigh them as v-prediction does.
    train_on_frames(args, "start", tokenizer, text_encoder, unet, lr=args.lr or 3e-4, start_frames=True,
                    weighting="v")


def start_with_motion_modules(work: Path):
    """The start stage's text encoder and spatial UNet with the motion stage's motion modules."""
    from diffusers import UNetMotionModel

    tokenizer, text_encoder, unet2d = base_models(work, "start")
    _, _, motion_unet = motion_models(work, "motion")
    _, adapter = split_motion_unet(motion_unet)
    return tokenizer, text_encoder, UNetMotionModel.from_unet2d(unet2d, adapter)


def train_contrast(args) -> None:
    """Motion words that steer: zero-SNR v-prediction on clips, the start stage's text encoder frozen,
    and a loss that pays for using the words.

    After `zsnr` (from the motion stage) the words still did not steer the motion: the model predicted
    a moving clip as well with the opposite motion words at every noise level (gap 0.0000 to 0.0005 in
    latent MSE), also when one frame was shown nearly clean and the words alone said where the
    object is in the other seven (a `reveal` stage, 846 steps, tried and dropped), and its text
    encoder kept "left" and "right" 0.2 apart. So this stage starts from `start` (whose text encoder
    tells them apart: 3.0) with the motion stage's motion modules, keeps that text encoder frozen, and
    adds a hinge: each clip with a motion phrase is also denoised with the opposite phrase, and its
    own caption must do CONTRAST_MARGIN better. The plain loss's reward for using the words is tiny
    next to everything else it asks; the hinge makes the prediction depend on which way the words
    say, which is what classifier-free guidance amplifies at sampling time.
    """
    tokenizer, text_encoder, unet = start_with_motion_modules(args.work)
    text_encoder.requires_grad_(False)  # keeps the motion words apart, as `start` taught them
    params = [dict(params=list(unet.parameters()), lr=args.lr or 2e-4)]
    train_on_clips(args, "contrast", tokenizer, text_encoder, unet, params,
                   scheduler=shapes_model.build_scheduler(zero_snr=True), offset_noise=0.0, contrast=1.0)


def train_contrast2(args) -> None:
    """The contrast stage on, with the words' signal where it is: half of the samples at t >= 600
    (HIGH_NOISE_FROM), and the hinge only there. Below, the clip shows its own direction, so no
    prediction can be 5 % better for knowing the words, and the hinge could only be met by spoiling
    predictions under the wrong words. From pure noise the best possible prediction is 33 % better
    with the right motion words than with the opposite ones (scripts/shapes_motion_words.py); the
    contrast stage got 2 %.
    """
    tokenizer, text_encoder, unet = motion_models(args.work, "contrast")
    text_encoder.requires_grad_(False)
    params = [dict(params=list(unet.parameters()), lr=args.lr or 2e-4)]
    train_on_clips(args, "contrast2", tokenizer, text_encoder, unet, params,
                   scheduler=shapes_model.build_scheduler(zero_snr=True), offset_noise=0.0, contrast=1.0,
                   contrast_min_t=HIGH_NOISE_FROM, high_noise=0.5)


def train_contrast3(args) -> None:
    """contrast2 on, the caption contrasted with any other of the five motions, not only the opposite.

    After contrast2 the words steered, but in pairs: "left" rendered as up or left, "down" as right,
    because the hinge only ever told "left" from "right" and "up" from "down", so one feature
    (towards the top-left or the bottom-right) was enough to meet it. Here the other caption is any
    other motion, "staying still" included, drawn at random for each clip.
    """
    tokenizer, text_encoder, unet = motion_models(args.work, "contrast2")
    text_encoder.requires_grad_(False)
    params = [dict(params=list(unet.parameters()), lr=args.lr or 2e-4)]
    train_on_clips(args, "contrast3", tokenizer, text_encoder, unet, params,
                   scheduler=shapes_model.build_scheduler(zero_snr=True), offset_noise=0.0, contrast=1.0,
                   contrast_min_t=HIGH_NOISE_FROM, high_noise=0.5, contrast_with="other")


def train_contrast4(args) -> None:
    """contrast3 on, the text encoder training too (at half the UNet's rate).

    contrast3 still rendered "left" like "up" and "right" like "down": the frozen `start` text
    encoder puts those captions 0.36 apart (against 3.0 for left/right). `start` taught it where an
    object begins, and one feature (how far towards the bottom-right) says that for "left" and "up"
    alike. Now that the hinge asks every motion to differ from every other, the text encoder may
    train: it can only lower the hinge by telling the four directions apart.
    """
    tokenizer, text_encoder, unet = motion_models(args.work, "contrast3")
    lr = args.lr or 2e-4
    params = [dict(params=list(unet.parameters()), lr=lr), dict(params=list(text_encoder.parameters()), lr=lr / 2)]
    train_on_clips(args, "contrast4", tokenizer, text_encoder, unet, params,
                   scheduler=shapes_model.build_scheduler(zero_snr=True), offset_noise=0.0, contrast=1.0,
                   contrast_min_t=HIGH_NOISE_FROM, high_noise=0.5, contrast_with="other")


def write_render_defaults(target: Path, description: str) -> Path:
    """TARGET/cdvideo.yaml, so that `--model TARGET` renders as `--model shapes` does: the preset's size,
    frames and guidance; the sampler is the directory's own scheduler/, as its stage was trained."""
    from cdvideo.models import load_preset, write_model_dir_defaults

    defaults = load_preset("shapes")
    defaults.scheduler_config = {}
    defaults.description = description
    return write_model_dir_defaults(target, defaults)


def export(args) -> None:
    """Write the trained model as a diffusers directory (fp16 weights) plus motion_adapter/."""
    from cdvideo.models.tiny import save_model_dir

    vae = load_vae(args.work, "decoder")
    vae.register_to_config(scaling_factor=latent_scale(vae, args.seed))
    tokenizer, text_encoder, unet_motion = motion_models(args.work, args.motion_stage)
    unet, adapter = split_motion_unet(unet_motion)
    components = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                      scheduler=shapes_model.build_scheduler(zero_snr=args.motion_stage in ZERO_SNR_STAGES),
                      motion_adapter=adapter)
    for k in ("vae", "text_encoder", "unet", "motion_adapter"):
        components[k] = components[k].half()
    target = Path(args.to)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    save_model_dir(components, target)
    write_render_defaults(target, f"Shapes model exported from {args.work} (motion stage {args.motion_stage})")
    total = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"wrote {target} ({total / 1e6:.1f} MB)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES + ("export",))
    parser.add_argument("--work", type=Path, default=Path("runs/shapes"), help="where stage states are kept")
    parser.add_argument("--steps", type=int, default=0, help="total steps of this stage (resumes count)")
    parser.add_argument("--batch", type=int, default=0, help="images (vae, base) or clips (motion) per step")
    parser.add_argument("--lr", type=float, default=0.0)
    parser.add_argument("--minutes", type=float, default=0.0, help="stop (resumably) after this many minutes")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=shapes_model.SEED)
    parser.add_argument("--motion-stage", default="contrast4", choices=MOTION_STAGES,
                        help="export: the stage whose text encoder, UNet and motion modules ship")
    parser.add_argument("--to", default=str(shapes_model.MODEL_DIR), help="export: the model directory to write")
    args = parser.parse_args(argv)
    # The step counts the shipped weights were trained for (base and motion stopped on --minutes there).
    args.steps = args.steps or dict(vae=3000, base=4185, motion=2364, decoder=1500, start=1200, contrast=1000,
                                    contrast2=1500, contrast3=750, contrast4=1736).get(args.stage, 0)
    dict(vae=train_vae, base=train_base, motion=train_motion, decoder=train_decoder, start=train_start,
         contrast=train_contrast, contrast2=train_contrast2, contrast3=train_contrast3, contrast4=train_contrast4,
         export=export)[args.stage](args)

if __name__ == "__main__":
    main()
