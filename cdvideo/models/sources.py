"""Where a preset's weights are: built-in models, the motion-module registry, local folders and the
Hugging Face cache, and what can be known from them before loading (frame limit, VAE factor).

`locate(preset, motion)` works all of that out once for a render request as a `ModelFiles` value.
"""

from __future__ import annotations

import functools
import os
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cdvideo.config import from_dict, read_yaml
from cdvideo.errors import ConfigError, ModelNotAvailableError
from cdvideo.hub import hub_file_parts, hub_offline, hub_reachable, hub_weight_file, local_file
from cdvideo.models.presets import (BASE_COMPONENTS, MOTION_ADAPTER_SUBFOLDER, ModelPreset, is_weight_file,
                                    single_file_config)

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny", "shapes")
# SD's VAE: 8 frame pixels per latent pixel along each side. diffusers' AnimateDiff pipeline also
# asks for frame sizes in multiples of 8, whatever the VAE.
SD_VAE_SCALE_FACTOR = 8


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
    checkout = Path(__file__).resolve().parents[2] / "motion_modules"
    if checkout.is_dir():
        return checkout
    from cdvideo.models.tiny import cache_dir

    return cache_dir() / "motion_modules"


@functools.lru_cache(maxsize=1)
def motion_registry() -> dict[str, MotionEntry]:
    """The known motion modules and motion LoRAs by name, read once per process."""
    # motion_modules/registry.yaml, through the link that a wheel carries as a file.
    path = Path(__file__).resolve().parent.parent / "motion_registry.yaml"
    entries = read_yaml(path) or []
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a list of motion modules")
    return {e["name"]: from_dict(MotionEntry, e, f"{path}: {e.get('name', '?')}") for e in entries}


# A motion LoRA's file inside its diffusers hub repository.
MOTION_LORA_HUB_FILE = "diffusion_pytorch_model.safetensors"


def resolve_registered(name: str, kind: str) -> str | None:
    """A registry name of `kind` ("motion_module" or "motion_lora") -> its released file dropped into
    motion_modules/, else its hub id (a module) or its file in the Hugging Face cache (a LoRA);
    None when `name` is not in the registry."""
    entry = motion_registry().get(name)
    if entry is None:
        return None
    if entry.kind != kind:
        if kind == "motion_lora":
            raise ConfigError(f"motion_loras: {name!r} is a motion module, not a motion LoRA: use --motion-adapter")
        raise ConfigError(f"{name!r} is a {entry.kind.replace('_', ' ')} for {entry.for_module}, not a motion module")
    local = motion_modules_dir() / entry.original_file
    if entry.original_file and local.is_file():
        return str(local)
    if kind == "motion_module" and entry.hub_id:
        return entry.hub_id
    cached = local_file(entry.hub_id, MOTION_LORA_HUB_FILE) if kind == "motion_lora" and entry.hub_id else None
    if cached is not None:
        return str(cached)
    what = "motion module" if kind == "motion_module" else "motion LoRA"
    download = f", or download it while online with `hf download {entry.hub_id}`" if entry.hub_id else ""
    raise ModelNotAvailableError(f"{what} {name!r} is not present: put {entry.original_file} into "
                                 f"{motion_modules_dir()}" + (download if kind == "motion_lora" else ""))


def resolve_motion(spec: str) -> str:
    """`--motion NAME|PATH|HUB_ID` -> a loadable source: a dropped-in original file, a hub id or a path."""
    # Not a registry name: a path, a hub id, or owner/repo/file.safetensors (a single file in a hub repository).
    return resolve_registered(spec, "motion_module") or hub_weight_file(spec) or spec


def resolve_source(source: str) -> str:
    """Turn `builtin:NAME` into its local directory; leave hub ids and paths as they are."""
    if not source.startswith(BUILTIN_PREFIX):
        return source
    name = source[len(BUILTIN_PREFIX) :]
    if name == "tiny":
        from cdvideo.models.tiny import ensure_tiny_model

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


def adapter_location(source: str) -> tuple[str, str | None]:
    """A motion adapter source as (path or id, subfolder): model directories keep it in a subfolder."""
    if Path(source, MOTION_ADAPTER_SUBFOLDER, "config.json").is_file():
        return source, MOTION_ADAPTER_SUBFOLDER
    return source, None


def not_available(source: str, what: str, reason: str) -> ModelNotAvailableError:
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
    if is_weight_file(preset.base):  # a single file: its weights are here, the configs must be too
        config = resolve_source(single_file_config(preset))
        # tokenizer_config.json, not vocab.json: transformers >= 5 saves a tokenizer as tokenizer.json alone.
        checks = [(config, "SD 1.5 configs for the single-file model",
                   ["model_index.json", BASE_COMPONENTS["tokenizer"]])]
    hub_file = hub_file_parts(motion_adapter or preset.motion_adapter)
    if hub_file and not base_only:  # one file in a hub repository (AnimateDiff-Lightning)
        checks.append((hub_file[0], "motion module", [hub_file[1]]))
    adapter = BUILTIN_PREFIX if hub_file else resolve_motion(motion_adapter or preset.motion_adapter)
    if not base_only and not adapter.startswith(BUILTIN_PREFIX) and not is_weight_file(adapter):
        location, subfolder = adapter_location(adapter)
        checks.append((location, "motion adapter", [f"{subfolder}/config.json" if subfolder else "config.json"]))
    missing = []
    for source, what, files in checks:
        if _looks_local(source) and not Path(source).is_dir():
            missing.append((source, what, "is not a directory"))
            continue
        absent = [f for f in files if local_file(source, f) is None]
        if absent:
            reason = f"lacks {', '.join(absent)}" if _looks_local(source) else "is not in the Hugging Face cache"
            missing.append((source, what, reason))
    return missing


