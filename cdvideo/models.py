"""Model presets, and the one place that loads pretrained models.

A preset (`configs/models/NAME.yaml`) names a base SD 1.5 model, a motion adapter, the sampler
and render defaults. Sources are hub ids (read through the user's Hugging Face cache, honouring
HF_HUB_OFFLINE), local diffusers directories, `builtin:tiny` (built offline on first use and
then read from its directory like any other) or `builtin:shapes` (trained weights shipped inside
the package, cdvideo/shapes/model/). Tests replace nothing here: they load the tiny and Shapes
models through this same code.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdvideo.config import DEFAULT_MODEL, from_dict, read_yaml
from cdvideo.errors import CdVideoError, ConfigError, ModelNotAvailableError
from cdvideo.hub import hub_offline, hub_reachable

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny", "shapes")
# SD's VAE: 8 frame pixels per latent pixel along each side. diffusers' AnimateDiff pipeline also
# asks for frame sizes in multiples of 8, whatever the VAE.
SD_VAE_SCALE_FACTOR = 8
MOTION_ADAPTER_SUBFOLDER = "motion_adapter"
# Render defaults a model directory may carry (preset keys, `base` left out): `--model DIR` uses them.
MODEL_DIR_PRESET = "cdvideo.yaml"
# The components cdvideo reads from a base model, and the file that proves each is present.
BASE_COMPONENTS = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "tokenizer": "tokenizer/tokenizer_config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lcm": "LCMScheduler",
}


@dataclass
class ModelPreset:
    """A base model, a motion module and the render defaults that suit them."""

    base: str
    motion_adapter: str
    scheduler: str = "ddim"
    # Passed to the scheduler on top of the base model's own scheduler config.
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    height: int = 512
    width: int = 512
    num_frames: int = 16
    # The motion module's temporal position-encoding length: more frames cannot be rendered at once.
    max_frames: int = 32
    steps: int = 25
    # Distilled samplers (AnimateLCM, Lightning) work only at the step counts they were made for; empty: any.
    allowed_steps: list[int] = field(default_factory=list)
    # LoRAs that belong to the model, merged before the user's: [{path: FILE or owner/repo/FILE, strength: 0.8}].
    loras: list[dict[str, Any]] = field(default_factory=list)
    guidance_scale: float = 7.5
    # phi of guidance rescale (cdvideo.guidance); 0 is off, as diffusers' default.
    guidance_rescale: float = 0.0
    fps: int = 8
    negative_prompt: str = ""
    description: str = ""
    name: str = ""
    # For a single-file `base`: the diffusers SD 1.5 directory or hub id whose configs and tokenizer
    # read it (local or cached; never downloaded). Empty: the default preset's base.
    single_file_config: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def presets_dir() -> Path:
    """$CDVIDEO_PRESETS, else the repository's configs/models (reached through the link cdvideo/presets,
    whose files a wheel carries, so an installed package finds them too)."""
    if os.environ.get("CDVIDEO_PRESETS"):
        return Path(os.environ["CDVIDEO_PRESETS"])
    return Path(__file__).resolve().parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def load_preset(spec: str) -> ModelPreset:
    """A preset by name, by path to its YAML, or from a diffusers model directory."""
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")):
        return _preset_from_yaml(path, name=path.stem)
    if path.is_dir():
        return _preset_from_model_dir(path)
    if _is_weight_file(spec):
        return _preset_from_single_file(path)
    named = presets_dir() / f"{spec}.yaml"
    if named.is_file():
        return _preset_from_yaml(named, name=spec)
    raise ConfigError(
        f"unknown model {spec!r}: use a preset ({', '.join(list_presets())}), "
        "a preset YAML file, or a diffusers model directory"
    )


def _preset_from_yaml(path: Path, name: str) -> ModelPreset:
    data = read_yaml(path)
    preset = from_dict(ModelPreset, data, str(path))
    preset.name = preset.name or name
    return _known_scheduler(preset, path)


def _known_scheduler(preset: ModelPreset, source: Path) -> ModelPreset:
    if preset.scheduler not in SCHEDULERS:
        raise ConfigError(f"{source}: unknown scheduler {preset.scheduler!r}; choose from {', '.join(SCHEDULERS)}")
    return preset


def _preset_from_model_dir(path: Path) -> ModelPreset:
    """A diffusers SD directory, with the render defaults it carries in cdvideo.yaml, else the default preset's.

    Its own motion_adapter/ is used if it has one (else cdvideo.yaml's `motion_adapter`, else the default's).
    """
    missing = [f for f in BASE_COMPONENTS.values() if not (path / f).is_file()]
    if missing:
        raise ModelNotAvailableError(
            f"{path} is not a diffusers Stable Diffusion directory (missing {', '.join(missing)})"
        )
    preset = load_preset(DEFAULT_MODEL)
    if (path / MODEL_DIR_PRESET).is_file():
        preset = _model_dir_defaults(path / MODEL_DIR_PRESET, preset)
    preset.base = str(path)
    if (path / MOTION_ADAPTER_SUBFOLDER / "config.json").is_file():
        preset.motion_adapter = str(path)
    preset.name = str(path)
    preset.description = preset.description or f"local model directory {path}"
    return preset


def _model_dir_defaults(file: Path, default: ModelPreset) -> ModelPreset:
    """A model directory's own cdvideo.yaml: preset keys but `base` (the directory itself).

    Keys it leaves out take the default preset's values, except `scheduler_config`: a directory that
    states its defaults samples with its own scheduler/ config unless its cdvideo.yaml changes it
    (the default preset lays AnimateDiff's linear betas over SD 1.5's, which would spoil a model
    trained otherwise).
    """
    data = read_yaml(file) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping of render defaults")
    if "base" in data:
        raise ConfigError(f"{file}: 'base' is the directory itself; remove the key")
    fields = {**default.to_dict(), "scheduler_config": {}, "description": "", **data}
    return _known_scheduler(from_dict(ModelPreset, fields, str(file)), file)


def write_model_dir_defaults(directory: str | os.PathLike, preset: ModelPreset) -> Path:
    """Write `preset`'s render defaults as DIRECTORY/cdvideo.yaml, which `--model DIRECTORY` reads back."""
    from cdvideo.files import write_yaml_atomic

    directory = Path(directory)
    data = {k: v for k, v in preset.to_dict().items() if k not in ("base", "name")}
    if (directory / MOTION_ADAPTER_SUBFOLDER / "config.json").is_file():
        del data["motion_adapter"]  # the directory's own is used
    return write_yaml_atomic(data, directory / MODEL_DIR_PRESET)


