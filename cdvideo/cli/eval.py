"""`cdvideo eval`: temporal consistency, motion and concept-fidelity metrics for videos and batch folders."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from cdvideo.errors import CdVideoError, ConfigError

EXAMPLES = """\
examples:
  cdvideo eval outputs/dog.mp4 --reference-images data/dog/ --json scores.json
  cdvideo eval outputs/batch/ --csv scores.csv          # every video of a batch folder
  cdvideo eval a.mp4 b.mp4 --metrics temporal_flickering,warping_error,dynamic_degree
  cdvideo eval dog.mp4 --model dino_i=./weights/dino-vits16 --max-frames 16 --stride 2

Metric definitions, sources and how to read them: docs/metrics.md.
Exit code 1 when any video could not be evaluated (its error is in the table); 2 for a bad flag."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cdvideo.metrics.flow import FLOW_METHODS
    from cdvideo.metrics.registry import METRICS

    parser = subparsers.add_parser(
        "eval",
        help="score videos: flicker, warping error, motion, CLIP/DINO consistency and concept fidelity",
        description="Score videos for temporal consistency, motion and concept fidelity; definitions in docs/metrics.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="VIDEO", help="video files, PNG-frame folders, or folders of videos / batch folders with manifest.jsonl")
    parser.add_argument("--metrics", default="all", help=f"comma-separated metric names, or `all` (default). Known: {', '.join(METRICS)}")
    parser.add_argument("--prompt", default=None, help="prompt for clip_t (default: the prompt in each video's JSON sidecar)")
    parser.add_argument("--reference-images", nargs="+", default=None, metavar="PATH", help="images of the concept (files or folders) for clip_i / dino_i")
    parser.add_argument("--json", type=Path, default=None, help="write every result, per pair and per frame, to this JSON file")
    parser.add_argument("--csv", type=Path, default=None, help="write one row per video (and a mean row) to this CSV file")
    parser.add_argument("--max-frames", type=int, default=None, help="score at most this many frames (after --stride)")
    parser.add_argument("--stride", type=int, default=1, help="score every N-th frame (default 1)")
    parser.add_argument("--flow-method", choices=FLOW_METHODS, default="dis", help="optical flow for warping_error / motion (default: OpenCV DIS)")
    parser.add_argument("--all-pairs", action="store_true", help="clip_temporal_consistency over all frame pairs (Tune-A-Video) instead of consecutive ones")
    parser.add_argument("--model", action="append", default=[], metavar="METRIC=ID", help="hub id or local dir for one embedding metric, e.g. dino_i=facebook/dino-vits16 (repeatable)")
    parser.add_argument("--device", default=None, help="torch device for embeddings (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per embedding forward pass (default 16)")
    parser.add_argument("--identity-window", type=int, default=4, help="frames in the worst-window search of the identity curve (default 4)")
    parser.add_argument("--plot-dir", type=Path, default=None, help="where identity PNG plots go (default: beside each video, NAME.identity.png)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw identity plots")
    parser.add_argument("--per-pair", action="store_true", help="also print a table of per-frame-pair values for each video")
    parser.set_defaults(run=run)
    return parser


def _parse_models(specs: list[str]) -> dict[str, str]:
    from cdvideo.metrics.backbones import DEFAULT_MODELS

    models = {}
    for spec in specs:
        metric, sep, model_id = spec.partition("=")
        if not sep or not model_id:
            raise ConfigError(f"--model expects METRIC=ID, got {spec!r} (e.g. dino_i=facebook/dino-vits16)")
        if metric not in DEFAULT_MODELS:
            raise ConfigError(f"--model {spec!r}: {metric!r} uses no model; embedding metrics are {', '.join(DEFAULT_MODELS)}")
        models[metric] = model_id
    return models


def check_args(args: argparse.Namespace) -> None:
    """Every flag checked before any video is read or model loaded."""
    from cdvideo.metrics.inputs import check_sampling

    check_sampling(args.stride, args.max_frames)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be 1 or more, got {args.batch_size}")
    if args.identity_window < 1:
        raise ConfigError(f"--identity-window must be 1 or more, got {args.identity_window}")
    for flag, path in (("--json", args.json), ("--csv", args.csv)):
        if path is not None and path.is_dir():
            raise ConfigError(f"{flag} {path} is a folder: give a file name")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _plot_path(video_path: Path, plot_dir: Path | None) -> Path:
    name = f"{video_path.stem if video_path.suffix else video_path.name}.identity.png"
    return (plot_dir or video_path.parent) / name


def run(args: argparse.Namespace) -> int:
    from cdvideo import metrics
    from cdvideo.metrics import discovery, plot, report

    # 1. Check inputs: flags, metric names, reference images (before any model is loaded)
    check_args(args)
    names = metrics.parse_metric_names(args.metrics)
    models = _parse_models(args.model)
    references = metrics.load_reference_images(args.reference_images) if args.reference_images else None
    items = discovery.find_videos(args.inputs)
    needs_torch = any(name not in metrics.OFFLINE_METRICS for name in names)
    device = args.device or (_default_device() if needs_torch else "cpu")
    context = metrics.EvalContext(
        device=device,
        batch_size=args.batch_size,
        flow_method=args.flow_method,
        all_pairs=args.all_pairs,
        identity_window=args.identity_window,
        models=models,
        reference_images=references,
    )

    # 2. Score every video; a bad file is a row with its error, never the end of the run
    from tqdm import tqdm

    skipped = [item for item in items if item.skipped]
    items = [item for item in items if not item.skipped]
    for item in skipped:
        print(f"skipped {item.label}: {item.skipped}", file=sys.stderr)
    all_scores = []
    for item in tqdm(items, desc="eval", unit="video", disable=len(items) < 2, file=sys.stderr):
        if item.error:
            scores = metrics.VideoScores(video=item.label, error=item.error)
        else:
            scores = metrics.evaluate_path(
                item.path, names, context, stride=args.stride, max_frames=args.max_frames, prompt=args.prompt, label=item.label
            )
        scores.manifest_record = item.record
        all_scores.append(scores)
        curves = plot.identity_curves(scores.metrics)
        if curves and not args.no_plots:
            target = _plot_path(item.path, args.plot_dir)
            try:
                plot.draw_identity_plot(curves, scores.video, target)
            except OSError as error:
                print(f"warning: could not write identity plot {target}: {error}", file=sys.stderr)

    # 3. Report: tables, files, manifest annotations
    failed = sum(scores.error is not None for scores in all_scores)
    summary = metrics.aggregate(all_scores, names)
    for scores in all_scores:
        print(report.format_video(scores, per_pair=args.per_pair), end="\n\n")
    print(report.format_aggregate(summary, len(all_scores), failed))
    if args.json:
        settings = _settings(args, names, context)
        report.write_json(args.json, all_scores, summary, settings)
    if args.csv:
        report.write_csv(args.csv, all_scores, summary, names)
    by_manifest = defaultdict(list)
    for item, scores in zip(items, all_scores):
        if item.manifest is not None:
            by_manifest[item.manifest].append(scores)
    for manifest, manifest_scores in by_manifest.items():
        report.annotate_manifest(manifest, manifest_scores)
        try:
            report.refresh_gallery(manifest.parent)
        except (CdVideoError, OSError) as error:
            print(f"warning: could not update the gallery of {manifest.parent}: {error}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(all_scores)} video(s) could not be evaluated (see the table)", file=sys.stderr)
        return 1
    return 0


def _settings(args: argparse.Namespace, names: list[str], context) -> dict:
    """What produced the scores, written into the JSON so that runs can be compared."""
    from importlib.metadata import PackageNotFoundError, version

    from cdvideo import __version__
    from cdvideo.metrics.backbones import DEFAULT_MODELS

    versions = {"cdvideo": __version__}
    for package in ("numpy", "torch", "transformers", "opencv-python-headless", "decord"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return {
        "metrics": names,
        "stride": args.stride,
        "max_frames": args.max_frames,
        "flow_method": args.flow_method,
        "all_pairs": args.all_pairs,
        "identity_window": args.identity_window,
        "models": {name: context.model_for(name) for name in names if name in DEFAULT_MODELS},
        "device": context.device,
        "batch_size": args.batch_size,
        "prompt": args.prompt,
        "reference_images": args.reference_images,
        "versions": versions,
    }