def check_available(preset: ModelPreset, motion_adapter: str | None = None, base_only: bool = False) -> None:
    """Fail now, with one line, if a model cannot be had: before anything heavy happens.

    A hub model that is not cached is fine while online (it will be downloaded), not offline.
    `base_only` checks the base model alone (training needs no motion adapter).
    """
    raise_missing(missing_weights(preset, motion_adapter, base_only))


def raise_missing(missing: list[tuple[str, str, str]]) -> None:
    """The first of `missing_weights`' findings as one line, unless a hub model can still be downloaded."""
    for source, what, reason in missing:
        if source.startswith(BUILTIN_PREFIX):
            raise ModelNotAvailableError(reason)  # says how to rebuild it
        if _looks_local(source):
            raise not_available(source, what, reason)
        if hub_offline():
            raise not_available(source, what, reason + " and HF_HUB_OFFLINE is set")
        if not hub_reachable():
            # Without this, huggingface_hub retries every file with backoff for minutes.
            raise not_available(source, what, reason + " and the hub cannot be reached")


def motion_max_frames(preset: ModelPreset, motion_adapter: str | None = None) -> int:
    """The motion module's frame limit: from its local config when there is one, else the preset's."""
    source = resolve_motion(motion_adapter or preset.motion_adapter)
    from cdvideo.formats.animatediff import is_diffusers_adapter_file

    if is_weight_file(source) and is_diffusers_adapter_file(source):
        return preset.max_frames
    if is_weight_file(source):
        from cdvideo.formats.animatediff import checkpoint_max_frames

        return checkpoint_max_frames(source)
    if not source.startswith(BUILTIN_PREFIX):
        location, subfolder = adapter_location(source)
        config = local_file(location, f"{subfolder}/config.json" if subfolder else "config.json")
        if config is not None:
            return int(json.loads(config.read_text()).get("motion_max_seq_length", preset.max_frames))
    return preset.max_frames


def vae_scale_factor(preset: ModelPreset) -> int:
    """Frame pixels per latent pixel along a side, from the base model's local VAE config (as diffusers
    computes it); SD's 8 where there is no local config (a hub model not yet downloaded)."""
    base = single_file_config(preset) if is_weight_file(preset.base) else preset.base
    try:
        base = resolve_source(base)
    except ModelNotAvailableError:  # check_available says what is missing, when it is needed
        return SD_VAE_SCALE_FACTOR
    config = local_file(base, "vae/config.json")
    if config is None:
        return SD_VAE_SCALE_FACTOR
    return 2 ** (len(json.loads(config.read_text())["block_out_channels"]) - 1)


@dataclass(frozen=True)
class ModelFiles:
    """One preset with one motion module, located: made once per render request and handed down to the
    checks, the window note, the memory estimate and the loading. Each fact is worked out on first use
    (an absent motion module is reported where it is first needed) and then kept."""

    preset: ModelPreset
    motion: str  # the motion module as asked: --motion, else the preset's

    @cached_property
    def base(self) -> str:
        """The base model: a local directory, a hub id, or a single weight file."""
        return resolve_source(self.preset.base)

    @cached_property
    def configs(self) -> str:
        """Where the base model's component configs and tokenizer are (a single file's SD 1.5 directory)."""
        return resolve_source(single_file_config(self.preset)) if is_weight_file(self.base) else self.base

    @cached_property
    def adapter(self) -> str:
        """The motion adapter: a local directory, a hub id or a weight file."""
        return resolve_source(resolve_motion(self.motion))

    @cached_property
    def max_frames(self) -> int:
        """The motion module's frame limit (its temporal position encoding)."""
        return motion_max_frames(self.preset, self.motion)

    @cached_property
    def vae_factor(self) -> int:
        return vae_scale_factor(self.preset)

    @cached_property
    def missing(self) -> tuple[tuple[str, str, str], ...]:
        """(source, what, reason) for each model that is neither local nor in the Hugging Face cache."""
        return tuple(missing_weights(self.preset, self.motion))

    def check_available(self) -> None:
        """`check_available` for these files: one line if a model cannot be had."""
        raise_missing(list(self.missing))


def locate(preset: ModelPreset, motion: str | None = None) -> ModelFiles:
    """Where `preset`'s models are, with `motion` (a name, path or hub id) in place of its motion module."""
    return ModelFiles(preset, motion or preset.motion_adapter)
