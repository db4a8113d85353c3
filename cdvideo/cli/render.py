"""`cdvideo render`: one prompt -> one video and its JSON sidecar."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  cdvideo render --model tiny --concept examples/tiny-dog.safetensors \\
      --prompt "a <new1> dog running on the beach" --out outputs/dog.mp4
  cdvideo render --concept dog.safetensors:0.8 --concept hat.safetensors \\
      --prompt "a <new1> dog wearing a <new2> hat" --seed 42 --num-frames 16
  cdvideo render --concept dog.safetensors --video walk.mp4 --strength 0.7 \\
      --prompt "a <new1> dog walking" --out outputs/dog-walk.mp4   # the motion of walk.mp4
  cdvideo render --from outputs/dog.json --out outputs/dog-again.mp4   # the same frames again
"""

# Flags that map one-to-one onto RenderSettings fields (flag = kebab-case of the field).
SETTING_FLAGS = {
    "prompt": (str, "text prompt; use the concept's token, e.g. 'a <new1> dog'"),
    "negative_prompt": (str, "what to avoid (default: the model preset's)"),
    "num_frames": (int, "frames to render (default: preset's); more than the motion module takes renders in windows"),
    "fps": (int, "frames per second of the written video"),
    "steps": (int, "denoising steps"),
    "guidance_scale": (float, "classifier-free guidance scale"),
    "concept_start": (float, "share of the denoising steps before the concepts' key/value changes go on (token "
                             "embeddings stay): the base model settles layout and motion first; 0.24 keeps motion "
                             "words working with a concept (docs/shapes-world.md). Default 0: from the start"),
    "concept_binding": (str, "where the concepts' key/value changes act: token (only at the concept's token), "
                             "token+class, values, locked, locked+class, region (the token's change only on the pixels where the base "
                             "model draws its class word), or merged (every word: the paper's way); default: as each "
                             "concept was trained (its file says; files from other tools: merged)"),
    "concept_schedule": (str, "strength of the concepts' key/value changes over the steps, SHARE:STRENGTH pairs held "
                              "until the next, e.g. \"0:0, 0.2:0.4, 0.3:1\" (replaces --concept-start)"),
    "guidance_rescale": (float, "guidance rescale phi, 0..1 (0.7 in Lin et al.): keeps high guidance from over-saturating "
                                "zero-terminal-SNR / v-prediction models (default: preset's, 0 = off)"),
    "seed": (int, "random seed (default: drawn and recorded in the sidecar)"),
    "height": (int, "frame height in pixels, a multiple of 8"),
    "width": (int, "frame width in pixels, a multiple of 8"),
    "scheduler": (str, "sampler: ddim, euler, euler_a, dpmpp_2m, pndm, lcm (default: preset's)"),
    "model": (str, "preset name (sd15-animatediff-v2, tiny), preset YAML, or diffusers model directory"),
    "motion_adapter": (str, "motion module replacing the preset's: a name from `cdvideo motion list`, a diffusers "
                            "MotionAdapter hub id or directory, or an original AnimateDiff .ckpt/.safetensors"),
    "device": (str, "auto (CUDA when present, else CPU), cpu, cuda, cuda:N"),
    "dtype": (str, "auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16"),
    "format": (str, "mp4 (H.264, plays in browsers), webm, gif, webp, frames (PNG folder); default from --out"),
    "quality": (int, "0..10, 10 best (default 8)"),
    "context_length": (int, "FreeNoise window in frames for long videos (default: 16, on when needed)"),
    "context_stride": (int, "frames between window starts (default 4)"),
    "context_weighting": (str, "blending of overlapping windows: flat, pyramid (default), delayed_reverse_sawtooth"),
    "context_noise": (str, "initial noise across windows: shuffle_context (default), repeat_context, random"),
    "prompt_travel": (str, "prompts by frame, blended between: \"0: a <new1> dog sitting | 24: a <new1> dog running\""),
    "free_init": (int, "FreeInit passes for steadier motion, N x the time (default 0: off)"),
    "low_vram": (bool, "less peak memory, same frames: VAE slicing (and tiling for large frames); on CUDA also "
                       "model CPU offload (slower). On the CPU offload is meaningless, only the VAE changes"),
    "step_cache": (int, "step caching (DeepCache): the whole UNet every N steps, only its shallow branch between; "
                        "3 is DeepCache's choice (speed and quality cost: scripts/bench_fast.py). Default 0: off"),
    "compile": (bool, "regional compilation: torch.compile on the UNet's repeated blocks, compiled on the first "
                      "render of a shape (minutes) and kept for the rest of a batch; for CUDA, over many clips of one "
                      "shape (on a CPU measured no faster than eager: docs/performance.md). Frames within 1/255"),
    "video": (str, "source video (mp4, webm, gif, webp or a PNG folder) to re-render with the prompt and concepts: "
                   "its layout and motion stay. Frames are scaled to cover --height x --width and cut about the centre; "
                   "frame count and fps are the source's unless given (docs/video-to-video.md)"),
    "video_strength": (float, "with --video: how far the source is noised before it is denoised, (0, 1]; lower keeps "
                              "more of it (default: the preset's, 0.8; Shapes 0.6)"),
    "ip_adapter_model": (str, "with --ip-adapter: the IP-Adapter weights, a file or owner/repo/path/file.safetensors "
                              "(default: h94/IP-Adapter/models/ip-adapter_sd15.safetensors)"),
    "ip_adapter_image_encoder": (str, "with --ip-adapter: its CLIP image encoder, a directory or owner/repo/subfolder "
                                      "(default: the image_encoder folder beside the adapter file)"),
    "step_cache_branch": (int, "where --step-cache's shallow branch ends, in skip connections (0: the shallowest and "
                               "fastest, DeepCache's default; larger is closer to full compute)"),
}