@dataclass
class MotionEntry:
    """One known motion module (or motion LoRA) in motion_modules/registry.yaml."""

    name: str
    hub_id: str = ""
    # The released file's name, looked for in motion_modules/ and converted offline.
    original_file: str = ""
    use_motion_mid_block: bool = True
    max_frames: int = 32
    # Not in the weights: every released SD 1.5 module uses 8.
    heads: int = 8
    kind: str = "motion_module"  # or motion_lora
    for_module: str = ""
    description: str = ""


def motion_modules_dir() -> Path:
    """Where original motion-module files are dropped in: $CDVIDEO_MOTION_MODULES, else the repository's
    motion_modules/, else (an installed package, no checkout) $CDVIDEO_CACHE/motion_modules."""
    if os.environ.get("CDVIDEO_MOTION_MODULES"):
        return Path(os.environ["CDVIDEO_MOTION_MODULES"])
    checkout = Path(__file__).resolve().parent.parent / "motion_modules"
    if checkout.is_dir():
        return checkout
    from cdvideo.tiny import cache_dir

    return cache_dir() / "motion_modules"


def motion_registry() -> dict[str, MotionEntry]:
    # motion_modules/registry.yaml, through the link that a wheel carries as a file.
    path = Path(__file__).resolve().parent / "motion_registry.yaml"
    entries = read_yaml(path) or []
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a list of motion modules")
    return {e["name"]: from_dict(MotionEntry, e, f"{path}: {e.get('name', '?')}") for e in entries}


