"""Peak-memory estimate of one training run, printed before the first step, and a refusal naming what would fit.

    estimate_training_bytes(counts, "cpu", resolution=512, rows=2, trained=19_169_280)

The estimate is the frozen weights (parameters counted as cdvideo.memory counts them for a render: from
local configs or safetensors headers, nothing loaded), the trained values' gradient and AdamW moments,
and the activations of one micro-batch, which scale with rows x pixels: the UNet's forward kept for
the backward pass (much less with gradient checkpointing). Rows are batch_size images, twice that with prior preservation; gradient
accumulation does not add rows. The constants are fitted to peak RSS measured at real size on the CPU
(scripts/bench_train.py, docs/training.md); CUDA figures use the same constants scaled by the dtype
and are not measured (no GPU was lent when they were fitted).
"""

from __future__ import annotations

import dataclasses

from cdvideo.memory import (CALIBRATED_VAE_FACTOR, CUDA_OVERHEAD_BYTES, PROCESS_OVERHEAD_BYTES, NotEnoughMemoryError,
                            available_bytes, gib, parameter_counts)

# Per trained float32 value: its gradient and AdamW's two moments.
TRAINED_STATE_BYTES = 3 * 4
# Bytes per image row per pixel of the training image (at SD's VAE factor 8), float32: least-squares fits to
# peak RSS at real size on the CPU, 1 / 2 / 4 rows at 128 px, 1 / 2 rows at 256 px, 1 row at 512 px, and
# with checkpointing 2 rows at 128 / 256 px and 1 at 512 px (every point within 3 %; docs/training.md).
# The VAE's encoding (no gradient) stays below the UNet's term at every size measured.
UNET_TRAIN_BYTES_PER_PIXEL = 4 * 2085.0
UNET_CHECKPOINTED_BYTES_PER_PIXEL = 4 * 1046.0
# Still clips (--frames > 1) also keep the frozen motion modules' forward for the backward pass (the gradient
# reaches the trained attn2 values through them): per frame row per pixel, fitted to peak RSS at real size on the
# CPU, 2 photos x 8 frames at 128 px, two runs (10328 and 10384 MiB; docs/training.md). One size measured; with
# checkpointing it is scaled as the UNet's term is (not measured).
MOTION_TRAIN_BYTES_PER_PIXEL = 4 * 1831.0
TRAINED_SHARE = {"kv": 0.0223, "crossattn": 0.0512}  # of the UNet's values (SD 1.5: 19.2 M / 859.5 M for kv)


def estimate_training_bytes(counts: dict[str, int], device: str, resolution: int, rows: int, trained: int,
                            gradient_checkpointing: bool = False, mixed_precision: str = "no",
                            vae_factor: int = CALIBRATED_VAE_FACTOR) -> int:
    """Estimated peak memory of a training step: RSS on the CPU, allocated memory on CUDA.

    counts: parameters per component ("motion_adapter" only when training loads it: frames > 1); rows: images in
    one micro-batch (`training_rows`); trained: trained values.
    """
    half = mixed_precision in ("fp16", "bf16")
    cuda = str(device).startswith("cuda")
    weights = 4 * (counts["unet"] + counts["text_encoder"] + counts.get("motion_adapter", 0)) + (2 if half else 4) * counts["vae"]
    state = TRAINED_STATE_BYTES * trained
    pixels = resolution * resolution * (CALIBRATED_VAE_FACTOR / vae_factor) ** 2
    scale = 0.5 if half else 1.0  # autocast keeps activations in 16 bits (not measured)
    per_pixel = UNET_CHECKPOINTED_BYTES_PER_PIXEL if gradient_checkpointing else UNET_TRAIN_BYTES_PER_PIXEL
    if "motion_adapter" in counts:  # training through the motion modules: their activations too
        per_pixel += MOTION_TRAIN_BYTES_PER_PIXEL * per_pixel / UNET_TRAIN_BYTES_PER_PIXEL
    activations = per_pixel * scale * rows * pixels
    overhead = CUDA_OVERHEAD_BYTES if cuda else PROCESS_OVERHEAD_BYTES
    return int(weights + state + activations + overhead)


def training_rows(config) -> int:
    """Images in one micro-batch: batch_size, x2 with prior preservation, x frames for still clips (each frame a
    row of the UNet; the motion modules' own activations are estimate_training_bytes' motion term)."""
    return config.batch_size * (2 if config.with_prior_preservation else 1) * max(config.frames, 1)


def estimate_for_config(config, counts: dict[str, int], device: str, vae_factor: int = CALIBRATED_VAE_FACTOR) -> int:
    """estimate_training_bytes for one process of a TrainConfig (its resolution already resolved)."""
    rows = training_rows(config)
    if config.frames <= 1:  # the motion adapter is loaded only to train through it
        counts = {k: v for k, v in counts.items() if k != "motion_adapter"}
    return estimate_training_bytes(counts, device, config.resolution, rows, int(TRAINED_SHARE[config.train] * counts["unet"]),
                                   config.gradient_checkpointing, config.mixed_precision, vae_factor)


def check_training_memory(config, files, device: str, processes: int = 1) -> str | None:
    """One line with the estimate; raises NotEnoughMemoryError naming the options that would fit when it exceeds
    free memory. None when the model's sizes are not known locally. Processes on the CPU share its RAM; on
    CUDA each has its own GPU."""
    counts = parameter_counts(files)
    if counts is None:
        return None
    rows = training_rows(config)

    cuda = str(device).startswith("cuda")
    sharing = 1 if cuda else processes

    def estimate(settings) -> int:
        return sharing * estimate_for_config(settings, counts, device, files.vae_factor)

    needed = estimate(config)
    free = available_bytes(device)
    where = "GPU memory" if cuda else "RAM"
    line = (f"peak memory estimate: {gib(needed)} on {device} for {rows} image(s) of {config.resolution} px per step"
            + (f" in each of {processes} processes" if processes > 1 else "")
            + (f" ({gib(free)} {where} free)" if free is not None else ""))
    if free is None or needed <= free:
        return line
    # What would fit, cheapest first: each step keeps the ones before it.
    steps = [("--gradient-checkpointing", dict(gradient_checkpointing=True))]
    if config.batch_size > 1:
        steps.append((f"--batch-size 1 --gradient-accumulation-steps "
                      f"{config.batch_size * config.gradient_accumulation_steps} (the same effective batch)",
                      dict(batch_size=1, gradient_accumulation_steps=config.batch_size * config.gradient_accumulation_steps)))
    if config.mixed_precision == "no":
        steps.append(("--mixed-precision " + ("fp16" if cuda else "bf16"),
                      dict(mixed_precision="fp16" if cuda else "bf16")))
    settings, names = config, []
    for name, change in steps:
        if all(getattr(settings, k) == v for k, v in change.items()):
            continue
        settings = dataclasses.replace(settings, **change)
        names.append(name)
        if estimate(settings) <= free:
            hint = f"add {' and '.join(names)} (estimate {gib(estimate(settings))}, fits)"
            break
    else:
        hint = (f"even with {' and '.join(names) or 'every memory option'} it needs {gib(estimate(settings))}: "
                "lower --resolution" + (" or use a GPU" if not cuda else ""))
    raise NotEnoughMemoryError(f"not enough memory: training needs about {gib(needed)} but only {gib(free)} {where} "
                               f"is free; {hint}")
