"""One render request -> frames -> a video file and its JSON sidecar.

    settings = RenderSettings(prompt="a <new1> dog running", model="tiny",
                              concepts=[ConceptSpec("examples/tiny-dog.safetensors")])
    result = render_to_file(settings, "outputs/dog.mp4")

The sidecar records the resolved settings (seed included), the model, concept file hashes and
library versions; `RenderSettings.from_dict(sidecar["settings"])` renders the same frames again
on the same machine (design decision 5).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cdvideo.concept import Concept, load_concept, recorded_binding
from cdvideo.control import check_controls, control_frames, resolve_controls
from cdvideo.config import DEVICES, DTYPES, ConceptSpec, LoraSpec, RenderSettings, check_seed
from cdvideo.errors import ConfigError, InputFileError
from cdvideo.files import atomic_path
from cdvideo.long_video import (check_long_video, long_video_applied, needs_one_by_one, pipeline_prompt,
                                resolve_long_video, window_note)
from cdvideo.guidance import guidance_rescale_applied
from cdvideo.ip_adapter import check_ip_adapter, ip_adapter_applied, resolve_ip_adapter
from cdvideo.export import FORMATS, encode_video, format_from_path, frames_to_uint8
from cdvideo.memory import check_memory, low_vram_applied
from cdvideo.models import SCHEDULERS, SD_VAE_SCALE_FACTOR, ModelFiles, ModelPreset, load_preset, locate, preset_lora_specs
from cdvideo.outputs import check_output
from cdvideo.regional_compile import check_compile, compile_applied
from cdvideo.schedule import check_binding, parse_schedule
from cdvideo.sidecar import sidecar_path, sidecar_record, write_sidecar
from cdvideo.source_video import check_source, resolve_source, source_frames
from cdvideo.step_cache import check_step_cache, step_cache_applied



def resolve_settings(settings: RenderSettings, preset: ModelPreset) -> RenderSettings:
    """Fill every `None` from the preset (frame count and fps from a source video or the first control
    clip first), and draw a seed if none was given."""
    settings = resolve_ip_adapter(resolve_controls(resolve_source(settings, preset)))
    defaults = {
        "negative_prompt": preset.negative_prompt,
        "num_frames": preset.num_frames,
        "height": preset.height,
        "width": preset.width,
        "steps": preset.steps,
        "guidance_scale": preset.guidance_scale,
        "guidance_rescale": preset.guidance_rescale,
        "fps": preset.fps,
        "scheduler": preset.scheduler,
        "seed": random.SystemRandom().randrange(0, 2**63),
    }
    resolved = dataclasses.replace(settings, **{k: v for k, v in defaults.items() if getattr(settings, k) is None})
    # The model's binding for one concept trained token-bound (cdvideo train's default), for text-to-video only
    # (a source video gives the layout and the motion itself). Files trained another way (merged: other tools'
    # files) keep their own, and so do several concepts at once: on Shapes, two region-bound concepts kept the
    # asked motion in 0.50 of clips against 0.81 token-bound (docs/personalization.md).
    if (preset.concept_binding and len(settings.concepts) == 1 and settings.concept_binding is None
            and not settings.video and recorded_binding(settings.concepts[0].path) == "token"):
        resolved.concept_binding = preset.concept_binding
    # The model's concept schedule, text-to-video too, for concepts acting on the whole picture: region-bound
    # ones already leave the rest of it to the base model, and there the schedule only cost motion (Shapes).
    if (preset.concept_schedule and settings.concepts and settings.concept_schedule is None
            and not settings.concept_start and not settings.video and resolved.concept_binding != "region"):
        resolved.concept_schedule = preset.concept_schedule
    # Absolute concept paths: the sidecar then repeats the render from any working directory.
    resolved.concepts = [dataclasses.replace(c, path=str(Path(c.path).absolute())) for c in settings.concepts]
    resolved.loras = [dataclasses.replace(lora, path=str(Path(lora.path).absolute())) for lora in settings.loras]
    # The preset's own LoRAs (AnimateLCM's) go first, once: a sidecar's settings already hold them.
    resolved.loras = [s for s in preset_lora_specs(preset) if s.path not in {x.path for x in resolved.loras}] + resolved.loras
    return resolve_long_video(resolved)


def check_inputs(settings: RenderSettings, model: ModelFiles | ModelPreset, out: str | os.PathLike | None = None) -> None:
    """Validate resolved settings before any model is loaded; each message names the setting.

    `model`: the request's located files (`locate(preset, settings.motion_adapter)`), or its preset."""
    files = model if isinstance(model, ModelFiles) else locate(model, settings.motion_adapter)
    preset = files.preset
    if not settings.prompt or not settings.prompt.strip():
        raise ConfigError("prompt is empty: pass --prompt \"a <new1> dog running on the beach\"")
    factor = files.vae_factor
    # diffusers' AnimateDiff pipeline refuses sizes that are not multiples of 8, whatever the VAE.
    multiple = max(factor, SD_VAE_SCALE_FACTOR)
    why = f"latents are 1/{factor} of the frame" + ("" if factor == multiple else "; diffusers asks for multiples of 8")
    for name in ("height", "width"):
        value = getattr(settings, name)
        if value <= 0 or value % multiple:
            raise ConfigError(f"{name} must be a positive multiple of {multiple} ({why}), got {value}")
    if preset.allowed_steps and settings.steps not in preset.allowed_steps:
        raise ConfigError(f"steps must be one of {', '.join(map(str, preset.allowed_steps))} for the {preset.name} "
                          f"preset (a distilled sampler), got {settings.steps}")
    if settings.num_frames < 1:  # more than the motion module takes turns windows on (cdvideo.long_video)
        raise ConfigError(f"num_frames must be at least 1, got {settings.num_frames}")
    check_long_video(settings, files.max_frames)
    if settings.steps < 1:
        raise ConfigError(f"steps must be at least 1, got {settings.steps}")
    # NaN passes every comparison below, and an infinite guidance renders black: refuse both by name.
    for name in ("guidance_scale", "guidance_rescale", "concept_start"):
        value = getattr(settings, name)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    for spec in [*settings.concepts, *settings.loras, *settings.motion_loras]:
        if not math.isfinite(spec.strength):
            raise ConfigError(f"the strength of {spec.path} must be a finite number, got {spec.strength}")
    if settings.guidance_scale < 0:
        raise ConfigError(f"guidance_scale must be >= 0, got {settings.guidance_scale}")
    if not 0 <= settings.concept_start < 1:
        raise ConfigError(f"concept_start must be at least 0 and below 1 (a share of the steps), got {settings.concept_start}")
    check_binding(settings.concept_binding)
    check_source(settings)
    check_controls(settings)
    check_ip_adapter(settings)
    check_step_cache(settings)
    check_compile(settings)
    if settings.concept_schedule is not None:
        if settings.concept_start:
            raise ConfigError("give concept_start or concept_schedule, not both (concept_start S is the schedule \"0:0, S:1\")")
        parse_schedule(settings.concept_schedule)
    if settings.guidance_rescale is not None and not 0 <= settings.guidance_rescale <= 1:
        raise ConfigError(f"guidance_rescale must be between 0 and 1 (0.7 is Lin et al.'s), got {settings.guidance_rescale}")
    if settings.fps <= 0:
        raise ConfigError(f"fps must be positive, got {settings.fps}")
    check_seed(settings.seed, "seed")
    if settings.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {settings.scheduler!r}; choose from {', '.join(SCHEDULERS)}")
    if settings.device not in DEVICES and not settings.device.startswith("cuda:"):
        raise ConfigError(f"unknown device {settings.device!r}; choose from {', '.join(DEVICES)} or cuda:N")
    if settings.dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {settings.dtype!r}; choose from {', '.join(DTYPES)}")
    if settings.format is not None and settings.format not in FORMATS:
        raise ConfigError(f"unknown format {settings.format!r}; choose from {', '.join(FORMATS)}")
    if not 0 <= settings.quality <= 10:
        raise ConfigError(f"quality must be between 0 and 10, got {settings.quality}")
    if out is not None:  # the video and its sidecar may not replace anything cdvideo did not write
        check_output(out, settings.format or format_from_path(out))
    for spec in settings.concepts:
        # A directory is a ClassDiffusion / Custom Diffusion output folder.
        if not Path(spec.path).exists():
            raise InputFileError(f"concept file not found: {spec.path}")
    for spec in settings.loras:
        if not Path(spec.path).is_file():
            raise InputFileError(f"LoRA file not found: {spec.path}")


