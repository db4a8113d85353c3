"""Prompt files in: `.txt`, `.jsonl`, cdvideo's YAML and AnimateDiff's own prompt YAML -> requests.

A request is one video as the file asks for it (prompt, seed, concepts with strengths, any other
render field), before a model preset fills in its defaults. Seeds x prompts x concept strengths
expand here, so a single entry can sweep a concept's strength. Every problem in the file is
collected and reported at once, each naming the file, the line or entry, and the field; nothing
here imports torch, so a bad file is refused before any model is loaded.

Relative paths in a prompt file (concepts, models) are looked up in the working directory first,
as AnimateDiff's own scripts do, then beside the prompt file.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdvideo.config import (RANDOM_SEED, ConceptSpec, RenderSettings, check_nesting, check_seed, convert_value, quote,
                            read_text, read_yaml)
from cdvideo.errors import ConfigError, InputFileError

# Keys a cdvideo prompt entry may have: every RenderSettings field, and a name for the output file.
ENTRY_EXTRA_KEYS = ("name",)

# AnimateDiff's prompt YAML (scripts/animate.py of guoyww/AnimateDiff, v1..v3). Keys we map:
ANIMATEDIFF_MAPPED = {
    "prompt", "n_prompt", "seed", "steps", "guidance_scale", "W", "H", "L",
    "dreambooth_path", "path", "lora_model_path", "lora_alpha", "motion_module", "inference_config",
    "motion_module_lora_configs",
}
# Keys of features cdvideo does not render yet: an entry that uses one fails per item, with the reason.
ANIMATEDIFF_UNSUPPORTED = {
    "adapter_lora_path": "the v3 domain adapter LoRA (adapter_lora_path) is not supported yet",
    "controlnet_path": "SparseCtrl / ControlNet (controlnet_path) is not supported",
    "controlnet_images": "SparseCtrl / ControlNet (controlnet_images) is not supported",
    "init_image": "init images (init_image) are not supported",
}
# Keys whose value only matters together with an unsupported feature above, or which we read elsewhere.
ANIMATEDIFF_IGNORED = {
    "adapter_lora_scale", "domain_lora_scale", "controlnet_config", "controlnet_image_indexs",
    "controlnet_use_simplified_condition_embedding", "controlnet_is_loop", "base",
}
# Keys that only AnimateDiff's format has: one of them in a YAML entry selects that reader.
ANIMATEDIFF_MARKERS = {"n_prompt", "dreambooth_path", "motion_module", "W", "H", "L", "lora_model_path",
                       "inference_config", "motion_module_lora_configs"}


@dataclass
class Request:
    """One video a prompt file asks for."""

    source: str  # where it came from, for messages: "prompts.yaml, entry 3"
    fields: dict[str, Any]  # RenderSettings fields; seed may be RANDOM_SEED
    name: str | None = None  # the entry's `name`, used for the output file instead of the prompt
    # Why this video cannot be rendered by this cdvideo (it then fails alone; the batch goes on).
    unsupported: str | None = None


@dataclass
class Problems:
    """Collects every problem of a file so that the user fixes them in one go."""

    path: Path
    messages: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.messages.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.messages:
            count = len(self.messages)
            listing = "\n  ".join(self.messages)
            raise ConfigError(f"{self.path}: {count} problem{'s' if count > 1 else ''}:\n  {listing}")


def resolve_path(text: str, base_dir: Path) -> str:
    """A relative path from a prompt file: the working directory first (as AnimateDiff), then the file's folder."""
    path = Path(os.path.expanduser(text))
    if path.is_absolute() or path.exists() or not (base_dir / path).exists():
        return str(path)
    return str(base_dir / path)