# Shorter names shown first; the field's own flag keeps working.
_FLAG_ALIASES = {"motion_adapter": ("--motion",), "video_strength": ("--strength",)}


def add_setting_flags(parser, skip: tuple[str, ...] = ()) -> None:
    """The RenderSettings flags, shared with `cdvideo batch` (which takes prompt and seed from a file)."""
    for field, (kind, help) in SETTING_FLAGS.items():
        if field in skip:
            continue
        # Defaults stay None so that only flags the user gave override a sidecar (--from) or prompt file.
        flags = (*_FLAG_ALIASES.get(field, ()), f"--{field.replace('_', '-')}")
        if kind is bool:  # a switch: given -> True, absent -> None (a sidecar's value stays)
            parser.add_argument(*flags, dest=field, action="store_const", const=True, default=None, help=help)
            continue
        parser.add_argument(*flags, dest=field, type=kind, default=None, help=help)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render a video of a prompt, with concepts",
        description="Render one video with an AnimateDiff model and ClassDiffusion concepts.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_setting_flags(parser)
    parser.add_argument(
        "--concept", dest="concepts", action="append", default=None, metavar="FILE[:STRENGTH]",
        help="concept file, repeatable; ':0.8' scales its key/value changes. Also a ClassDiffusion / Custom "
             "Diffusion output (directory, weights file, delta.bin) or a textual inversion embedding",
    )
    parser.add_argument(
        "--lora", dest="loras", action="append", default=None, metavar="FILE[:STRENGTH]",
        help="SD 1.5 LoRA (peft, diffusers or kohya .safetensors), repeatable; ':0.6' scales it",
    )
    parser.add_argument(
        "--motion-lora", dest="motion_loras", action="append", default=None, metavar="FILE|NAME[:STRENGTH]",
        help="motion LoRA (e.g. v2-zoom-in from `cdvideo motion list`, or a file), repeatable; ':0.7' scales it",
    )
    parser.add_argument(
        "--control", dest="controls", action="append", default=None, metavar="KIND:PATH[:SCALE]",
        help="a ControlNet steering every frame, repeatable: canny (edges computed from a clip), or canny-map, depth, "
             "openpose, lineart, softedge, scribble, normal, seg, mlsd, tile with control frames already made "
             "(a PNG folder or a video); ':0.8' scales it (docs/video-to-video.md)",
    )
    parser.add_argument(
        "--control-model", dest="control_models", action="append", default=None, metavar="KIND=MODEL",
        help="the ControlNet for a kind: a hub id, a diffusers directory or a single file (default: the kind's "
             "SD 1.5 v1.1 ControlNet from lllyasviel)",
    )
    parser.add_argument("--control-start", type=float, default=None, metavar="SHARE",
                        help="share of the steps before the ControlNets start steering (default 0)")
    parser.add_argument("--control-end", type=float, default=None, metavar="SHARE",
                        help="share of the steps after which the ControlNets stop steering (default 1)")
    parser.add_argument(
        "--ip-adapter", dest="ip_adapters", action="append", default=None, metavar="IMAGE[:SCALE]",
        help="an IP-Adapter reference image, repeatable, each with its scale (default 1); works beside concepts, "
             "token-bound ones included (docs/video-to-video.md)",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="output video path (default: outputs/<prompt>-<seed>.mp4)")
    parser.add_argument("--from", dest="from_sidecar", type=Path, default=None, metavar="SIDECAR",
                        help="repeat the render described by a sidecar JSON; other flags override it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def settings_from_args(args):
    """RenderSettings from a sidecar (if --from) with the given flags on top, and the output path."""
    from cdvideo.config import ConceptSpec, ControlSpec, IPAdapterSpec, LoraSpec, MotionLoraSpec, RenderSettings
    from cdvideo.sidecar import read_sidecar

    data: dict = {}
    out = args.out
    if args.from_sidecar:
        sidecar = read_sidecar(args.from_sidecar)
        data = dict(sidecar["settings"])
        if out is None:
            recorded = Path(sidecar["video"])
            out = args.from_sidecar.with_name(f"{recorded.stem}-rerender{recorded.suffix}")
    for field in SETTING_FLAGS:
        if getattr(args, field) is not None:
            data[field] = getattr(args, field)
    if args.concepts is not None:
        data["concepts"] = [ConceptSpec.parse(text) for text in args.concepts]
    if args.loras is not None:
        data["loras"] = [LoraSpec.parse(text) for text in args.loras]
    if args.motion_loras is not None:
        data["motion_loras"] = [MotionLoraSpec.parse(text) for text in args.motion_loras]
    if args.ip_adapters is not None:
        data["ip_adapters"] = [IPAdapterSpec.parse(text) for text in args.ip_adapters]
    if args.controls is not None:
        data["controls"] = [ControlSpec.parse(text) for text in args.controls]
    data["controls"] = control_flags(args, data.get("controls") or [])
    return RenderSettings.from_dict(data, "render settings"), out


def control_flags(args, controls: list) -> list:
    """--control-model KIND=MODEL, --control-start and --control-end applied to the controls (from flags or --from)."""
    import dataclasses

    from cdvideo.config import ControlSpec, convert_value
    from cdvideo.errors import ConfigError

    models = {}
    for text in args.control_models or []:
        kind, sep, model = text.partition("=")
        if not sep or not kind or not model:
            raise ConfigError(f"--control-model {text!r}: write KIND=MODEL, e.g. canny=lllyasviel/sd-controlnet-canny")
        models[kind] = model
    controls = [convert_value(ControlSpec, c, "render settings: field 'controls'") for c in controls]
    unused = sorted(set(models) - {c.kind for c in controls})
    if unused:
        raise ConfigError(f"--control-model names kind {unused[0]!r}, but no --control of that kind is given")
    changed = []
    for control in controls:
        control = dataclasses.replace(control, model=models.get(control.kind, control.model))
        for name in ("start", "end"):
            if getattr(args, f"control_{name}") is not None:
                control = dataclasses.replace(control, **{name: getattr(args, f"control_{name}")})
        changed.append(control)
    return changed


def run(args) -> int:
    from cdvideo.cli.common import quiet_libraries, slugify, warnings_as_lines

    warnings_as_lines()
    settings, out = settings_from_args(args)
    if args.from_sidecar:
        _warn_changed_concepts(args.from_sidecar, settings)

    from cdvideo.models import load_preset
    from cdvideo.render import render_to_file, resolve_settings

    if out is None:  # the default name carries the seed: resolve (draw it) here; render_to_file keeps it
        settings = resolve_settings(settings, load_preset(settings.model))
        out = Path("outputs") / f"{slugify(settings.prompt)}-{settings.seed}.{settings.format or 'mp4'}"
        if settings.format == "frames":
            out = out.with_suffix("")
    quiet_libraries()
    result = render_to_file(settings, out, progress=not args.quiet)
    frames = result.frames
    print(
        f"wrote {result.video} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, "
        f"{result.settings.fps} fps, seed {result.settings.seed}) and {result.sidecar} "
        f"in {result.timings['total_s']:.1f} s"
    )
    return 0


def _warn_changed_concepts(sidecar_path: Path, settings) -> None:
    """A concept file, source video or control clip that changed since the recorded render cannot give the same frames."""
    import warnings

    from cdvideo.sidecar import changed_clips, changed_concepts, read_sidecar

    asked = {spec.path for spec in settings.concepts}
    for path in changed_concepts(read_sidecar(sidecar_path)):
        if path in asked and Path(path).is_file():  # a missing file is named by the render itself
            warnings.warn(f"{path} changed since {sidecar_path} was written: the frames will differ")
    clips = {settings.video, *(c.path for c in settings.controls), *(spec.image for spec in settings.ip_adapters)}
    for path in changed_clips(read_sidecar(sidecar_path)):
        if path in clips and Path(path).exists():
            warnings.warn(f"{path} changed since {sidecar_path} was written: the frames will differ")