def load_concepts(specs: list[ConceptSpec]) -> list[tuple[Concept, float, str]]:
    """Read and validate every concept file; tokens must be unique across them.

    Files from other tools (Custom Diffusion outputs, embeddings) are read here too; Custom Diffusion
    weights come back as a ConceptSource that `resolve_concepts` turns into deltas once the model is loaded.
    """
    from cdvideo.formats.concepts import is_native_concept, open_concept

    loaded = []
    owner: dict[str, str] = {}
    for spec in specs:
        concept = load_concept(spec.path) if is_native_concept(spec.path) else open_concept(spec.path)
        for token in concept.tokens:
            if token in owner:
                raise ConfigError(f"token {token} is defined by both {owner[token]} and {spec.path}")
            owner[token] = spec.path
        loaded.append((concept, spec.strength, spec.path))
    return loaded


def load_loras(specs: list[LoraSpec]) -> list[tuple[Any, float, str]]:
    """Read every LoRA file before a model is loaded: (LoraFile, strength, path)."""
    from cdvideo.formats.lora import read_lora

    return [(read_lora(spec.path), spec.strength, spec.path) for spec in specs]


def prompt_warnings(prompt: str, concepts: list[tuple[Concept, float, str]]) -> list[str]:
    """Warn when a prompt names a concept's class word but not its token (the concept then has little effect)."""
    messages = []
    words = set(re.findall(r"[\w<>-]+", prompt.lower()))
    for concept, _, name in concepts:
        for token, class_word in concept.class_words.items():
            if token not in prompt and class_word.lower() in words:
                messages.append(
                    f"the prompt mentions '{class_word}' but not the concept token {token} from {name}: "
                    f"write '{token} {class_word}' to render the learned subject"
                )
    return messages


