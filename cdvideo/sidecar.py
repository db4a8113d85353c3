"""The JSON sidecar beside every rendered video: what was asked, resolved and used (design decision 5).

Written by render (`write_sidecar`), read back by `cdvideo render --from` (`read_sidecar`) and by a
batch deciding what is finished (`finished_render`). `RenderSettings.from_dict(sidecar["settings"])`
renders the same frames again on the same machine.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from cdvideo.errors import ConfigError

SIDECAR_FORMAT = "cdvideo.render"
MAX_SIDECAR_BYTES = 16 << 20  # a sidecar is a few KB; a larger "sidecar" is not one


def sidecar_path(video: str | os.PathLike) -> Path:
    """`outputs/dog.mp4` -> `outputs/dog.json`; a frames folder `outputs/dog` -> `outputs/dog.json`."""
    video = Path(video)
    return video.with_name(video.stem + ".json") if video.suffix else video.with_name(video.name + ".json")


def library_versions() -> dict[str, str]:
    import importlib.metadata

    from cdvideo import __version__

    versions = {"python": platform.python_version(), "cdvideo": __version__}
    for package in ("torch", "diffusers", "transformers", "accelerate", "safetensors", "xformers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def sidecar_record(*, video_name: str, settings, preset, concepts, loras, device: str, dtype,
                   frames, timings: dict[str, float]) -> dict[str, Any]:
    """The sidecar of one render: resolved settings, model, concept and LoRA files with their hashes,
    device, dtype, frame shape, library versions and timings."""
    from cdvideo.concept import file_sha256
    from cdvideo.formats.concepts import source_sha256
    from cdvideo.inject import trained_binding
    from cdvideo.source_video import source_sha256

    return {
        "format": SIDECAR_FORMAT,
        "video": video_name,
        "settings": settings.to_dict(),
        "model": {
            "preset": preset.name,
            "base": preset.base,
            "motion_adapter": settings.motion_adapter or preset.motion_adapter,
            "scheduler_config": preset.scheduler_config,
        },
        "concepts": [
            {
                "path": name,
                "sha256": source_sha256(name),
                "strength": strength,
                "tokens": list(concept.tokens),
                "class_words": concept.class_words,
                "base_fingerprint": concept.base_fingerprint,
                "binding": settings.concept_binding or trained_binding(concept),
            }
            for concept, strength, name in concepts
        ],
        "loras": [
            {"path": name, "sha256": file_sha256(name), "strength": strength, "layout": lora.flavour}
            for lora, strength, name in loras
        ],
        # The clips and images a render followed (a source video, control clips, IP-Adapter images): `--from`
        # warns when one changed since, and a batch renders the item again.
        **({"source_video": {"path": settings.video, "sha256": source_sha256(settings.video)}} if settings.video else {}),
        **({"controls": [{"kind": c.kind, "path": c.path, "sha256": source_sha256(c.path), "model": c.model}
                         for c in settings.controls]} if settings.controls else {}),
        **({"ip_adapters": [{"path": spec.image, "sha256": source_sha256(spec.image), "scale": spec.scale}
                            for spec in settings.ip_adapters]} if settings.ip_adapters else {}),
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "frames": {"count": int(frames.shape[0]), "height": int(frames.shape[1]), "width": int(frames.shape[2])},
        "versions": library_versions(),
        "platform": f"{platform.system()} {platform.machine()}; {sys.version.split()[0]}",
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_sidecar(record: dict[str, Any], path: str | os.PathLike) -> None:
    # allow_nan=False: a sidecar holding NaN is not JSON (check_inputs refuses non-finite settings first).
    Path(path).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """A render sidecar, checked: its format, a video name and a settings mapping (for `--from`)."""
    from cdvideo.config import read_json

    path = Path(path)
    data = read_json(path, "sidecar")  # size-limited, UTF-8, no NaN, little nesting
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT or "settings" not in data:
        raise ConfigError(f"{path}: not a cdvideo render sidecar")
    if not isinstance(data.get("video"), str) or not isinstance(data["settings"], dict):
        raise ConfigError(f"{path}: 'video' must be a file name and 'settings' a mapping (an edited sidecar?)")
    return data


def is_cdvideo_sidecar(path: Path, video_name: str | None = None) -> bool:
    """`path` is a cdvideo render sidecar (naming `video_name`, if given)."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_SIDECAR_BYTES:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return (isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT
            and (video_name is None or data.get("video") == video_name))


def changed_concepts(sidecar: dict[str, Any], hashes: dict[str, str] | None = None) -> list[str]:
    """The recorded concept files that are gone or differ from their recorded hash (`hashes` caches
    each file's hash across calls: a batch asks about the same files once per item)."""
    hashes = {} if hashes is None else hashes
    changed = []
    for recorded in sidecar.get("concepts", []):
        path = recorded.get("path", "")
        if path not in hashes:
            from cdvideo.concept import file_sha256

            hashes[path] = file_sha256(path) if Path(path).is_file() else ""
        if hashes[path] != recorded.get("sha256"):
            changed.append(path)
    return changed


def changed_clips(sidecar: dict[str, Any]) -> list[str]:
    """The recorded source video, control clips and IP-Adapter images that are gone or differ from their recorded hash."""
    from cdvideo.source_video import source_sha256

    recorded = [sidecar.get("source_video"), *(sidecar.get("controls") or []), *(sidecar.get("ip_adapters") or [])]
    changed = []
    for clip in (c for c in recorded if isinstance(c, dict)):
        path = str(clip.get("path", ""))
        if not (Path(path).exists() and source_sha256(path) == clip.get("sha256")):
            changed.append(path)
    return changed


def finished_render(video: Path, settings: dict[str, Any], ignore: tuple[str, ...] = (),
                    hashes: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The sidecar of `video` if both exist, it names the video, records exactly `settings` (but the
    fields in `ignore`) and its concept files are unchanged; else None: the render is to be done."""
    path = sidecar_path(video)
    if not path.is_file() or not video.exists():
        return None
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("video") != video.name or not isinstance(sidecar.get("settings"), dict):
        return None

    def comparable(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if k not in ignore}

    if comparable(sidecar["settings"]) != comparable(settings):
        return None
    if changed_concepts(sidecar, hashes) or changed_clips(sidecar):
        return None  # a concept file, the source video or a control clip changed since: its video is out of date
    return sidecar
