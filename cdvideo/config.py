"""Settings dataclasses and their YAML/JSON form.

Every YAML key is a dataclass field name, every CLI flag the kebab-case form of it, and unknown
keys are errors (a misspelt setting silently ignored is a wasted render). This module imports
neither torch nor diffusers, so validation runs before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cdvideo.errors import ConfigError, InputFileError

T = TypeVar("T")

DEFAULT_MODEL = "sd15-animatediff-v2"
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes any 64-bit value
RANDOM_SEED = -1  # AnimateDiff's spelling of "draw a seed" in prompt files; the drawn seed is recorded
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")


# Input files are small; a larger one is a mistake or an attack, refused before it is parsed.
MAX_INPUT_BYTES = 16 << 20
# YAML aliases let 1 KB expand to gigabytes once something walks the structure ("billion laughs"):
# a document may expand to this many values at most (a 10 000-prompt file is a tenth of it).
MAX_YAML_NODES = 1_000_000
MAX_NESTING = 32
QUOTE_LIMIT = 40  # characters of a bad value quoted in a message


def quote(value: Any) -> str:
    """`repr(value)` cut to a short prefix: a message names a bad value without printing all of it."""
    if isinstance(value, (dict, list)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "..."


def check_seed(seed: Any, where: str, random_allowed: bool = False) -> int:
    """A seed torch.Generator.manual_seed takes (any 64-bit value); with `random_allowed`, also RANDOM_SEED."""
    if (isinstance(seed, bool) or not isinstance(seed, int)
            or not (0 <= seed <= MAX_SEED or (random_allowed and seed == RANDOM_SEED))):
        also = " or -1 (random)" if random_allowed else ""
        raise ConfigError(f"{where}: a seed is an integer in [0, 2**64){also}, got {quote(seed)}")
    return seed


def _expected(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return getattr(hint, "__name__", str(hint))


def convert_value(hint: Any, value: Any, where: str) -> Any:
    """`value` as type `hint` or a ConfigError naming `where`: the one typed conversion for every source.

    Strict on purpose: "2" is not a number, 1.5 not an integer, "no" not false (YAML and JSON have real
    numbers and booleans), and NaN or infinity is no setting. Nested settings (a list of concepts) are
    built with `from_dict`.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert_value(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_expected(hint)}, got {quote(value)}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            raise ConfigError(f"{where}: expected a finite number, got {value}")
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list or hint is list:
        if isinstance(value, list):
            (item_hint,) = typing.get_args(hint) or (Any,)
            return [convert_value(item_hint, item, f"{where}[{index}]") for index, item in enumerate(value)]
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return value  # keys and values are the reader's to check (prompt_travel's frames, say)
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return from_dict(hint, dataclasses.asdict(value), where)
        if isinstance(value, dict):
            return from_dict(hint, value, where)
    else:
        return value  # a type this conversion does not know: the dataclass checks it
    raise ConfigError(f"{where}: expected {_expected(hint)}, got {quote(value)}")