def _is_weight_file(source: str) -> bool:
    return Path(source).is_file() and Path(source).suffix in (".ckpt", ".safetensors", ".pth", ".pt", ".bin")


def resolve_motion(spec: str) -> str:
    """`--motion NAME|PATH|HUB_ID` -> a loadable source: a dropped-in original file, a hub id or a path."""
    from cdvideo.distilled import hub_weight_file

    registry = motion_registry()
    if spec not in registry:
        return hub_weight_file(spec) or spec  # owner/repo/file.safetensors: a single file in a hub repository
    entry = registry[spec]
    if entry.kind != "motion_module":
        raise ConfigError(f"{spec!r} is a {entry.kind.replace('_', ' ')} for {entry.for_module}, not a motion module")
    local = motion_modules_dir() / entry.original_file
    if entry.original_file and local.is_file():
        return str(local)
    if entry.hub_id:
        return entry.hub_id
    raise ModelNotAvailableError(
        f"motion module {spec!r} is not present: put {entry.original_file} into {motion_modules_dir()}"
    )


def load_motion_adapter(source: str, *, dtype, local_files_only: bool = False):
    """A MotionAdapter from a diffusers directory / hub id, or an original AnimateDiff checkpoint file."""
    from diffusers import MotionAdapter

    from cdvideo.distilled import diffusers_adapter_from_file, is_diffusers_adapter_file

    if _is_weight_file(source) and is_diffusers_adapter_file(source):
        return diffusers_adapter_from_file(source, dtype=dtype)
    if _is_weight_file(source):
        from cdvideo.formats.animatediff import motion_adapter_from_checkpoint

        # Released files are recognised by name; the registry knows what their weights cannot say.
        entry = next((e for e in motion_registry().values() if e.original_file == Path(source).name), None)
        overrides = {"motion_num_attention_heads": entry.heads} if entry else None
        return motion_adapter_from_checkpoint(source, overrides, dtype=dtype)
    location, subfolder = _adapter_location(source)
    return MotionAdapter.from_pretrained(location, subfolder=subfolder, torch_dtype=dtype,
                                         local_files_only=local_files_only)


def _preset_from_single_file(path: Path) -> ModelPreset:
    """A single-file SD 1.5 checkpoint with the default preset's motion module and render defaults."""
    from cdvideo.formats.single_file import check_single_file

    check_single_file(path)  # a motion module, LoRA or SDXL file is named here, before any loading
    preset = load_preset(DEFAULT_MODEL)
    preset.base = str(path)
    preset.name = str(path)
    preset.description = f"single-file checkpoint {path}"
    return preset


def _single_file_config(preset: ModelPreset) -> str:
    return preset.single_file_config or load_preset(DEFAULT_MODEL).base


def _local_file(source: str, relative: str) -> Path | None:
    """`relative` inside a local directory or the Hugging Face cache, or None if not there."""
    if Path(source).is_dir():
        candidate = Path(source) / relative
        return candidate if candidate.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, relative)
    except Exception:  # not a valid repo id: it is neither local nor in the cache
        return None
    return Path(cached) if isinstance(cached, str) else None


def resolve_source(source: str) -> str:
    """Turn `builtin:NAME` into its local directory; leave hub ids and paths as they are."""
    if not source.startswith(BUILTIN_PREFIX):
        return source
    name = source[len(BUILTIN_PREFIX) :]
    if name == "tiny":
        from cdvideo.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    if name == "shapes":
        return str(shapes_model_dir())
    raise ConfigError(f"unknown built-in model {source!r}; choose from "
                      + ", ".join(f"'{BUILTIN_PREFIX}{n}'" for n in BUILTIN_MODELS))