def parse_seeds(text: str) -> list[int]:
    """`--seeds 1,2,3` (and -1 for a random seed)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers such as 1,2,3, got {quote(text)}") from None
    if not seeds:
        raise ConfigError("--seeds is empty: give integers such as 1,2,3")
    for seed in seeds:
        check_seed(seed, "--seeds", random_allowed=True)
    return seeds


def parse_concepts(value: Any, base_dir: Path) -> list[list[ConceptSpec]]:
    """Concepts with strengths -> every combination of strengths (one list of specs per combination).

    Accepted: `"dog.safetensors"`, `"dog.safetensors:0.8"`, `"dog.safetensors:0,0.5,1"`,
    `{"path": ..., "strength": 0.8 or [0, 0.5, 1]}`, or a list of these.
    """
    if value is None:
        return [[]]
    items = value if isinstance(value, list) else [value]
    choices: list[list[ConceptSpec]] = []
    for item in items:
        if isinstance(item, str):
            path, sep, strengths = item.rpartition(":")
            parsed = _parse_strengths(strengths) if sep and path else None
            if parsed is None:
                path, parsed = item, [1.0]
        elif isinstance(item, dict):
            unknown = sorted(map(str, set(item) - {"path", "strength"}))
            if unknown or not isinstance(item.get("path"), str):
                raise ConfigError(
                    f"a concept is {{path: FILE, strength: NUMBER or [NUMBERS]}}, got {json.dumps(item)}"
                )
            path = item["path"]
            raw = item.get("strength", 1.0)
            raw = raw if isinstance(raw, list) else [raw]
            if not raw or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
                                  for s in raw):
                raise ConfigError(f"concept {path}: strength must be a finite number or a list of them, got {quote(raw)}")
            parsed = [float(s) for s in raw]
        else:
            raise ConfigError(f"a concept is a path or {{path, strength}}, got {quote(item)}")
        resolved = resolve_path(path, base_dir)
        choices.append([ConceptSpec(resolved, strength) for strength in parsed])
    return [list(combination) for combination in itertools.product(*choices)]


def _not_a_number(name: str) -> Any:
    raise ConfigError(f"{name} is not a number: give a finite number")


def _number(value: Any, name: str) -> float:
    return convert_value(float, value, f"field '{name}'")


def _parse_strengths(text: str) -> list[float] | None:
    if text.startswith(("/", "\\")):
        return None  # a colon inside the path (a Windows drive), not a strength
    try:
        strengths = [float(part) for part in text.split(",")]
    except ValueError:
        return None
    if not all(math.isfinite(strength) for strength in strengths):
        raise ConfigError(f"strength must be a finite number, got {quote(text)}")
    return strengths


def _check_types(fields: dict[str, Any]) -> None:
    """Each value has its RenderSettings field's type: the one typed conversion of cdvideo.config.

    Fields the entry expands itself (prompt, seed and concepts: lists allowed) are checked where they are parsed.
    """
    hints = typing.get_type_hints(RenderSettings)
    for name, value in fields.items():
        if name in hints and name not in ("prompt", "seed", "concepts"):
            convert_value(hints[name], value, f"field '{name}'")


def _as_list(value: Any, field_name: str, kind: type) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"field '{field_name}': the list is empty")
    for item in values:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise ConfigError(f"field '{field_name}': expected {kind.__name__} or a list of them, got {quote(item)}")
    return values


def expand_entry(entry: dict[str, Any], base_dir: Path, seeds: list[int] | None = None,
                 concepts: Any = None) -> list[Request]:
    """A cdvideo entry (file defaults already merged in) -> requests: prompts x concept strengths x seeds.

    `seeds` / `concepts` from the command line replace the entry's own.
    """
    known = {f.name for f in dataclasses.fields(RenderSettings)} | set(ENTRY_EXTRA_KEYS)
    unknown = sorted(map(str, set(entry) - known))
    if unknown:
        import difflib

        # The nearest field names when there are some: the whole list (60 names) buries a typo's fix.
        near = sorted({m for name in unknown[:10] for m in difflib.get_close_matches(name, known, n=2)})
        hint = (f"did you mean {', '.join(map(repr, near))}?" if near else
                "known fields: every RenderSettings field (cdvideo/config.py, docs/batch.md) and name")
        raise ConfigError(f"unknown field(s) {', '.join(map(quote, unknown[:10]))}; {hint}")
    fields = dict(entry)
    name = fields.pop("name", None)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"field 'name': expected text, got {quote(name)}")
    prompts = _as_list(fields.pop("prompt", None), "prompt", str)
    if seeds is None:
        raw = fields.pop("seed", None)
        seeds = [RANDOM_SEED] if raw is None else [check_seed(s, "field 'seed'", random_allowed=True) for s in _as_list(raw, "seed", int)]
    else:
        fields.pop("seed", None)
    try:
        combinations = parse_concepts(concepts if concepts is not None else fields.pop("concepts", None), base_dir)
    except ConfigError as error:
        raise ConfigError(f"field 'concepts': {error}") from None
    fields.pop("concepts", None)
    for key in ("model", "motion_adapter"):
        if isinstance(fields.get(key), str) and fields[key].startswith((".", "~", "/")):
            fields[key] = resolve_path(fields[key], base_dir)
    if isinstance(fields.get("video"), str):  # a source video is always a path, never a name
        fields["video"] = resolve_path(fields["video"], base_dir)
    for spec in fields.get("ip_adapters") or []:  # IP-Adapter reference images
        if isinstance(spec, dict) and isinstance(spec.get("image"), str):
            spec["image"] = resolve_path(spec["image"], base_dir)
    for key in ("ip_adapter_model", "ip_adapter_image_encoder"):
        if isinstance(fields.get(key), str) and fields[key].startswith((".", "~", "/")):
            fields[key] = resolve_path(fields[key], base_dir)
    for control in fields.get("controls") or []:  # control clips too; a ControlNet may be a hub id
        if isinstance(control, dict) and isinstance(control.get("path"), str):
            control["path"] = resolve_path(control["path"], base_dir)
        if isinstance(control, dict) and isinstance(control.get("model"), str) and control["model"].startswith((".", "~", "/")):
            control["model"] = resolve_path(control["model"], base_dir)
    _check_types(fields)
    return [
        Request("", {**fields, "prompt": prompt, "seed": seed, "concepts": list(specs)}, name)
        for prompt in prompts
        for specs in combinations
        for seed in seeds
    ]


def read_prompt_file(path: str | os.PathLike, seeds: list[int] | None = None, concepts: Any = None) -> list[Request]:
    """Every request of a prompt file, in file order; raises ConfigError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _read_txt(path, seeds, concepts)
    if suffix == ".jsonl":
        return _read_jsonl(path, seeds, concepts)
    if suffix in (".yaml", ".yml"):
        data = read_yaml(path, "prompt file")
        if is_animatediff(data):
            return _read_animatediff(path, data, seeds, concepts)
        return _read_yaml(path, data, seeds, concepts)
    raise ConfigError(f"{path}: unknown prompt file type {suffix!r}: use .txt, .jsonl or .yaml")