def from_dict(cls: type[T], data: dict[str, Any], source: str) -> T:
    """Build dataclass `cls` from a mapping, refusing keys that are not its fields and values of the wrong type.

    Messages read "SOURCE: field 'F': expected ..., got ...", SOURCE naming the file and entry.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(quote(k) for k in unknown[:10])}; known keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    converted = {}
    for name, value in data.items():
        field_ = fields[name]
        # None is "not set": a field whose default is None keeps it, a list field its empty default.
        if value is None and field_.default is None:
            converted[name] = None
            continue
        if value is None and field_.default_factory is not dataclasses.MISSING:
            continue
        converted[name] = convert_value(hints[name], value, f"{source}: field '{name}'")
    return cls(**converted)


def from_dicts(cls: type[T], items: list | None, source: str) -> list[T]:
    """A list of `cls` from mappings (or ready instances), each checked by `from_dict`."""
    if items is not None and not isinstance(items, list):
        raise ConfigError(f"{source}: expected a list, got {quote(items)}")
    return [convert_value(cls, item, f"{source}[{index}]") for index, item in enumerate(items or [])]


def read_text(path: str | os.PathLike, what: str = "file", limit: int = MAX_INPUT_BYTES) -> str:
    """A UTF-8 text file of at most `limit` bytes; anything else is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > limit:
        raise ConfigError(f"{path}: {size} bytes is too large for a {what} (at most {limit}); is it the right file?")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: UTF-16 text; save the {what} as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}): is it a binary file? "
                          f"save the {what} as UTF-8") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON document from a size-limited UTF-8 file; NaN/Infinity and deep nesting are refused."""
    text = read_text(path, what)
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError) as error:
        why = f"{error.msg} at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else "nested too deeply"
        raise ConfigError(f"{path}: not valid JSON ({why})") from None
    check_nesting(data, str(path))
    return data


def _no_constant(name: str) -> Any:
    raise ConfigError(f"{name} is not a JSON number: give a finite number")


def check_nesting(data: Any, source: str, limit: int = MAX_NESTING) -> None:
    """Refuse structures nested deeper than `limit` (no settings file needs that)."""
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise ConfigError(f"{source}: nested more than {limit} levels deep; settings are flat mappings and lists")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """A YAML document from a size-limited UTF-8 file, with few aliases and little nesting."""
    import yaml

    text = read_text(path, what)
    try:
        _check_yaml_events(text, str(path))
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})".replace("\n", " ")[:300]) from error
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None


def _check_yaml_events(text: str, source: str) -> None:
    """Count the nodes the document expands to (an alias counts as all of its anchor's nodes) and its
    nesting, on the event stream, before any structure is built."""
    import yaml

    anchors: dict[str, int] = {}
    stack: list[list] = [[None, 0]]  # per open collection: its anchor and its node count so far
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            stack[-1][1] += anchors.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            stack[-1][1] += 1
            if event.anchor:
                anchors[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_NESTING + 1:
                raise ConfigError(f"{source}: nested more than {MAX_NESTING} levels deep; settings are flat "
                                  "mappings and lists")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, count = stack.pop()
            stack[-1][1] += count
            if anchor:
                anchors[anchor] = count
        if stack[-1][1] > MAX_YAML_NODES or sum(entry[1] for entry in stack) > MAX_YAML_NODES:
            raise ConfigError(f"{source}: expands to more than {MAX_YAML_NODES} values (YAML aliases, *name, "
                              "repeat whole structures); write the settings out instead")


def split_number(text: str) -> tuple[str, float | None]:
    """`PATH` or `PATH:NUMBER` -> (path, number or None). A colon that is part of the path (a Windows drive,
    a URL) stays in it: only a trailing part that reads as a number is split off."""
    head, sep, tail = text.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, None


@dataclass
class ConceptSpec:
    """One concept file applied to a render, with the strength of its key/value changes."""

    path: str
    # Scales the key/value deltas only; the learned token embedding is used as trained.
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "ConceptSpec":
        """Parse `path` or `path:strength` (the CLI's `--concept dog.safetensors:0.8`)."""
        path, strength = split_number(text)
        return cls(path=path) if strength is None else cls(path=path, strength=strength)


@dataclass
class LoraSpec(ConceptSpec):
    """One SD 1.5 LoRA file applied to a render; the strength scales its change (`--lora style.safetensors:0.6`)."""


@dataclass
class MotionLoraSpec(ConceptSpec):
    """A motion LoRA (file, or registry name like v2-zoom-in) merged into the motion module (`--motion-lora v2-pan-left:0.8`)."""


@dataclass
class ControlSpec:
    """One ControlNet on a render: the kind of control, the clip or frames it comes from, and how hard it steers.

    `canny` computes edge maps from an ordinary clip (cdvideo.control); every other kind (`canny-map`,
    `depth`, `openpose`, ...) takes control frames already made (a folder of PNGs or a video)."""

    kind: str
    path: str
    # ControlNet weights: a hub id, a diffusers directory or a single file. None: the kind's SD 1.5 model.
    model: str | None = None
    scale: float = 1.0  # controlnet_conditioning_scale
    start: float = 0.0  # share of the steps before the ControlNet starts steering
    end: float = 1.0  # share of the steps after which it stops

    @classmethod
    def parse(cls, text: str) -> "ControlSpec":
        """`KIND:PATH[:SCALE]` (the CLI's `--control canny:walk.mp4:0.8`)."""
        kind, sep, rest = text.partition(":")
        if not sep or not kind or not rest:
            raise ConfigError(f"--control {text!r}: write KIND:PATH[:SCALE], e.g. canny:walk.mp4 or depth:depth_frames/:0.7")
        path, scale = split_number(rest)
        return cls(kind=kind, path=path) if scale is None else cls(kind=kind, path=path, scale=scale)


@dataclass
class IPAdapterSpec:
    """One IP-Adapter reference image and how strongly it steers (`--ip-adapter toy.png:0.6`)."""

    image: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "IPAdapterSpec":
        """`IMAGE` or `IMAGE:SCALE`."""
        image, scale = split_number(text)
        return cls(image=image) if scale is None else cls(image=image, scale=scale)


@dataclass
class RenderSettings:
    """Everything one render needs. `None` means "the model preset's default"."""

    prompt: str = ""
    negative_prompt: str | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    # Guidance rescale phi in [0, 1] (Lin et al. 2024; cdvideo.guidance): for zero-terminal-SNR models at high guidance.
    guidance_rescale: float | None = None
    fps: int | None = None
    # None draws a random seed, which is recorded in the sidecar so the render can be repeated.
    seed: int | None = None
    scheduler: str | None = None
    concepts: list[ConceptSpec] = field(default_factory=list)
    # Share of the denoising steps run before the concepts' key/value changes go on (the schedule "0:0, S:1": cdvideo.inject.strength_scheduled).
    concept_start: float = 0.0
    # Where the concepts' key/value changes act (cdvideo.binding.BINDINGS): "merged" into the weights, for
    # every word and the unconditional branch too (the ClassDiffusion paper's way); "token" only at the
    # positions of each concept's own token(s). None: as each concept was trained (its file says).
    concept_binding: str | None = None
    # Strength of the key/value changes over the denoising steps, "share:strength, ..." (e.g. "0:0, 0.2:0.4,
    # 0.3:1": held from each share of the steps to the next; cdvideo.binding.parse_schedule). None: full
    # strength throughout (after concept_start, which is the schedule "0:0, S:1").
    concept_schedule: str | None = None
    # LoRAs merged into the spatial UNet and text encoder for the render, taken off after it.
    loras: list[LoraSpec] = field(default_factory=list)
    model: str = DEFAULT_MODEL
    # Overrides the preset's motion module: a registry name, hub id, MotionAdapter directory or original file.
    motion_adapter: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    # Output container; None takes it from the output path's extension.
    format: str | None = None
    quality: int = 8
    # Long videos (cdvideo.long_video): FreeNoise windows of context_length frames every context_stride
    # frames. None turns windows on only when needed (more frames than the motion module takes, or travel).
    context_length: int | None = None
    context_stride: int = 4
    context_weighting: str = "pyramid"  # flat, pyramid, delayed_reverse_sawtooth
    context_noise: str = "shuffle_context"  # shuffle_context, repeat_context, random
    # {frame: prompt}, or the CLI's text "0: a dog sitting | 24: a dog running", parsed into it when resolved;
    # text embeddings blend from each given frame to the next.
    prompt_travel: dict[int, str] | str | None = None
    # FreeInit passes: N x the time for steadier motion; 0 or 1 is off.
    free_init: int = 0
    motion_loras: list[MotionLoraSpec] = field(default_factory=list)
    # Video-to-video (cdvideo.source_video): a source clip whose layout and motion the render keeps; the
    # prompt (and concepts) repaint it. Frame count and fps come from it unless given.
    video: str | None = None
    # How far the source is noised before it is denoised again, (0, 1]: low keeps more of the source,
    # 1 keeps only its broad layout. None: the model preset's (0.8, diffusers' default; Shapes 0.6, measured).
    video_strength: float | None = None
    # ControlNets (cdvideo.control): each a kind, its control clip or frames, model, scale and start/end.
    controls: list[ControlSpec] = field(default_factory=list)
    # IP-Adapter (cdvideo.ip_adapter): reference images, each with its scale (each through its own copy of the
    # adapter, so each keeps its own scale); the adapter weights file (None: SD 1.5's, h94/IP-Adapter) and the
    # CLIP image encoder (None: the image_encoder folder beside the adapter file).
    ip_adapters: list[IPAdapterSpec] = field(default_factory=list)
    ip_adapter_model: str | None = None
    ip_adapter_image_encoder: str | None = None
    # VAE slicing (tiling above its tile size) and, on CUDA, model CPU offload for this render; same frames.
    low_vram: bool = False
    # Step caching (DeepCache; cdvideo.step_cache): the whole UNet every step_cache steps, only its shallow
    # branch on the steps between, from the deep features kept. 0 or 1 is off (every step in full).
    step_cache: int = 0
    # Where the shallow branch ends, in skip connections from the shallowest (0: conv_in only, DeepCache's
    # default and the fastest; larger recomputes more and stays closer to full compute).
    step_cache_branch: int = 0
    # Regional compilation (torch.compile on the UNet's repeated blocks; cdvideo.regional_compile): compiled on
    # the first render of a shape, kept for the later renders of a batch. Pays off over many clips of one shape.
    compile: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> "RenderSettings":
        """Typed and checked (`from_dict`): the one way settings from flags, files and sidecars come in."""
        return from_dict(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_backgrounds(spec: str, what: str = "backgrounds") -> dict[str, tuple[int, int, int]]:
    """`"black=#191919, white=#f0f0f0"` -> {"black": (25, 25, 25), "white": (240, 240, 240)}: the plain backgrounds
    `cdvideo.train.data.recolour_backgrounds` puts behind a subject, each with the word its captions use for it."""
    colours = {}
    for entry in (part.strip() for part in spec.split(",")):
        name, _, value = (x.strip() for x in entry.partition("="))
        hexes = value.removeprefix("#")
        if not name or len(hexes) != 6 or any(c not in "0123456789abcdefABCDEF" for c in hexes):
            raise ConfigError(f"{what}: write NAME=#RRGGBB entries separated by commas, e.g. "
                              f"'white=#f0f0f0, red=#dc2828'; got {entry[:40]!r}")
        colours[name] = tuple(int(hexes[i : i + 2], 16) for i in (0, 2, 4))
    return colours