def shapes_model_dir() -> Path:
    """The Shapes model shipped in the package; refused, saying how to rebuild it, where an install lacks it."""
    from cdvideo.shapes.model import MODEL_DIR

    if not (MODEL_DIR / "model_index.json").is_file():
        raise ModelNotAvailableError(
            f"the shipped Shapes weights are missing from this install ({MODEL_DIR} has no model_index.json): "
            "rebuild them with `python scripts/train_shapes.py STAGE --work runs/shapes` for STAGE in vae, base, "
            f"motion, then `python scripts/train_shapes.py export --work runs/shapes --to {MODEL_DIR}`"
        )
    return MODEL_DIR


def _builtin_missing(source: str) -> str | None:
    """Why a built-in model cannot be had, or None: tiny is built on demand, Shapes must have shipped."""
    if source != f"{BUILTIN_PREFIX}shapes":
        return None
    try:
        shapes_model_dir()
    except ModelNotAvailableError as error:
        return str(error)
    return None


def _adapter_location(source: str) -> tuple[str, str | None]:
    """A motion adapter source as (path or id, subfolder): model directories keep it in a subfolder."""
    if Path(source, MOTION_ADAPTER_SUBFOLDER, "config.json").is_file():
        return source, MOTION_ADAPTER_SUBFOLDER
    return source, None


def _not_available(source: str, what: str, reason: str) -> ModelNotAvailableError:
    if Path(source).is_absolute() or source.startswith("."):
        hint = "check the path"
    else:
        hint = f"download it while online with `hf download {source}`, or pass a local directory"
    return ModelNotAvailableError(f"{what} {source!r} {reason}: {hint}, or use --model tiny (offline)")


def _looks_local(source: str) -> bool:
    return Path(source).is_absolute() or source.startswith(".") or Path(source).exists()


def missing_weights(preset: ModelPreset, motion_adapter: str | None = None,
                    base_only: bool = False) -> list[tuple[str, str, str]]:
    """(source, what, reason) for each model that is neither a local directory nor in the HF cache."""
    if preset.base.startswith(BUILTIN_PREFIX):  # built locally on demand, or shipped in the package
        adapter = motion_adapter or preset.motion_adapter
        sources = [(preset.base, "base model")]
        sources += [] if base_only or adapter == preset.base else [(adapter, "motion adapter")]
        return [(source, what, reason) for source, what in sources if (reason := _builtin_missing(source))]
    checks = [(preset.base, "base model", list(BASE_COMPONENTS.values()))]
    if _is_weight_file(preset.base):  # a single file: its weights are here, the configs must be too
        config = resolve_source(_single_file_config(preset))
        # tokenizer_config.json, not vocab.json: transformers >= 5 saves a tokenizer as tokenizer.json alone.
        checks = [(config, "SD 1.5 configs for the single-file model",
                   ["model_index.json", BASE_COMPONENTS["tokenizer"]])]
    from cdvideo.distilled import hub_file_parts

    hub_file = hub_file_parts(motion_adapter or preset.motion_adapter)
    if hub_file and not base_only:  # one file in a hub repository (AnimateDiff-Lightning)
        checks.append((hub_file[0], "motion module", [hub_file[1]]))
    adapter = BUILTIN_PREFIX if hub_file else resolve_motion(motion_adapter or preset.motion_adapter)
    if not base_only and not adapter.startswith(BUILTIN_PREFIX) and not _is_weight_file(adapter):
        location, subfolder = _adapter_location(adapter)
        checks.append((location, "motion adapter", [f"{subfolder}/config.json" if subfolder else "config.json"]))
    missing = []
    for source, what, files in checks:
        if _looks_local(source) and not Path(source).is_dir():
            missing.append((source, what, "is not a directory"))
            continue
        absent = [f for f in files if _local_file(source, f) is None]
        if absent:
            reason = f"lacks {', '.join(absent)}" if _looks_local(source) else "is not in the Hugging Face cache"
            missing.append((source, what, reason))
    return missing


