"""The training loop: image folders -> ClassDiffusion tuning -> a concept file, as one linear function.

    result = train(TrainConfig(concepts=[ConceptData("data/dog", "dog")], out="dog.safetensors"))

Trained: the new tokens' embedding rows, and the spatial cross-attention to_k/to_v (plus to_q/to_out
with train="crossattn"). Everything else is frozen. Every random draw comes from one generator,
checkpointed with the optimizer, so `resume` continues exactly where a run stopped. Under
`accelerate launch` every process draws the same stream for the whole global batch (batch_size x
processes) and trains on its share, so N processes of batch b train what one process of batch N x b
trains, within float rounding (and so does gradient accumulation).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cdvideo.concept import ALLOWED_PARAM, Concept, fingerprint_unet, save_concept
from cdvideo.config import parse_backgrounds
from cdvideo.errors import ConfigError
from cdvideo.files import write_yaml_atomic
from cdvideo.train import checkpoints as ckpt
from cdvideo.train.config import TrainConfig, fill_prompt, flag_name, trained_timesteps
from cdvideo.binding import install_bound_training, take_attention_maps
from cdvideo.train.data import (EpochSampler, Example, image_captions, image_paths, load_image_folder, load_subject_masks,
                                make_batch, mask_paths, paste_subject, plain_batch, read_composites, recolour_backgrounds,
                                warn_if_few, warn_if_one_backdrop)
from cdvideo.train.losses import (attention_loss, eos_positions, masked_diffusion_loss, spl_loss, subject_latent_mask,
                                  text_features)
from cdvideo.train.scoring import (choose_scorer, diffusion_loss_at_fixed_noise, fidelity, sample_images)

LOG_COLUMNS = ["step", "loss", "diffusion", "prior", "spl", "attention", "lr", "seconds"]
LOSSES = LOG_COLUMNS[1:6]
TRAINABLE = {"kv": ("to_k", "to_v"), "crossattn": ("to_k", "to_v", "to_q", "to_out.0")}


class NewTokenEmbedding(nn.Module):
    """The text encoder's embedding table, frozen, followed by trainable rows for the new tokens.

    Only `new_rows` can receive gradient, so every other row stays bit-identical by construction,
    and the optimizer holds state for k rows instead of the whole 49,408-row table.
    """

    def __init__(self, base: nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.first_new_id = base.num_embeddings
        self.new_rows = nn.Parameter(new_rows.clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_new = input_ids >= self.first_new_id  # (b, n)
        old = self.base(input_ids.masked_fill(is_new, 0))  # (b, n, d)
        new = self.new_rows[(input_ids - self.first_new_id).clamp(min=0)]  # (b, n, d)
        return torch.where(is_new.unsqueeze(-1), new.to(old.dtype), old)


@dataclass
class TrainResult:
    concept: Path
    output_dir: Path
    step: int  # the step the concept's weights come from
    scores: dict[int, float] = field(default_factory=dict)
    video: Path | None = None
    messages: list[str] = field(default_factory=list)
    main_process: bool = True  # False in the other processes of an `accelerate launch` run, which write nothing


def trainable_param_names(unet: nn.Module, mode: str) -> list[str]:
    """Full paths of the spatial cross-attention projections `mode` trains."""
    pattern = re.compile(r"\.attn2\.(" + "|".join(re.escape(p) for p in TRAINABLE[mode]) + r")\.")
    names = [n for n, _ in unet.named_parameters() if ALLOWED_PARAM.match(n) and pattern.search(n)]
    if not names:
        raise ConfigError("the UNet has no spatial cross-attention projections to train")
    return names


@torch.no_grad()
def base_prediction(unet, text_encoder, tokenizer, tokens: list[str], prompts: list[str], noisy: torch.Tensor,
                    timesteps: torch.Tensor, device) -> torch.Tensor:
    """The base model's prediction for `prompts` with the concept tokens taken out ("a <new1> dog on a beach" ->
    "a dog on a beach"). Under a bound binding a caption without the token is the base model bit for bit: the
    trained change acts only at the token and the new embedding rows are not used."""
    plain = [" ".join(w for w in p.split() if w not in tokens) for p in prompts]
    hidden = text_encoder(_tokenize(tokenizer, plain, device))[0]
    return predict(unet, noisy, timesteps, hidden).float()


def predict(unet, noisy: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The UNet's prediction for images (b, c, h, w) or, through the motion UNet, clips (b, c, f, h, w), whose text
    states go once per frame (as AnimateDiffPipeline repeats them)."""
    if noisy.ndim == 5:
        hidden = hidden.repeat_interleave(noisy.shape[2], dim=0)
    return unet(noisy, timesteps, hidden).sample


