"""`cdvideo env`: what a bug report needs (versions, devices, which presets work offline)."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "env", help="versions, devices and available model weights (paste into bug reports)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(run=run)


def collect() -> dict:
    import torch

    from cdvideo.models import list_presets, load_preset, missing_weights
    from cdvideo.sidecar import library_versions
    from cdvideo.models.tiny import cache_dir

    devices = ["cpu"]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(f"cuda:{index} {props.name} ({props.total_memory / 2**30:.0f} GiB)")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    presets = {}
    for name in list_presets():
        preset = load_preset(name)
        missing = missing_weights(preset)
        presets[name] = (
            "available offline" if not missing
            else "; ".join(f"{what} {source} {reason}" for source, what, reason in missing)
        )
    return {
        "versions": library_versions(),
        "torch_threads": torch.get_num_threads(),
        "devices": devices,
        "cdvideo_cache": str(cache_dir()),
        "presets": presets,
    }


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for package, version in info["versions"].items():
        print(f"{package:>13}: {version}")
    if "xformers" not in info["versions"]:
        print(f"{'xformers':>13}: not installed")
    print(f"{'devices':>13}: {', '.join(info['devices'])} (torch threads: {info['torch_threads']})")
    print(f"{'cache':>13}: {info['cdvideo_cache']}")
    print("presets:")
    for name, state in info["presets"].items():
        print(f"  {name}: {state}")
    return 0