def render_frames(pipeline, settings: RenderSettings, progress: bool = True, callback=None) -> np.ndarray:
    """Run the pipeline for resolved settings; uint8 frames (f, h, w, 3).

    The call is exactly what a plain diffusers script makes, so the frames are identical to it; with a
    source video, ControlNets or an IP-Adapter (`task_inputs`) `pipeline` is diffusers' one for the task
    around the same modules (`Renderer.task_pipeline`).
    The generator lives on the CPU: the same seed gives the same initial noise on any device.
    `callback`: a diffusers `callback_on_step_end` (cdvideo.inject.strength_scheduled), passed only if given.
    """
    import torch

    pipeline.set_progress_bar_config(disable=not progress, desc="denoising", leave=False)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    output = pipeline(
        prompt=pipeline_prompt(settings),  # {frame: prompt} when the prompt travels
        negative_prompt=settings.negative_prompt or None,
        **task_inputs(settings),
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        generator=generator,
        output_type="np",
        **({"callback_on_step_end": callback} if callback else {}),
    )
    return frames_to_uint8(output.frames[0])  # (f, h, w, 3)


def task_inputs(settings: RenderSettings) -> dict[str, Any]:
    """The pipeline arguments of resolved `settings` beyond text-to-video's: the source video and strength
    (else the frame count), IP-Adapter reference images, and ControlNet frames, scales, start and end."""
    from PIL import Image

    if settings.video:  # AnimateDiffVideoToVideoPipeline: the source's frames, fitted, set the frame count
        task = dict(video=[Image.fromarray(frame) for frame in source_frames(settings)], strength=settings.video_strength)
    else:
        task = dict(num_frames=settings.num_frames)
    if settings.ip_adapters:  # one reference image per copy of the adapter (cdvideo.ip_adapter)
        task.update(ip_adapter_image=[Image.open(spec.image).convert("RGB") for spec in settings.ip_adapters])
    if settings.controls:  # one ControlNet: its frames, scale, start, end; several: lists of them
        frames = [[Image.fromarray(f) for f in control_frames(spec, settings)] for spec in settings.controls]
        one = len(settings.controls) == 1
        task.update(conditioning_frames=frames[0] if one else frames)
        for name, field in (("controlnet_conditioning_scale", "scale"), ("control_guidance_start", "start"),
                            ("control_guidance_end", "end")):
            values = [getattr(control, field) for control in settings.controls]
            task[name] = values[0] if one else values
    return task