def _tokenize(tokenizer, texts: list[str], device) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)  # (b, 77)


def train(config: TrainConfig, progress: bool = True, components: dict | None = None) -> TrainResult:
    """Run one ClassDiffusion tuning and write the concept file; see the module docstring.

    `components` (as `load_training_components` returns them) skips loading; they are trained in
    place, which lets tests and benchmarks inspect them afterwards.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from cdvideo.models import check_available, load_preset, load_training_components, resolve_device

    # 1. Check inputs: settings, image folders and the model's availability, before anything loads.
    config.check()
    preset = load_preset(config.model)
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        warnings.warn(message, stacklevel=3)

    config = dataclasses.replace(config, resolution=config.resolution or preset.height,
                                 frames=config.frames or _model_frames(preset, config, say))
    out = Path(config.out)
    output_dir = Path(config.output_dir or out.with_name(out.stem + "-train"))
    config.output_dir = str(output_dir)
    size, tokens = config.resolution, config.tokens()

    instance_images, instance_captions, instance_subjects = [], [], []
    uses_subjects = config.loss_on_subject or config.attention_loss_weight > 0 or bool(config.composites)
    scenes = read_composites(config.composites) if config.composites else []
    for concept in config.concepts:
        images = load_image_folder(concept.images)
        warn_if_few(images, concept.images)
        instance_images.append(images)
        instance_captions.append(image_captions(concept.images, config.instance_prompt))
        subjects = load_subject_masks(concept.images, images) \
            if uses_subjects or config.backgrounds or config.moving_clips else None
        if uses_subjects and subjects is None:
            raise ConfigError(f"{concept.images} has no subject masks, which --loss-on-subject, --attention-loss-weight "
                              "and --composites need: put NAME.mask.png (white = subject) beside each NAME.png")
        instance_subjects.append(subjects or [None] * len(images))
        if not config.backgrounds and not scenes:
            warn_if_one_backdrop(images, concept.images,
                                 has_masks=any(path.is_file() for path in mask_paths(concept.images)))
    # Photos in several contexts: each photo once per background colour, its caption naming it.
    check_subject_masks(config, instance_subjects)
    check_backgrounds(config, instance_captions)
    check_moving_clips(config, instance_captions)
    if config.backgrounds:
        colours = parse_backgrounds(config.backgrounds)
        for i, concept in enumerate(config.concepts):
            names = [path.name for path in image_paths(Path(concept.images))]
            instance_images[i], instance_captions[i], instance_subjects[i] = recolour_backgrounds(
                instance_images[i], instance_captions[i], instance_subjects[i], colours, names)
    heldout_images = [[] for _ in config.concepts]
    if config.keep == "best" and config.holdout:
        for i, images in enumerate(instance_images):
            if len(images) > config.holdout:
                heldout_images[i], instance_images[i] = images[-config.holdout:], images[: -config.holdout]
                instance_captions[i] = instance_captions[i][: -config.holdout]
                instance_subjects[i] = instance_subjects[i][: -config.holdout]
            else:
                say(f"{config.concepts[i].images}: too few images to hold {config.holdout} out for scoring; "
                    "checkpoints are scored on training images")
    if config.device != "auto":
        resolve_device(config.device)
    check_available(preset, base_only=not (config.validation_video or config.frames > 1))
    resume_from = None
    if config.resume:
        found = ckpt.list_checkpoints(output_dir)
        if not found:
            raise ConfigError(f"--resume: no complete checkpoint in {output_dir / 'checkpoints'}")
        resume_from = found[-1]
        from cdvideo.config import read_yaml

        ckpt.check_resumable(read_yaml(output_dir / "config.yaml"), config.to_dict(), output_dir / "config.yaml")

    # 2. Processes, devices and precision (accelerate launch shards the work across GPUs).
    # cpu=True whenever the CPU is used: accelerate joins launched processes into one gloo group only then.
    on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    if on_cpu and config.mixed_precision == "fp16":  # accelerate accepts it and then autocasts nothing
        raise ConfigError("--mixed-precision fp16 needs a CUDA GPU (on the CPU nothing would run in fp16); "
                          "use --mixed-precision bf16 or no")
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=on_cpu,
                              gradient_accumulation_steps=config.gradient_accumulation_steps)
    device, rank, processes = accelerator.device, accelerator.process_index, accelerator.num_processes
    generator = torch.Generator().manual_seed(config.seed)  # the same in every process: see _share
    if components is None:  # peak-memory estimate, one line; refused here, before loading, when it does not fit
        from cdvideo.models import locate
        from cdvideo.train.memory import check_training_memory

        estimate = check_training_memory(config, locate(preset), str(device), processes)
        if estimate and accelerator.is_main_process:
            print(estimate, flush=True)  # stdout, as for a render: stderr keeps errors to one line

    # 3. Load the 2D model and check the tokens against its vocabulary.
    parts = components or load_training_components(preset, device=str(device), dtype=torch.float32)
    unet, vae, text_encoder, tokenizer, noise_scheduler = (
        parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["noise_scheduler"])
    vocab = tokenizer.get_vocab()
    for token, concept in zip(tokens, config.concepts):
        if token in vocab:
            raise ConfigError(f"token {token} already exists in the tokenizer's vocabulary: choose another with --token")
        pieces = tokenizer.tokenize(concept.class_word)
        if len(pieces) != 1:
            say(f"class word {concept.class_word!r} is {len(pieces)} tokens ({' '.join(pieces)}), not one: "
                "SPL still works, but the class feature is less specific")
    # One initializer word per concept: "{class_word}" starts each new token from its own class word.
    init_words = [config.initializer_token.format(class_word=c.class_word) for c in config.concepts]
    init_ids = [tokenizer.encode(word, add_special_tokens=False) for word in init_words]
    for word, ids in zip(init_words, init_ids):
        if not ids:
            raise ConfigError(f"initializer_token {word!r} tokenizes to nothing")
    table = text_encoder.get_input_embeddings()
    if len(tokenizer) != table.num_embeddings:
        raise ConfigError(f"tokenizer ({len(tokenizer)}) and text encoder ({table.num_embeddings}) sizes differ")
    base_fingerprint = fingerprint_unet(unet)
    if config.frames > 1:  # video-aware: train through the motion module, which stays frozen
        unet = with_motion_module(preset, unet)
    # Loss masks live at latent resolution: SD's VAE downsamples by 8, smaller models (Shapes: 4) by less.
    latent_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    # The timesteps drawn: all of the scheduler's unless --timestep-range narrows them.
    timesteps_trained = trained_timesteps(config.timestep_range, noise_scheduler.config.num_train_timesteps)
    # Moving clips: the subject's pixels per frame (at least one) and the clip's frames.
    moving = (max(1, round(config.moving_clips * size)), config.frames) if config.moving_clips else None

    # 4. Class images for prior preservation, made by the base model before anything changes.
    class_examples: list[Example] = []
    if config.with_prior_preservation:
        for i, concept in enumerate(config.concepts):
            folder = Path(concept.class_images or output_dir / "class_images" / f"{i + 1}-{concept.class_word}")
            have = sorted(folder.glob("*.png")) if folder.is_dir() else []
            if not concept.class_images and len(have) < config.num_class_images and accelerator.is_main_process:
                samples = sample_images(parts, f"a photo of a {concept.class_word}", size, preset.steps,
                                        count=config.num_class_images - len(have))
                from PIL import Image

                folder.mkdir(parents=True, exist_ok=True)
                for j, sample in enumerate(samples, start=len(have)):
                    Image.fromarray(sample).save(folder / f"{j:04d}.png")
            accelerator.wait_for_everyone()
            class_examples += [Example(im, f"a photo of a {concept.class_word}", i)
                               for im in load_image_folder(folder, "class images")]

    # 4b. Composite scenes, rendered by the base model before anything changes. Cached in the training folder
    # under a name that says what was rendered, so an edited scenes file never reuses a stale image.
    from PIL import Image

    scene_images = []
    for j, (scene, _) in enumerate(scenes):
        key = hashlib.sha256(f"{preset.name}|{scene}|{size}|{preset.steps}|{config.seed + j}".encode()).hexdigest()[:12]
        path = output_dir / "composites" / f"{j:04d}-{key}.png"
        if not path.is_file() and accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            image = sample_images(parts, scene, size, preset.steps, count=1, guidance_scale=preset.guidance_scale,
                                  negative_prompt=preset.negative_prompt, seed=config.seed + j)[0]
            Image.fromarray(image).save(path)
        accelerator.wait_for_everyone()
        with Image.open(path) as image:
            scene_images.append(image.convert("RGB"))

    # 5. Add the new tokens (initialised from the rare token) and choose what trains.
    tokenizer.add_tokens(tokens)
    # A multi-piece initializer: the mean of its pieces.
    init_rows = torch.stack([table.weight.detach()[ids].mean(dim=0) for ids in init_ids])
    embedding = NewTokenEmbedding(table, init_rows)  # (k, d)
    text_encoder.set_input_embeddings(embedding)
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
    embedding.new_rows.requires_grad_(config.train_token)
    names = trainable_param_names(unet, config.train)
    if config.binding in ("values", "locked", "locked+class"):  # the key stays the base model's (or the class word's)
        names = [n for n in names if ".to_v." in n]
    unbind = None
    if config.binding != "merged":  # the change acts only at the new tokens' positions (cdvideo.binding)
        unbind = install_bound_training(unet, text_encoder, tokenizer, tokens,
                                        [c.class_word for c in config.concepts], config.binding,
                                        record_attention=config.attention_loss_weight > 0)
    else:  # merged: the start token's key and value pass no gradient, as in Custom Diffusion's training
        unbind = stop_start_token_gradient(unet, names)
    params = dict(unet.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    base_weights = {name: params[name].detach().clone() for name in names}
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        text_encoder.gradient_checkpointing_enable()
    unet.train()
    text_encoder.train()
    if config.mixed_precision != "no":  # frozen parts in half precision; trained ones stay float32
        vae.to(torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16)

    # 6. Optimizer: AdamW, learning rate scaled by the effective batch.
    learning_rate = config.learning_rate
    if config.scale_lr:
        learning_rate *= config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
        if config.with_prior_preservation:  # the recipe counts the class images in the batch too
            learning_rate *= 2
    optimizer = torch.optim.AdamW(
        [embedding.new_rows] * config.train_token + [params[n] for n in names], lr=learning_rate,
        betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
    )
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)

    # 7. Data, the fixed SPL class features, and the scorer.
    examples = [Example(im, fill_prompt(caption, tokens[i], c.class_word), i, subject)
                for i, (c, images) in enumerate(zip(config.concepts, instance_images))
                for im, caption, subject in zip(images, instance_captions[i], instance_subjects[i])]
    for j, ((_, caption), scene) in enumerate(zip(scenes, scene_images)):  # each scene: the concepts and images in turn
        i = j % len(config.concepts)
        k = (j // len(config.concepts)) % len(instance_images[i])
        composite, subject = paste_subject(scene, instance_images[i][k], instance_subjects[i][k])
        examples.append(Example(composite, fill_prompt(caption, tokens[i], config.concepts[i].class_word), i, subject))
    sampler = EpochSampler(len(examples), generator)
    class_sampler = EpochSampler(len(class_examples), generator) if class_examples else None
    eos_id = tokenizer.eos_token_id
    token_phrase_ids = _tokenize(tokenizer, [fill_prompt(config.spl_prompt, t, c.class_word) for t, c in zip(tokens, config.concepts)], device)
    with torch.no_grad():
        class_ids = _tokenize(tokenizer, [fill_prompt(config.spl_prompt, None, c.class_word) for c in config.concepts], device)
        class_features = text_features(text_encoder, class_ids, eos_id, config.spl_pooling)  # (k, d)
    has_heldout = any(heldout_images)
    scorer, note = choose_scorer(config.score, str(device), has_heldout) if config.keep == "best" else (None, None)
    if note:
        say(note)
    if has_heldout:
        scored = [(im, fill_prompt(config.instance_prompt, tokens[i], config.concepts[i].class_word))
                  for i, group in enumerate(heldout_images) for im in group]
    else:  # the training photos with their own captions
        scored = [(im, fill_prompt(caption, tokens[i], config.concepts[i].class_word))
                  for i, group in enumerate(instance_images) for im, caption in zip(group, instance_captions[i])]
    score_batch = plain_batch([im for im, _ in scored], [prompt for _, prompt in scored], size, latent_factor)
    references = [np.asarray(im) for group in instance_images for im in group]  # for CLIP-I / DINO-I
    validation_prompt = config.validation_prompt or " and ".join(f"a {t} {c.class_word}" for t, c in zip(tokens, config.concepts))

    # 8. Resume: weights, optimizer, RNG and sampler exactly as they were saved.
    step = 0
    if resume_from is not None:
        trained, rows = ckpt.load_trainable(resume_from)
        with torch.no_grad():
            for name in names:
                params[name].copy_(trained[name])
            embedding.new_rows.copy_(rows)
        optimizer_state = ckpt.load_optimizer_state(resume_from)
        optimizer.load_state_dict(optimizer_state["optimizer"])
        if accelerator.scaler is not None and "scaler" in optimizer_state:
            accelerator.scaler.load_state_dict(optimizer_state["scaler"])
        rng = ckpt.load_rng(resume_from, rank)
        generator.set_state(rng["generator"])
        sampler.load_state_dict({"order": rng["order"], "cursor": rng["cursor"]})
        if class_sampler is not None:
            class_sampler.load_state_dict({"order": rng["class_order"], "cursor": rng["class_cursor"]})
        step = ckpt.read_state(resume_from)["step"]
    scores = {ckpt.read_state(c)["step"]: ckpt.read_state(c)["score"] for c in ckpt.list_checkpoints(output_dir)
              if resume_from is not None and ckpt.read_state(c)["score"] is not None}

    # 9. The resolved config and the loss log beside the outputs.
    log_path = output_dir / "loss.csv"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_yaml_atomic(config.to_dict(), output_dir / "config.yaml")
        rows_kept = _read_log(log_path, up_to=step) if resume_from is not None else []
        with open(log_path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(LOG_COLUMNS)
            writer.writerows(rows_kept)

    # 10. Train.
    bar = tqdm(total=config.steps, initial=step, desc="training", disable=not (progress and accelerator.is_main_process))
    started = time.perf_counter()
    while step < config.steps:
        step_started = time.perf_counter()
        totals = dict.fromkeys(LOSSES, 0.0)
        # The whole effective batch (batch x processes x accumulation) and its random draws, the same in
        # every process; each micro-batch of each process trains its rows of it (_share).
        n, blocks = config.batch_size, processes * config.gradient_accumulation_steps
        batch = make_batch(examples, sampler.next_indices(n * blocks), size, generator, config.augment, config.hflip,
                           latent_factor, moving)
        all_pixels, all_prompts = batch["pixels"], batch["prompts"]
        if class_sampler is not None:
            chosen = [class_examples[i] for i in class_sampler.next_indices(n * blocks)]
            prior = plain_batch([e.image for e in chosen], [e.prompt for e in chosen], size, latent_factor)
            all_pixels, all_prompts = torch.cat([all_pixels, prior["pixels"]]), all_prompts + prior["prompts"]
        shape = (len(all_prompts), vae.config.latent_channels, size // latent_factor, size // latent_factor)
        # The VAE posterior's sample (one per frame of a moving clip, whose frames differ).
        all_draws = torch.randn(shape if moving is None else (shape[0], config.frames, *shape[1:]), generator=generator,
                                dtype=vae.dtype)
        # Video-aware training: noise per frame of the still clip (b, c, frames, h, w).
        all_noise = torch.randn(shape if config.frames == 1 else (*shape[:2], config.frames, *shape[2:]), generator=generator)
        all_timesteps = torch.randint(*timesteps_trained, shape[:1], generator=generator)
        for micro in range(config.gradient_accumulation_steps):
            with accelerator.accumulate(unet, text_encoder):
                mine = _share(micro * processes + rank, n, blocks, with_prior=class_sampler is not None)
                prompts, masks = [all_prompts[i] for i in mine], batch["masks"][mine[:n]]
                # Encode, noise, predict: the standard epsilon/v-prediction training step.
                with torch.no_grad():
                    pixels = all_pixels[mine].to(device, vae.dtype)
                    if moving is not None:  # a moving clip (b, 3, frames, s, s): every frame encoded
                        pixels = pixels.transpose(1, 2).flatten(0, 1)
                    posterior = vae.encode(pixels).latent_dist
                    latents = posterior.mean + posterior.std * all_draws[mine].to(device).reshape(posterior.mean.shape)
                    latents = latents.float() * vae.config.scaling_factor  # (b, 4, s/8, s/8), or (b * frames, ...)
                    if moving is not None:  # (b, 4, frames, s/8, s/8)
                        latents = latents.unflatten(0, (-1, config.frames)).transpose(1, 2)
                    elif config.frames > 1:  # the photo as a still clip: (b, 4, frames, s/8, s/8)
                        latents = latents.unsqueeze(2).expand(-1, -1, config.frames, -1, -1)
                noise, timesteps = all_noise[mine].to(device), all_timesteps[mine].to(device)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                # One text-encoder pass for the prompts and the SPL phrases (DDP allows one forward per step).
                with_spl = config.spl_weight > 0 and config.train_token  # SPL moves only the token
                ids = _tokenize(tokenizer, prompts, device)
                ids = torch.cat([ids, token_phrase_ids]) if with_spl else ids  # (b + k, 77)
                hidden = text_encoder(ids)[0]  # (b + k, 77, d)
                if config.loss_on_subject and config.background_target == "base":  # before the maps are cleared
                    base = base_prediction(accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder),
                                           tokenizer, tokens, prompts[:n], noisy[:n], timesteps[:n], device)
                if config.attention_loss_weight > 0:  # forget maps a checkpointed backward recorded again
                    take_attention_maps(accelerator.unwrap_model(unet))
                prediction = predict(unet, noisy, timesteps, hidden[: len(prompts)])
                target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
                    noise_scheduler.get_velocity(latents, noise, timesteps)
                loss_mask, instance_target = masks, target[:n]
                if config.loss_on_subject:  # Break-A-Scene's masked loss: the background is the base model's job
                    subject = subject_latent_mask(batch["subjects"][mine[:n]], loss_mask.shape[-1]).to(device)
                    loss_mask = loss_mask.to(device) * (subject + config.background_loss_weight * (1 - subject))
                    if config.background_target == "base":  # the background compared with the base model's prediction
                        subject = per_frame(subject, base)
                        instance_target = subject * instance_target + (1 - subject) * base  # a 0/1 mask: one target a pixel
                diffusion = masked_diffusion_loss(prediction[:n], instance_target, per_frame(loss_mask.to(device), prediction))
                attention = attention_loss(take_attention_maps(accelerator.unwrap_model(unet)),
                                           batch["subjects"][mine[:n]], [batch["concepts"][i] for i in mine[:n]]) \
                    if config.attention_loss_weight > 0 else torch.zeros((), device=device)
                # The recipe's prior term is a plain per-value mean (no mask, no channel sum).
                prior_loss = F.mse_loss(prediction[n:].float(), target[n:].float()) \
                    if class_sampler is not None else torch.zeros((), device=device)
                if with_spl:
                    positions = eos_positions(token_phrase_ids, eos_id, config.spl_pooling)
                    token_features = hidden[len(prompts):][torch.arange(len(tokens)), positions]  # (k, d)
                else:  # the baseline: SPL only logged, at no backward cost
                    with torch.no_grad():
                        token_features = text_features(accelerator.unwrap_model(text_encoder), token_phrase_ids,
                                                       eos_id, config.spl_pooling)
                spl = spl_loss(token_features, class_features)
                loss = (diffusion + config.prior_loss_weight * prior_loss + config.spl_weight * spl
                        + config.attention_loss_weight * attention)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in zip(LOSSES, (loss, diffusion, prior_loss, spl, attention)):
                totals[key] += float(value.detach()) / config.gradient_accumulation_steps
        if processes > 1:  # the global batch's losses, as one process would log them
            means = accelerator.reduce(torch.tensor([totals[k] for k in LOSSES], device=device), "mean")
            totals = dict(zip(LOSSES, means.tolist()))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{totals['loss']:.4f}", spl=f"{totals['spl']:.4f}")
        if not all(math.isfinite(v) for v in totals.values()):
            raise ConfigError(f"the loss became {totals['loss']} at step {step}: lower --learning-rate "
                              "or use --mixed-precision no")
        if accelerator.is_main_process:
            with open(log_path, "a", newline="") as handle:
                csv.writer(handle).writerow([step] + [f"{totals[k]:.9g}" for k in LOSSES]
                                            + [f"{learning_rate:.3g}", f"{time.perf_counter() - step_started:.4f}"])

        # Checkpoint (and score) every checkpoint_every steps and at the end.
        if step % config.checkpoint_every == 0 or step == config.steps:
            accelerator.wait_for_everyone()
            score = None
            model = accelerator.unwrap_model(unet)
            encoder = accelerator.unwrap_model(text_encoder)
            if scorer is not None and accelerator.is_main_process:
                score = _score(scorer, dict(parts, unet=model, text_encoder=encoder), score_batch, validation_prompt,
                               references, size, preset.steps, str(device), output_dir / "samples" / f"step-{step:06d}")
                scores[step] = score
            rng = {"generator": generator.get_state(), **sampler.state_dict()}
            if class_sampler is not None:
                state = class_sampler.state_dict()
                rng.update(class_order=state["order"], class_cursor=state["cursor"])
            optimizer_state = {"optimizer": optimizer.state_dict()}
            if accelerator.scaler is not None:
                optimizer_state["scaler"] = accelerator.scaler.state_dict()
            model_params = dict(model.named_parameters())
            ckpt.save_checkpoint(
                ckpt.checkpoint_dir(output_dir, step), step=step, trainable={n: model_params[n] for n in names},
                token_rows=encoder.get_input_embeddings().new_rows, optimizer_state=optimizer_state,
                is_main=accelerator.is_main_process, rank=rank, rng=rng, score=score,
                score_name=scorer.name if scorer else "")
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                ckpt.prune_checkpoints(output_dir, config.keep, _best(output_dir, scores, scorer))
    bar.close()
    train_seconds = time.perf_counter() - started
    if unbind is not None:
        unbind()

    # 11. The concept file: the best checkpoint's weights (keep: best) or the final ones, as deltas.
    result = TrainResult(concept=out, output_dir=output_dir, step=step, scores=scores, messages=messages,
                         main_process=accelerator.is_main_process)
    if not accelerator.is_main_process:
        return result
    best = _best(output_dir, scores, scorer) if config.keep == "best" else None
    chosen = best or ckpt.checkpoint_dir(output_dir, step)
    trained, rows = ckpt.load_trainable(chosen)
    result.step = ckpt.read_state(chosen)["step"]
    concept = Concept(
        tokens={token: rows[i : i + 1].clone() for i, token in enumerate(tokens)},  # (1, d) each
        class_words={token: c.class_word for token, c in zip(tokens, config.concepts)},
        deltas={name: trained[name] - base_weights[name].float().cpu() for name in names},
        base_model=preset.base,
        base_fingerprint=base_fingerprint,
        method="classdiffusion" if config.spl_weight > 0 else "custom_diffusion",
        training={
            "steps": result.step, "learning_rate": learning_rate, "batch_size": config.batch_size,
            "processes": accelerator.num_processes, "spl_weight": config.spl_weight,
            "spl_pooling": config.spl_pooling, "train": config.train, "binding": config.binding, "train_token": config.train_token,
            "frames": config.frames, "resolution": size, "seed": config.seed,
            "images": [len(g) for g in instance_images], "backgrounds": config.backgrounds, "moving_clips": config.moving_clips,
            "timestep_range": config.timestep_range, "prior_preservation": config.with_prior_preservation,
            "score": {"name": scorer.name, "value": scores.get(result.step)} if scorer else None,
            "train_seconds": round(train_seconds, 2),
        },
    )
    save_concept(concept, out)

    # 12. A short validation video with the motion module, from the concept file just written.
    if config.validation_video:
        del unet, text_encoder, vae, parts, optimizer
        from cdvideo.config import ConceptSpec, RenderSettings
        from cdvideo.render import render_to_file

        settings = RenderSettings(prompt=validation_prompt, model=config.model, seed=config.seed,
                                  concepts=[ConceptSpec(str(out))], device=config.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the render's own prompt hints do not concern training
            result.video = render_to_file(settings, output_dir / "samples" / "validation.mp4", progress=progress).video
    return result


# The options that paint or move the subject (cut out by its mask): the caption placeholder each fills, and the value
# that turns it off.
SUBJECT_OPTIONS = {"backgrounds": ("{background}", "''"), "moving_clips": ("{motion}", "0")}


def check_subject_masks(config: TrainConfig, subjects: list[list]) -> None:
    """--backgrounds and --moving-clips cut the subject out by its mask: photos without masks get one error naming
    every such option that is on, and how to turn off those the model's training defaults set."""
    on = [name for name in SUBJECT_OPTIONS if getattr(config, name)]
    if not on or all(s is not None for group in subjects for s in group):
        return
    defaults = [name for name in on if name in config.from_model]
    placeholders = [SUBJECT_OPTIONS[n][0] for n in defaults if SUBJECT_OPTIONS[n][0] in config.instance_prompt]
    caption = (f" and an --instance-prompt without {' '.join(placeholders)}"
               if placeholders and "instance_prompt" in config.from_model else "")
    offs = " ".join(f"{flag_name(n)} {SUBJECT_OPTIONS[n][1]}" for n in defaults)
    raise ConfigError(f"{' and '.join(map(flag_name, on))} need{'s' if len(on) == 1 else ''} subject masks: put "
                      f"NAME.mask.png (white = subject) beside each NAME.png"
                      + config.model_default(defaults, f"pass {offs}{caption} to train without"))