def _expand_into(requests: list[Request], problems: Problems, where: str, entry: dict, base_dir: Path,
                 seeds, concepts) -> None:
    try:
        expanded = expand_entry(entry, base_dir, seeds, concepts)
    except ConfigError as error:
        problems.add(where, str(error))
        return
    for request in expanded:
        request.source = where
    requests.extend(expanded)


def _read_txt(path: Path, seeds, concepts) -> list[Request]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    requests: list[Request] = []
    problems = Problems(path)
    for number, line in enumerate(read_text(path, "prompt file").splitlines(), start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            _expand_into(requests, problems, f"{path}, line {number}", {"prompt": text}, path.parent, seeds, concepts)
    problems.raise_if_any()
    return _nonempty(requests, path)


def _read_jsonl(path: Path, seeds, concepts) -> list[Request]:
    """One JSON object per line; a line `{"defaults": {...}}` gives fields every entry starts from."""
    problems = Problems(path)
    defaults: dict[str, Any] = {}
    entries: list[tuple[str, dict]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            entry = json.loads(line, parse_constant=_not_a_number)
            check_nesting(entry, "the entry")
        except json.JSONDecodeError as error:
            problems.add(where, f"not valid JSON ({error.msg} at column {error.colno})")
            continue
        except (ConfigError, RecursionError) as error:
            problems.add(where, str(error) if isinstance(error, ConfigError) else "nested too deeply")
            continue
        if isinstance(entry, str):
            entry = {"prompt": entry}
        if not isinstance(entry, dict):
            problems.add(where, f"expected a JSON object such as {{\"prompt\": \"a dog\"}}, got {line.strip()[:40]}")
        elif set(entry) == {"defaults"}:
            if defaults or not isinstance(entry["defaults"], dict):
                problems.add(where, "field 'defaults': give one mapping of defaults, once per file")
            else:
                defaults = entry["defaults"]
        else:
            entries.append((where, entry))
    requests: list[Request] = []
    for where, entry in entries:
        _expand_into(requests, problems, where, {**defaults, **entry}, path.parent, seeds, concepts)
    problems.raise_if_any()
    return _nonempty(requests, path)


def _read_yaml(path: Path, data: Any, seeds, concepts) -> list[Request]:
    """A list of entries, or {defaults: {...}, prompts: [...]}; an entry is a prompt or a mapping."""
    problems = Problems(path)
    defaults: dict[str, Any] = {}
    if isinstance(data, dict):
        unknown = sorted(map(str, set(data) - {"defaults", "prompts"}))
        if unknown or not isinstance(data.get("prompts"), list):
            raise ConfigError(
                f"{path}: expected a list of entries, or the keys 'defaults' and 'prompts' (a list)"
                + (f"; unknown key(s) {', '.join(map(quote, unknown[:10]))}" if unknown else "")
            )
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ConfigError(f"{path}: 'defaults' must be a mapping of render fields")
        data = data["prompts"]
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of entries, got {type(data).__name__}")
    requests: list[Request] = []
    for number, entry in enumerate(data, start=1):
        where = f"{path}, entry {number}"
        if isinstance(entry, str):
            entry = {"prompt": entry}
        if not isinstance(entry, dict):
            problems.add(where, f"an entry is a prompt or a mapping of fields, got {quote(entry)}")
            continue
        _expand_into(requests, problems, where, {**defaults, **entry}, path.parent, seeds, concepts)
    problems.raise_if_any()
    return _nonempty(requests, path)


def is_animatediff(data: Any) -> bool:
    """AnimateDiff's prompt YAML: a list of entries (or a mapping of named entries) using its keys."""
    entries = data if isinstance(data, list) else list(data.values()) if isinstance(data, dict) else []
    return any(isinstance(e, dict) and ANIMATEDIFF_MARKERS & set(e) for e in entries)


def _read_animatediff(path: Path, data: Any, seeds, concepts) -> list[Request]:
    """AnimateDiff's entries as its animate.py reads them: prompts, negative prompts and seeds are zipped."""
    problems = Problems(path)
    named = list(data.items()) if isinstance(data, dict) else [(None, e) for e in data]
    requests: list[Request] = []
    for number, (entry_name, entry) in enumerate(named, start=1):
        where = f"{path}, entry {number}" + (f" ({entry_name})" if entry_name else "")
        if not isinstance(entry, dict):
            problems.add(where, f"an AnimateDiff entry is a mapping, got {quote(entry)}")
            continue
        try:
            requests.extend(_animatediff_entry(entry, where, path.parent, seeds, concepts))
        except ConfigError as error:
            problems.add(where, str(error))
    problems.raise_if_any()
    return _nonempty(requests, path)


def _animatediff_entry(entry: dict, where: str, base_dir: Path, seeds, concepts) -> list[Request]:
    unknown = sorted(map(str, set(entry) - ANIMATEDIFF_MAPPED - set(ANIMATEDIFF_UNSUPPORTED) - ANIMATEDIFF_IGNORED))
    if unknown:
        raise ConfigError(f"unknown AnimateDiff field(s) {', '.join(map(quote, unknown[:10]))}")
    prompts = _as_list(entry.get("prompt"), "prompt", str)
    n_prompt = entry.get("n_prompt")
    negatives = [None] * len(prompts) if n_prompt is None else _as_list(n_prompt, "n_prompt", str)
    if len(negatives) == 1:
        negatives = negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise ConfigError(f"field 'n_prompt': {len(negatives)} negative prompts for {len(prompts)} prompts (give 1 or one each)")
    entry_seeds = [check_seed(s, "field 'seed'", random_allowed=True) for s in _as_list(entry.get("seed", RANDOM_SEED), "seed", int)]
    if len(entry_seeds) == 1:
        entry_seeds = entry_seeds * len(prompts)
    if len(entry_seeds) != len(prompts):
        raise ConfigError(f"field 'seed': {len(entry_seeds)} seeds for {len(prompts)} prompts (give 1 or one each)")

    fields: dict[str, Any] = {}
    for key, target in (("steps", "steps"), ("guidance_scale", "guidance_scale"), ("W", "width"),
                        ("H", "height"), ("L", "num_frames")):
        if entry.get(key) is not None:
            fields[target] = entry[key]
    try:
        _check_types(fields)
    except ConfigError as error:  # name the field as the file spells it
        for key, target in (("W", "width"), ("H", "height"), ("L", "num_frames")):
            error = ConfigError(str(error).replace(f"'{target}'", f"'{key}'"))
        raise error from None
    unsupported = [reason for key, reason in ANIMATEDIFF_UNSUPPORTED.items() if entry.get(key)]
    if entry.get("motion_module_lora_configs"):
        configs = _as_list(entry["motion_module_lora_configs"], "motion_module_lora_configs", dict)
        fields["motion_loras"] = [
            {"path": resolve_path(str(c.get("path", "")), base_dir), "strength": _number(c.get("alpha", 1.0), "alpha")}
            for c in configs
        ]
    dreambooth = entry.get("dreambooth_path") or entry.get("path")
    if dreambooth:
        fields["model"] = resolve_path(str(dreambooth), base_dir)
    motion = entry.get("motion_module")
    motions = _as_list(motion, "motion_module", str) if motion else [None]
    if entry.get("lora_model_path"):
        fields["loras"] = [{"path": resolve_path(str(entry["lora_model_path"]), base_dir),
                            "strength": _number(entry.get("lora_alpha", 0.8), "lora_alpha")}]
    concept_choices = parse_concepts(concepts, base_dir)
    requests = []
    for motion_path in motions:
        motion_fields = dict(fields)
        if motion_path:
            motion_fields["motion_adapter"] = resolve_path(motion_path, base_dir)
        for prompt, negative, seed in zip(prompts, negatives, entry_seeds):
            for specs in concept_choices:
                for s in seeds if seeds is not None else [seed]:
                    request_fields = {**motion_fields, "prompt": prompt, "seed": s, "concepts": list(specs)}
                    if negative is not None:
                        request_fields["negative_prompt"] = negative
                    requests.append(Request(where, request_fields, None, "; ".join(unsupported) or None))
    return requests


def _nonempty(requests: list[Request], path: Path) -> list[Request]:
    if not requests:
        raise ConfigError(f"{path}: no prompts (every line is blank or a comment)")
    return requests