def check_available(preset: ModelPreset, motion_adapter: str | None = None, base_only: bool = False) -> None:
    """Fail now, with one line, if a model cannot be had: before anything heavy happens.

    A hub model that is not cached is fine while online (it will be downloaded), not offline.
    `base_only` checks the base model alone (training needs no motion adapter).
    """
    for source, what, reason in missing_weights(preset, motion_adapter, base_only):
        if source.startswith(BUILTIN_PREFIX):
            raise ModelNotAvailableError(reason)  # says how to rebuild it
        if _looks_local(source):
            raise _not_available(source, what, reason)
        if hub_offline():
            raise _not_available(source, what, reason + " and HF_HUB_OFFLINE is set")
        if not hub_reachable():
            # Without this, huggingface_hub retries every file with backoff for minutes.
            raise _not_available(source, what, reason + " and the hub cannot be reached")


def motion_max_frames(preset: ModelPreset, motion_adapter: str | None = None) -> int:
    """The motion module's frame limit: from its local config when there is one, else the preset's."""
    source = resolve_motion(motion_adapter or preset.motion_adapter)
    from cdvideo.distilled import is_diffusers_adapter_file

    if _is_weight_file(source) and is_diffusers_adapter_file(source):
        return preset.max_frames
    if _is_weight_file(source):
        from cdvideo.formats.animatediff import checkpoint_max_frames

        return checkpoint_max_frames(source)
    if not source.startswith(BUILTIN_PREFIX):
        location, subfolder = _adapter_location(source)
        config = _local_file(location, f"{subfolder}/config.json" if subfolder else "config.json")
        if config is not None:
            return int(json.loads(config.read_text()).get("motion_max_seq_length", preset.max_frames))
    return preset.max_frames


def vae_scale_factor(preset: ModelPreset) -> int:
    """Frame pixels per latent pixel along a side, from the base model's local VAE config (as diffusers
    computes it); SD's 8 where there is no local config (a hub model not yet downloaded)."""
    base = _single_file_config(preset) if _is_weight_file(preset.base) else preset.base
    try:
        base = resolve_source(base)
    except ModelNotAvailableError:  # check_available says what is missing, when it is needed
        return SD_VAE_SCALE_FACTOR
    config = _local_file(base, "vae/config.json")
    if config is None:
        return SD_VAE_SCALE_FACTOR
    return 2 ** (len(json.loads(config.read_text())["block_out_channels"]) - 1)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r} asked for, but torch sees no CUDA device: use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str):
    """`auto` is float16 on CUDA and float32 elsewhere (half precision is slow or unsupported on CPUs)."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def make_scheduler(name: str, base_config: dict[str, Any], overrides: dict[str, Any]):
    """Scheduler `name` from the base model's scheduler config with the preset's settings on top."""
    import diffusers

    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
    cls = getattr(diffusers, SCHEDULERS[name])
    config = {**base_config, **overrides}
    # A model trained with a zero-terminal-SNR schedule (Lin et al. 2024; the Shapes model) must be
    # sampled with it; a scheduler without the option would quietly use the unrescaled betas.
    if config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in inspect.signature(cls).parameters:
        raise ConfigError(f"scheduler {name!r} cannot sample this model: it was trained with a zero-terminal-SNR "
                          "schedule (rescale_betas_zero_snr) that this scheduler lacks; choose one of "
                          + ", ".join(n for n, c in SCHEDULERS.items()
                                      if "rescale_betas_zero_snr" in inspect.signature(getattr(diffusers, c)).parameters))
    return cls.from_config(config)


def _loading_error(preset: ModelPreset, error: Exception) -> ModelNotAvailableError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _not_available(preset.base, "model", f"could not be loaded ({first_line})")


def load_tokenizer(preset: ModelPreset):
    """The base model's tokenizer alone (vocabulary files, no weights), or None where it is not local:
    new tokens are checked against it before any model is loaded; a missing model is reported by the load."""
    from transformers import CLIPTokenizer

    try:
        base = resolve_source(preset.base)
        if _is_weight_file(base):
            base = resolve_source(_single_file_config(preset))
        return CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError, CdVideoError):
        return None


def _load_base_components(preset: ModelPreset, dtype) -> dict:
    """The base model's tokenizer, text encoder, VAE, 2D UNet and scheduler config.

    From a diffusers directory or hub id, or from a single-file checkpoint with local SD 1.5 configs.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base = resolve_source(preset.base)
    kwargs = dict(local_files_only=hub_offline())
    try:
        if _is_weight_file(base):
            from cdvideo.formats.single_file import load_single_file, sd15_config_dir

            config_dir = sd15_config_dir(resolve_source(_single_file_config(preset)))
            return load_single_file(base, config_dir, dtype=dtype)
        return dict(
            tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **kwargs),
            text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=dtype, **kwargs),
            vae=AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=dtype, **kwargs),
            unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=dtype, **kwargs),
            scheduler_config=DDIMScheduler.load_config(base, subfolder="scheduler", **kwargs),
        )
    except (OSError, ValueError) as error:
        raise _loading_error(preset, error) from error