def render_frames_batch(pipeline, settings: list[RenderSettings], progress: bool = True,
                        callback=None) -> list[np.ndarray]:
    """Render several videos that differ only in prompt, negative prompt and seed in one pipeline call.

    Each video gets its own CPU generator with its own seed, and diffusers draws each video's
    initial noise from its own generator, so every video equals its one-by-one render up to the
    float rounding of batched kernels.
    """
    import torch

    first = settings[0]
    pipeline.set_progress_bar_config(disable=not progress, desc="denoising", leave=False)
    output = pipeline(
        prompt=[s.prompt for s in settings],
        # "" is what the pipeline encodes for a missing negative prompt, so a list of them is the same.
        negative_prompt=[s.negative_prompt or "" for s in settings],
        num_frames=first.num_frames,
        height=first.height,
        width=first.width,
        num_inference_steps=first.steps,
        guidance_scale=first.guidance_scale,
        generator=[torch.Generator(device="cpu").manual_seed(s.seed) for s in settings],
        output_type="np",
        **({"callback_on_step_end": callback} if callback else {}),
    )
    return [frames_to_uint8(frames) for frames in output.frames]  # each (f, h, w, 3)


@dataclass
class RenderResult:
    video: Path
    sidecar: Path
    frames: np.ndarray
    settings: RenderSettings
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Renderer:
    """Holds one loaded pipeline and renders requests with it; concepts are applied per render."""

    def __init__(self, preset: ModelPreset, device: str = "auto", dtype: str = "auto",
                 motion_adapter: str | None = None, pipeline=None, files: ModelFiles | None = None):
        """Load the preset's pipeline, or wrap `pipeline` if one is given (already on `device`).
        `files`: the request's `locate(preset, motion_adapter)`, when it was already made."""
        from cdvideo.models import load_pipeline, resolve_device, resolve_dtype

        self.preset = preset
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.motion_adapter = motion_adapter
        self.pipeline = pipeline or load_pipeline(
            preset, device=self.device, dtype=self.dtype, motion_adapter=motion_adapter, files=files
        )
        self.scheduler = preset.scheduler
        self._scheduler_config = dict(self.pipeline.scheduler.config)
        # ControlNets, IP-Adapter weights and image encoders: loaded once per source, kept for later renders.
        self._extras: dict[str, Any] = {}

    def _use_scheduler(self, name: str | None) -> None:
        from cdvideo.models import make_scheduler

        if name and name != self.scheduler:
            self.pipeline.scheduler = make_scheduler(name, self._scheduler_config, {})
            self.scheduler = name

    def resolve_concepts(self, concepts: list[tuple[Any, float, str]]) -> list[tuple[Concept, float, str]]:
        """Concepts from other tools become deltas against this model's base weights (take them before any
        LoRA is merged); cdvideo concepts pass as they are."""
        from cdvideo.formats.concepts import resolve_concepts

        return resolve_concepts(concepts, self.pipeline, self.preset.base)

    @contextlib.contextmanager
    def _applied(self, concepts, loras, binding: str | None = None):
        """LoRAs merged first, concepts on top (bound as `binding` says); both taken off after the render, bit for bit."""
        from cdvideo.concept import fingerprint_unet
        from cdvideo.formats.lora import bind_lora
        from cdvideo.inject import concepts_applied, loras_applied

        concepts = self.resolve_concepts(concepts or [])
        fingerprint = fingerprint_unet(self.pipeline.unet) if loras and concepts else None
        bound = [(bind_lora(lora, self.pipeline), strength, name) for lora, strength, name in loras or []]
        with loras_applied(self.pipeline, bound), concepts_applied(self.pipeline, concepts, fingerprint,
                                                                              binding) as injector:
            yield injector

    @contextlib.contextmanager
    def _prepared(self, settings: RenderSettings, concepts, loras):
        """Everything one render (or one batch, which shares `settings`' shared fields) switches on and
        off again: scheduler, LoRAs and concepts, long-video windows, step caching, low-VRAM, guidance
        rescale, and the concepts' strength schedule; with `compile` the UNet's blocks are compiled (and
        stay so for later renders, which run them eager unless they ask for `compile` too). Yields the pipeline to call (`task_pipeline`) and the step-end
        callback to pass to it, or None."""
        from cdvideo.inject import schedule_factors, strength_scheduled

        self._use_scheduler(settings.scheduler)
        pipeline = self.task_pipeline(settings)
        factors = schedule_factors(settings.concept_start, settings.concept_schedule, settings.steps)
        adapter = self.ip_adapter(settings) if settings.ip_adapters else None
        with (self._applied(concepts, loras, settings.concept_binding) as injector,
              ip_adapter_applied(pipeline, adapter, [spec.scale for spec in settings.ip_adapters]),  # after the concepts
              long_video_applied(pipeline, settings),
              compile_applied(pipeline, settings),  # inside long_video: FreeNoise's motion blocks are compiled too
              step_cache_applied(pipeline, settings),  # inside guidance rescale and offload, which wrap forward
              low_vram_applied(pipeline, settings, self.device),
              guidance_rescale_applied(pipeline, settings),
              strength_scheduled(injector, factors) as callback):
            yield pipeline, callback

    def task_pipeline(self, settings: RenderSettings):
        """The diffusers pipeline a render calls: the loaded text-to-video one, or for a source video,
        ControlNets or an IP-Adapter diffusers' one for the task around the same modules (concepts applied
        to either apply to both)."""
        from cdvideo.models import task_pipeline

        encoder = self.image_encoder(settings.ip_adapter_image_encoder) if settings.ip_adapters else None
        return task_pipeline(self.pipeline, video=bool(settings.video),
                             controlnets=[self.controlnet(spec.model) for spec in settings.controls], image_encoder=encoder)

    def ip_adapter(self, settings: RenderSettings) -> dict:
        """The IP-Adapter weights of `settings` (read once, kept for later renders)."""
        from cdvideo.models import load_ip_adapter_weights

        key = f"ip-adapter:{settings.ip_adapter_model}"
        if key not in self._extras:
            self._extras[key] = load_ip_adapter_weights(settings.ip_adapter_model)
        return self._extras[key]

    def image_encoder(self, source: str):
        """An IP-Adapter's CLIP image encoder, loaded on first use and kept."""
        from cdvideo.models import load_image_encoder

        key = f"image-encoder:{source}"
        if key not in self._extras:
            self._extras[key] = load_image_encoder(source, dtype=self.dtype, device=self.device)
        return self._extras[key]

    def controlnet(self, source: str):
        """The ControlNet at `source` (hub id, directory, single file), loaded on first use and checked to fit."""
        from cdvideo.models import check_controlnet, load_controlnet

        if source not in self._extras:
            model = load_controlnet(source, dtype=self.dtype, device=self.device)
            check_controlnet(model, self.pipeline.unet, source)
            self._extras[source] = model
        return self._extras[source]

    def render(self, settings: RenderSettings, concepts: list[tuple[Concept, float, str]] | None = None,
               progress: bool = True, loras: list[tuple[Any, float, str]] | None = None) -> np.ndarray:
        with self._prepared(settings, concepts, loras) as (pipeline, callback):
            return render_frames(pipeline, settings, progress=progress, callback=callback)

    def render_batch(self, settings: list[RenderSettings], concepts: list[tuple[Concept, float, str]] | None = None,
                     progress: bool = True, loras: list[tuple[Any, float, str]] | None = None) -> list[np.ndarray]:
        """`render` for settings that share all but prompt, negative prompt and seed, in one pipeline call."""
        first = settings[0]  # the task pipelines take one source, control set and reference set per call
        if first.video or first.controls or first.ip_adapters or needs_one_by_one(self.pipeline, first):
            return [self.render(s, concepts, progress=progress, loras=loras) for s in settings]
        with self._prepared(settings[0], concepts, loras) as (pipeline, callback):
            return render_frames_batch(pipeline, settings, progress=progress, callback=callback)