def check_backgrounds(config: TrainConfig, captions: list[list[str]]) -> None:
    """--backgrounds needs captions that name {background}; {background} needs --backgrounds."""
    if _check_named_option(config, "backgrounds", "'NAME=#RRGGBB, ...'",
                           "'a {token} {class_word} on a {background} background'", captions) and config.keep == "best":
        raise ConfigError("--backgrounds needs --keep last or all (best scores checkpoints on the photos as given)")


def check_moving_clips(config: TrainConfig, captions: list[list[str]]) -> None:
    """--moving-clips needs clips to move and captions that name {motion}; {motion} needs it."""
    if _check_named_option(config, "moving_clips", "0.0625",
                           "'a {token} {class_word} {motion} on a black background'", captions) and config.frames < 2:
        raise ConfigError("--moving-clips moves the subject over a clip, and this model trains single images: "
                          "pass --frames 8 (or another count above 1)")


def _check_named_option(config: TrainConfig, name: str, usage: str, caption: str, captions: list[list[str]]) -> bool:
    """An option of SUBJECT_OPTIONS (setting `name`, given as --NAME USAGE): on, every caption names its placeholder;
    off, none does. An error caused by a model's training default says so. Returns whether the option is on. (Its
    masks: check_subject_masks.)"""
    placeholder, off = SUBJECT_OPTIONS[name]
    option = flag_name(name)
    named = [placeholder in c for group in captions for c in group]
    if not getattr(config, name):
        if any(named):
            raise ConfigError(f"a caption names {placeholder}, which only {option} fills: pass {option} {usage} or "
                              f"write it into the caption" + config.model_default(
                                  "instance_prompt", f"pass an --instance-prompt without {placeholder}"))
        return False
    if not all(named):
        raise ConfigError(f"{option} needs captions that name {placeholder}, e.g. --instance-prompt {caption}"
                          + config.model_default(name, f"pass {option} {off} to train without it"))
    return True


