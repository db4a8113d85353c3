"""`cdvideo motion ...`: the known motion modules, and original AnimateDiff files -> diffusers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  cdvideo motion list                                   # known modules; which are here, which are cached
  cdvideo motion convert motion_modules/mm_sd_v15_v2.ckpt --out adapters/animatediff-v2
  cdvideo render --motion animatediff-v3 --prompt "a dog running"     # by registry name
  cdvideo render --motion motion_modules/mm_sd_v15_v2.ckpt --prompt "a dog running"   # an original file
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "motion", help="list motion modules, convert original AnimateDiff checkpoints", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="motion_command", metavar="ACTION")
    listing = actions.add_parser("list", help="known motion modules and what is present locally",
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.set_defaults(run=run_list)
    convert = actions.add_parser(
        "convert", help="original AnimateDiff checkpoint -> diffusers MotionAdapter directory",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("file", type=Path, help="original motion module (.ckpt / .safetensors)")
    convert.add_argument("--out", type=Path, required=True, help="directory to write (config.json + weights)")
    convert.add_argument("--heads", type=int, default=None,
                         help="attention heads (not stored in the weights; default: the registry's, else 8)")
    convert.set_defaults(run=run_convert)
    parser.set_defaults(run=lambda args: parser.print_help() or 1)


def _cached(hub_id: str) -> bool:
    from cdvideo.hub import local_file

    return bool(hub_id) and local_file(hub_id, "config.json") is not None


def inventory() -> list[dict]:
    """Registry entries with their local state, then unknown weight files found in the folder."""
    from cdvideo.formats.sniff import sniff
    from cdvideo.models import motion_modules_dir, motion_registry

    folder = motion_modules_dir()
    rows = []
    known_files = set()
    for entry in motion_registry().values():
        known_files.add(entry.original_file)
        rows.append({
            "name": entry.name, "kind": entry.kind, "hub_id": entry.hub_id, "original_file": entry.original_file,
            "mid_block": entry.use_motion_mid_block if entry.kind == "motion_module" else None,
            "max_frames": entry.max_frames if entry.kind == "motion_module" else None,
            "file_present": (folder / entry.original_file).is_file(), "hub_cached": _cached(entry.hub_id),
            "description": entry.description or (f"for {entry.for_module}" if entry.for_module else ""),
        })
    for path in sorted(folder.glob("*")):
        if path.suffix in (".ckpt", ".safetensors", ".pth", ".bin") and path.name not in known_files:
            try:
                kind = str(sniff(path))
            except Exception as error:  # an unreadable file is listed, not fatal
                kind = f"unreadable: {str(error).splitlines()[0]}"
            rows.append({"name": str(path), "kind": kind, "hub_id": "", "original_file": path.name,
                         "file_present": True, "hub_cached": False, "description": "not in the registry"})
    return rows


def run_list(args) -> int:
    from cdvideo.models import motion_modules_dir

    rows = inventory()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"motion modules (files are looked for in {motion_modules_dir()}):")
    for row in rows:
        where = [w for w, ok in (("file here", row["file_present"]), ("hub cache", row["hub_cached"])) if ok]
        shape = ""
        if row.get("max_frames"):
            shape = f"{'mid block, ' if row['mid_block'] else ''}{row['max_frames']} frames"
        print(f"  {row['name']:<26} {row['kind']:<14} {shape:<20} {', '.join(where) or 'not present':<20} "
              f"{row['hub_id'] or row['original_file']}{'  - ' + row['description'] if row['description'] else ''}")
    return 0


def run_convert(args) -> int:
    from cdvideo.formats.animatediff import convert_motion_checkpoint, read_motion_checkpoint
    from cdvideo.models import motion_registry

    overrides = {}
    entry = next((e for e in motion_registry().values() if e.original_file == args.file.name), None)
    if entry:
        overrides["motion_num_attention_heads"] = entry.heads
    if args.heads:
        overrides["motion_num_attention_heads"] = args.heads
    checkpoint = read_motion_checkpoint(args.file, overrides)
    out = convert_motion_checkpoint(args.file, args.out, overrides)
    config = checkpoint.config
    print(
        f"wrote {out} from {args.file}: AnimateDiff {checkpoint.version}, channels {config['block_out_channels']}, "
        f"{config['motion_num_attention_heads']} heads; load it with --motion {out}"
    )
    return 0