@dataclass
class RenderRequest:
    """One render, checked and read before any model loads: resolved settings, where it goes, its files."""

    settings: RenderSettings
    files: ModelFiles  # the preset and motion module, located once for the whole request
    out: Path
    format: str
    concepts: list[tuple[Any, float, str]]  # (Concept or a foreign file's ConceptSource, strength, path)
    loras: list[tuple[Any, float, str]]  # (LoraFile, strength, path)
    messages: list[str]  # warnings worth a line each


def prepare_render(settings: RenderSettings, out: str | os.PathLike, preset: ModelPreset | None = None) -> RenderRequest:
    """Resolve and check a request and read its concept and LoRA files; everything that can be wrong
    is found here, before a model is loaded. `preset`: the loaded renderer's (else `settings.model`'s)."""
    preset = preset or load_preset(settings.model)
    settings = resolve_settings(settings, preset)
    files = locate(preset, settings.motion_adapter)
    check_inputs(settings, files, out)
    concepts = load_concepts(settings.concepts)
    messages = prompt_warnings(settings.prompt, concepts)
    note = window_note(settings, files.max_frames)
    messages += [note] if note else []
    files.check_available()
    return RenderRequest(settings, files, Path(out), settings.format or format_from_path(out), concepts,
                         load_loras(settings.loras), messages)