def _model_frames(preset, config: TrainConfig, say) -> int:
    """The frames a run without --frames trains with: the model preset's `train_frames`, unless an option that needs
    single images is on (then single images, said once)."""
    frames = max(preset.train_frames, 1)
    if frames > 1 and (config.attention_loss_weight > 0 or config.keep == "best"):
        option = "--attention-loss-weight" if config.attention_loss_weight > 0 else "--keep best"
        say(f"the model trains on still clips of {frames} frames by default; {option} needs single images, so this "
            "run trains on single images (--frames 1)")
        return 1
    return frames


def with_motion_module(preset, unet: nn.Module) -> nn.Module:
    """The motion UNet a render uses (the preset's motion adapter around `unet`'s own tensors), frozen: video-aware
    training denoises still clips through it, so the trained change is learned in the features renders see."""
    from cdvideo.models import load_motion_adapter, locate, motion_unet

    adapter = load_motion_adapter(locate(preset).adapter, dtype=unet.dtype)
    return motion_unet(unet, adapter).requires_grad_(False).to(unet.device)


def per_frame(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-image mask (b, 1, h, w) for `like`: the same, or over every frame of a clip (b, 1, f, h, w)."""
    return mask if like.ndim == mask.ndim else mask.unsqueeze(2).expand(-1, -1, like.shape[2], -1, -1)


def stop_start_token_gradient(unet: nn.Module, names: list[str]):
    """Custom Diffusion's detach (diffusers' CustomDiffusionAttnProcessor, which ClassDiffusion's code trains
    with): the trained to_k / to_v outputs at the start-of-text position pass no gradient, so training never
    tunes what every prompt's first token (where most attention lands) contributes. The forward values are
    unchanged to the bit. Returns the function that removes the hooks."""

    def hook(module, args, output):  # (b, n, d): position 0 is the start token
        return torch.cat([output[:, :1].detach(), output[:, 1:]], dim=1)

    modules = sorted({n.rsplit(".", 1)[0] for n in names if re.search(r"\.attn2\.to_[kv]\.", n)})
    handles = [unet.get_submodule(m).register_forward_hook(hook) for m in modules]
    return lambda: [h.remove() for h in handles]


def _share(block: int, batch_size: int, blocks: int, with_prior: bool) -> list[int]:
    """Rows of the effective batch that one micro-batch of one process trains: its instance images, then its
    class images.

    The effective batch holds batch_size x blocks instance images (blocks = processes x accumulation steps;
    then as many class images with prior preservation); every process draws all of it from the same
    generator and keeps its share, so the random stream, and the result, do not depend on how the work is
    split: two processes, or accumulation, train what one bigger batch trains.
    """
    own = list(range(block * batch_size, (block + 1) * batch_size))
    return own + [batch_size * blocks + i for i in own] if with_prior else own


def _score(scorer, components: dict, batch: dict, prompt: str, references: list, size: int, steps: int,
           device: str, samples_dir: Path) -> float:
    """One checkpoint's score; validation samples are saved under samples/ when they are made."""
    if scorer.name in ("clip_i", "dino_i"):
        from PIL import Image

        samples = sample_images(components, prompt, size, steps)
        samples_dir.mkdir(parents=True, exist_ok=True)
        for i, sample in enumerate(samples):
            Image.fromarray(sample).save(samples_dir / f"{i}.png")
        return fidelity(scorer, samples, references, device)
    return diffusion_loss_at_fixed_noise(components["unet"], components["vae"], components["text_encoder"],
                                         components["tokenizer"], components["noise_scheduler"], batch, device)


def _best(output_dir: Path, scores: dict[int, float], scorer) -> Path | None:
    present = {s: v for s, v in scores.items() if ckpt.checkpoint_dir(output_dir, s).is_dir() and v is not None}
    if scorer is None or not present:
        return None
    pick = max if scorer.higher_is_better else min
    return ckpt.checkpoint_dir(output_dir, pick(present, key=present.get))


def _read_log(path: Path, up_to: int) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return [row for row in rows if row and int(row[0]) <= up_to]
