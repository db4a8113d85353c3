"""Peak-memory estimate of one render, printed before it starts, and `--low-vram` for one render.

    estimate_peak_bytes(preset, "cpu", torch.float32, 512, 512, 16, low_vram=False)

The estimate is weight bytes (parameters counted from the component config.json files by building
the models on the meta device: nothing is loaded) plus an activation term that scales with
frames x height x width, for the UNet (CFG batch of 2; latent pixels, so a VAE that downsamples
by 4 rather than SD's 8 counts 4x) and for the VAE decode (diffusers decodes
16 frames at a time; `--low-vram` slices it to one). The constants are calibrated from peak RSS
measured at real size on a CPU and, for the UNet term, on CUDA (docs/performance.md); GPU figures
use the same constants scaled by the dtype (on an H200, fp16, 512x512x16 to 768x768x16: 0.94-1.00
of the measured peak, 1.01-1.06 with --low-vram). `--low-vram` on CUDA also offloads models to the
CPU between uses, so only the largest model's weights count there.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Iterator

from cdvideo.errors import ConfigError
from cdvideo.hub import local_file
from cdvideo.models.sources import ModelFiles, adapter_location

# Calibrated on CPU, float32, SD 1.5 + AnimateDiff v2 at real size (docs/performance.md).
PROCESS_OVERHEAD_BYTES = 450 * 2**20  # python, torch, diffusers and the allocator's slack (CPU only)
# per float32 element: x (frames x H x W) x CFG batch, at SD's VAE factor. Fitted to CUDA max allocated
# under --low-vram, where the UNet sets the peak (H200, fp16: 512x512x16/32, 768x768x16). Without
# --low-vram the VAE decode sets the peak at every size measured, CPU or CUDA; the CPU's --low-vram
# row (128x128x8) moved from 6167 to 6225 MiB estimated against 6211 measured.
UNET_BYTES_PER_PIXEL_FRAME = 4 * 120.0
CALIBRATED_VAE_FACTOR = 8  # the UNet term follows latent pixels: (8 / factor)^2 more of them per frame pixel
VAE_BYTES_PER_PIXEL_FRAME = 4 * 1000.0  # per float32 element: x (decode chunk x H x W)
VAE_DECODE_CHUNK = 16  # diffusers' AnimateDiff decode_chunk_size
CUDA_OVERHEAD_BYTES = 512 * 2**20  # CUDA context and allocator slack (a guess; the total checked once, docs/performance.md)
COMPONENTS = ("unet", "motion_adapter", "vae", "text_encoder")


class NotEnoughMemoryError(ConfigError):
    """A render's estimated peak memory exceeds what is free."""


def _config(source: str, subfolder: str) -> dict | None:
    if subfolder == "motion_adapter":
        location, sub = adapter_location(source)
        path = local_file(location, f"{sub}/config.json" if sub else "config.json")
    else:
        path = local_file(source, f"{subfolder}/config.json")
    return json.loads(path.read_text()) if path is not None else None


@functools.lru_cache(maxsize=16)
def _count(kind: str, config_json: str) -> int:
    """Parameters of one component, built on the meta device from its config (no weights, no memory)."""
    import torch

    config = json.loads(config_json)
    with torch.device("meta"):
        if kind == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModel

            model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")}))
        else:
            import diffusers

            cls = {"unet": diffusers.UNet2DConditionModel, "motion_adapter": diffusers.MotionAdapter,
                   "vae": diffusers.AutoencoderKL}[kind]
            model = cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


def parameter_counts(files: ModelFiles) -> dict[str, int] | None:
    """Parameters per component from local config.json files; None when a config is not local (hub, single file)."""
    counts = {}
    for kind in COMPONENTS:
        source = files.adapter if kind == "motion_adapter" else files.configs
        from_header = _count_from_header(source, kind)
        if from_header is not None:
            counts[kind] = from_header
            continue
        config = _config(source, kind)
        if config is None:
            return None
        counts[kind] = _count(kind, json.dumps(config, sort_keys=True))
    return counts


def _count_from_header(source: str, kind: str) -> int | None:
    """Values stored in a component's local safetensors file, read from its header alone (milliseconds,
    where building even a meta model takes seconds at SD size); None when there is no such file."""
    from safetensors import safe_open

    location, sub = adapter_location(source) if kind == "motion_adapter" else (source, kind)
    name = "model.safetensors" if kind == "text_encoder" else "diffusion_pytorch_model.safetensors"
    path = local_file(location, f"{sub}/{name}" if sub else name)
    if path is None:
        return None
    total = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            count = 1
            for dim in handle.get_slice(key).get_shape():
                count *= dim
            total += count
    return total


