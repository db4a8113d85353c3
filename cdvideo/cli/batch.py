"""`cdvideo batch`: a prompt file -> one video + sidecar per item, a manifest, a contact sheet and a gallery."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from cdvideo.cli.render import SETTING_FLAGS, add_setting_flags

EXAMPLES = """prompt files:
  prompts.txt     one prompt per line; '#' comments and blank lines are skipped
  prompts.jsonl   one JSON object per line with any render field, e.g.
                  {"prompt": "a <new1> dog", "seed": [1, 2], "concepts": [{"path": "dog.safetensors", "strength": [0.5, 1]}]}
                  a line {"defaults": {...}} gives every entry its starting fields
  prompts.yaml    a list of such entries (or of plain prompts), or {defaults: {...}, prompts: [...]}
  AnimateDiff's own configs/prompts/*.yaml are read as they are

examples:
  cdvideo batch prompts.txt --out outputs/run1 --model tiny --concept examples/tiny-dog.safetensors --seeds 1,2
  cdvideo batch prompts.yaml --out outputs/run1 --dry-run          # the expanded items, no model loaded
  cdvideo batch prompts.yaml --out outputs/run1 --batch-size 4     # 4 videos per pipeline call
  cdvideo batch prompts.yaml --out outputs/run1 --processes 2      # shard over 2 processes (GPUs)
  accelerate launch -m cdvideo batch prompts.yaml --out outputs/run1

Rerunning the same command renders only what is not finished (or whose settings changed).
A second batch on the same --out folder is refused while the first runs.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="render every prompt of a prompt file (resumable)",
        description="Render every entry of a prompt file with the model loaded once; resumable and crash-safe. "
                    "Render flags given here override the file's values.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompts", type=Path, metavar="PROMPTS", help="prompt file: .txt, .jsonl or .yaml")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    add_setting_flags(parser, skip=("prompt", "seed"))
    parser.add_argument(
        "--concept", dest="concepts", action="append", default=None, metavar="FILE[:STRENGTH[,STRENGTH...]]",
        help="concept file for every item, repeatable (replaces the file's); several strengths sweep them",
    )
    parser.add_argument("--seeds", default=None, metavar="S1,S2,...",
                        help="render every prompt with each of these seeds (replaces the file's); -1 draws one")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="videos per pipeline call for items that differ only in prompt and seed (default 1)")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="shard the items over N processes with accelerate (one per GPU; on a CPU each "
                             "gets its share of the cores, cores // N threads)")
    parser.add_argument("--dry-run", action="store_true", help="print the expanded items and stop; loads no model")
    parser.add_argument("--no-gallery", dest="gallery", action="store_false",
                        help="skip contact_sheet.png and index.html")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    from cdvideo.cli.common import quiet_libraries, warnings_as_lines
    from cdvideo.errors import ConfigError

    warnings_as_lines()
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.processes is not None and args.processes < 1:
        raise ConfigError(f"--processes must be at least 1, got {args.processes}")
    from cdvideo.outputs import check_batch_folder

    check_batch_folder(args.out)  # never a user's file or folder of other files
    items = _plan(args)  # the whole file is checked before anything starts, in every process
    if args.dry_run:
        _print_plan(items, args.out)
        return 0
    if args.processes and args.processes > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args)

    from cdvideo.batch import run_batch, summary_lines

    quiet_libraries()
    report = run_batch(items, args.out, batch_size=args.batch_size, progress=not args.quiet, gallery=args.gallery)
    if _process_index() == 0:
        print("\n".join(summary_lines(report)))
        print(f"manifest: {args.out / 'manifest.jsonl'}"
              + (f"; gallery: {args.out / 'index.html'}" if args.gallery else ""))
        return 0 if report.ok else 1
    return 0


def _plan(args):
    from cdvideo.batch import plan_batch
    from cdvideo.prompts import parse_seeds

    overrides = {field: getattr(args, field) for field in SETTING_FLAGS
                 if getattr(args, field, None) is not None}
    seeds = parse_seeds(args.seeds) if args.seeds else None
    return plan_batch(args.prompts, overrides, seeds=seeds, concepts=args.concepts)


def _print_plan(items, out: Path) -> None:
    from cdvideo.batch import finished_sidecar

    for item in items:
        s = item.settings
        if item.error:
            status = f"fails: {item.error}"
        elif out.is_dir() and finished_sidecar(item, out):
            status = "finished (skipped)"
        else:
            status = "to render"
        concepts = " ".join(f"{Path(c.path).name}:{c.strength:g}" for c in s.concepts) or "-"
        seed = "random" if item.random_seed else s.seed
        print(f"{item.index:4d}  {item.video_name}  seed {seed}  {s.num_frames}x{s.width}x{s.height} "
              f"{s.steps} steps  concepts {concepts}  [{status}]  {item.source}")
        print(f"      {s.prompt}")
    print(f"{len(items)} items (dry run: nothing rendered)")


def _process_index() -> int:
    return int(os.environ.get("RANK", 0))


def _launch(args) -> int:
    """Run this same command under `accelerate launch` with N processes (torchrun underneath)."""
    with socket.socket() as probe:  # a free port, so that two launches on one machine do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), "-m", "cdvideo", "batch", *_argv(args),
    ]
    return subprocess.call(command)


def _argv(args) -> list[str]:
    """The batch flags of `args` again, without --processes."""
    argv = [str(args.prompts), "--out", str(args.out), "--batch-size", str(args.batch_size)]
    for field in SETTING_FLAGS:
        if getattr(args, field, None) is True and SETTING_FLAGS[field][0] is bool:
            argv.append(f"--{field.replace('_', '-')}")  # a switch takes no value
        elif getattr(args, field, None) is not None:
            argv += [f"--{field.replace('_', '-')}", str(getattr(args, field))]
    for concept in args.concepts or []:
        argv += ["--concept", concept]
    if args.seeds:
        argv.append(f"--seeds={args.seeds}")
    if not args.gallery:
        argv.append("--no-gallery")
    if args.quiet:
        argv.append("--quiet")
    return argv