def motion_unet(unet, adapter):
    """The UNetMotionModel of a 2D UNet plus a motion adapter, built around their own tensors.

    diffusers' `UNetMotionModel.from_unet2d` (what `AnimateDiffPipeline(unet=UNet2DConditionModel)`
    calls) first initialises a whole new model at random and then copies both state dicts into it,
    so while the pipeline is built the UNet's weights exist twice and the motion modules'
    twice more: at SD 1.5 size that is most of the load's peak memory and seconds of random init.
    Here the model is made on the meta device and takes the 2D UNet's and the adapter's tensors
    as they are (no copy, no init): same weights, same frames, far less peak memory. Anything that
    does not map one to one (an inflated conv_in, an unexpected key) falls back to diffusers' way.
    """
    import torch
    from diffusers import UNetMotionModel

    try:
        with torch.device("meta"):
            model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
        state = dict(unet.state_dict())
        state.update(adapter.state_dict())  # down_blocks.N.motion_modules..., mid_block.motion_modules...
        model.load_state_dict(state, strict=True, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise ValueError("a tensor was left on the meta device")
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return UNetMotionModel.from_unet2d(unet, adapter)
    return model.to(device=unet.device)


def load_pipeline(preset: ModelPreset, *, device: str, dtype, motion_adapter: str | None = None):
    """Load base model and motion adapter into an AnimateDiffPipeline on `device` in `dtype`."""
    check_available(preset, motion_adapter)
    from diffusers import AnimateDiffPipeline

    parts = _load_base_components(preset, dtype)
    adapter = resolve_source(resolve_motion(motion_adapter or preset.motion_adapter))
    try:
        adapter_model = load_motion_adapter(adapter, dtype=dtype, local_files_only=hub_offline())
    except (OSError, ValueError) as error:
        raise _loading_error(preset, error) from error
    pipeline = AnimateDiffPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=motion_unet(parts.pop("unet"), adapter_model),
        motion_adapter=adapter_model,
        scheduler=make_scheduler(preset.scheduler, parts["scheduler_config"], preset.scheduler_config),
    )
    return pipeline.to(device)


def load_training_components(preset: ModelPreset, *, device: str, dtype) -> dict:
    """The 2D parts of the preset's base model that training needs, on `device` in `dtype`.

    Returns unet (UNet2DConditionModel), vae, text_encoder, tokenizer and noise_scheduler (DDPM with
    the base model's training schedule); the motion adapter is not loaded.
    """
    check_available(preset, base_only=True)
    from diffusers import DDPMScheduler

    parts = _load_base_components(preset, dtype)
    return dict(
        unet=parts["unet"].to(device),
        vae=parts["vae"].to(device),
        text_encoder=parts["text_encoder"].to(device),
        tokenizer=parts["tokenizer"],
        noise_scheduler=DDPMScheduler.from_config(parts["scheduler_config"]),
    )