def _dtype_bytes(dtype) -> int:
    import torch

    if isinstance(dtype, str):
        dtype = torch.float32 if dtype in ("auto", "float32") else getattr(torch, dtype)
    return torch.tensor([], dtype=dtype).element_size()


def estimate_peak_bytes(counts: dict[str, int], device: str, dtype, height: int, width: int, num_frames: int,
                        low_vram: bool = False, context_length: int | None = None,
                        vae_factor: int = CALIBRATED_VAE_FACTOR) -> int:
    """Estimated peak memory of one render: RSS on the CPU, allocated memory on CUDA.

    `counts`: parameters per component (`parameter_counts`). Windows (`context_length`) bound the
    frames the UNet sees at once. `vae_factor`: frame pixels per latent pixel along a side.
    """
    element = _dtype_bytes(dtype)
    scale = element / 4
    cuda = str(device).startswith("cuda")
    weights = {k: n * element for k, n in counts.items()}
    if cuda and low_vram:  # model CPU offload: one model on the GPU at a time
        weight_bytes = max(weights["unet"] + weights["motion_adapter"], weights["vae"], weights["text_encoder"])
    else:
        weight_bytes = sum(weights.values())
    pixels = height * width
    unet_frames = min(num_frames, context_length) if context_length else num_frames
    latent_share = (CALIBRATED_VAE_FACTOR / vae_factor) ** 2
    unet = UNET_BYTES_PER_PIXEL_FRAME * scale * 2 * unet_frames * pixels * latent_share
    chunk = 1 if low_vram else min(num_frames, VAE_DECODE_CHUNK)
    # Tiling (low_vram above the VAE's tile size) bounds the decoded area to about one tile.
    if low_vram and pixels > 512 * 512:
        pixels = 512 * 512
    vae = VAE_BYTES_PER_PIXEL_FRAME * scale * chunk * pixels
    overhead = CUDA_OVERHEAD_BYTES if cuda else PROCESS_OVERHEAD_BYTES
    return int(weight_bytes + max(unet, vae) + overhead)


def available_bytes(device: str) -> int | None:
    """Free memory for a render: CUDA free memory, or MemAvailable from /proc/meminfo on the CPU; None if unknown."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(settings, files: ModelFiles, device: str, dtype) -> str | None:
    """One line with the estimate; raises when it exceeds free memory (naming --low-vram). None if unknown."""
    counts = parameter_counts(files)
    if counts is None:
        return None
    args = (counts, device, dtype, settings.height, settings.width, settings.num_frames)
    options = dict(context_length=settings.context_length, vae_factor=files.vae_factor)
    estimate = estimate_peak_bytes(*args, low_vram=settings.low_vram, **options)
    low = estimate_peak_bytes(*args, low_vram=True, **options)
    free = available_bytes(device)
    where = "GPU memory" if str(device).startswith("cuda") else "RAM"
    line = (f"peak memory estimate: {gib(estimate)} on {device}"
            + (f" ({gib(free)} {where} free)" if free is not None else "")
            + (" with --low-vram" if settings.low_vram else ""))
    if free is not None and estimate > free:
        if not settings.low_vram and low <= free:
            hint = f"add --low-vram (estimate {gib(low)}, fits)"
        else:
            hint = (f"even with --low-vram it needs {gib(low)}: lower --height/--width/--num-frames"
                    + (" or --context-length" if settings.num_frames > 8 else ""))
        raise NotEnoughMemoryError(f"not enough memory: the render needs about {gib(estimate)} but only {gib(free)} {where} "
                           f"is free; {hint}")
    return line


@contextlib.contextmanager
def low_vram_applied(pipeline, settings, device: str) -> Iterator[None]:
    """VAE slicing (and tiling above the VAE's tile size) and, on CUDA only, model CPU offload; undone after.

    On the CPU offloading is meaningless (the weights already live in RAM), so only the VAE changes.
    """
    if not settings.low_vram:
        yield
        return
    vae = pipeline.vae
    before = (vae.use_slicing, vae.use_tiling)
    cuda = str(device).startswith("cuda")
    vae.enable_slicing()
    tile = vae.tile_sample_min_size
    if max(settings.height, settings.width) > tile:
        vae.enable_tiling()
    if cuda:
        pipeline.enable_model_cpu_offload(device=device)
    try:
        yield
    finally:
        if cuda:
            pipeline.remove_all_hooks()
            pipeline.to(device)
        vae.use_slicing, vae.use_tiling = before