def write_render(request: RenderRequest, frames: np.ndarray, renderer: Renderer, timings: dict[str, float],
                 started: float) -> RenderResult:
    """Write the video and the sidecar, each to a temporary name, then rename both: a failed write (full
    disk, encoder error) leaves the previous video and sidecar as they were, and a sidecar never
    describes a missing or unfinished video. `renderer`: the one that made `frames`."""
    settings = request.settings
    video, sidecar = request.out, sidecar_path(request.out)
    concepts = renderer.resolve_concepts(request.concepts)  # the sidecar records their fingerprints
    with atomic_path(sidecar) as sidecar_tmp, atomic_path(video, directory=request.format == "frames") as video_tmp:
        t = time.perf_counter()
        encode_video(frames, video_tmp, fps=settings.fps, format=request.format, quality=settings.quality)
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - started
        record = sidecar_record(video_name=video.name, settings=settings, preset=request.files.preset, concepts=concepts,
                                loras=request.loras, device=renderer.device, dtype=renderer.dtype, frames=frames,
                                timings=timings)
        write_sidecar(record, sidecar_tmp)
    return RenderResult(video, sidecar, frames, settings, timings, request.messages)


def render_to_file(settings: RenderSettings, out: str | os.PathLike, renderer: Renderer | None = None,
                   progress: bool = True) -> RenderResult:
    """Validate, load (unless a renderer is given), render, and write the video and its sidecar."""
    started = time.perf_counter()
    # 1. Check inputs: everything that can be wrong is found before a model is loaded.
    request = prepare_render(settings, out, renderer.preset if renderer else None)
    settings = request.settings
    for message in request.messages:
        warnings.warn(message, stacklevel=2)
    # Peak-memory estimate, one line; refused here (before loading) when it does not fit.
    # (With a loaded renderer, as in batch, the weights already sit in memory: nothing to refuse up front.)
    estimate = None
    if renderer is None:
        from cdvideo.models import resolve_device, resolve_dtype

        device = resolve_device(settings.device)
        estimate = check_memory(settings, request.files, device, resolve_dtype(settings.dtype, device))

    # 2. Load the model.
    timings: dict[str, float] = {}
    if renderer is None:
        t = time.perf_counter()
        renderer = Renderer(request.files.preset, settings.device, settings.dtype, settings.motion_adapter,
                            files=request.files)
        timings["load_s"] = time.perf_counter() - t
    # Foreign files -> deltas against the loaded base, once, before any LoRA is merged.
    request.concepts = renderer.resolve_concepts(request.concepts)

    # 3. Render with the LoRAs and concepts applied, then take them off again.
    if estimate:  # printed once nothing else can fail before the render starts
        print(estimate, flush=True)  # stdout, beside "wrote ...": stderr keeps errors to one line
    t = time.perf_counter()
    frames = renderer.render(settings, request.concepts, progress=progress, loras=request.loras)
    timings["render_s"] = time.perf_counter() - t

    # 4. Write the video and the sidecar.
    return write_render(request, frames, renderer, timings, started)
