"""Time SD 1.5 + AnimateDiff v2 at their real sizes (random weights): plain diffusers, the ClassDiffusion recipe, cdvideo.

Builds, once, a local diffusers directory with SD 1.5's UNet (320/640/1280/1280), AnimateDiff v2's
MotionAdapter (mid block, 32 positions, 8 heads), SD's VAE (128/256/512/512) and a CLIP ViT-L-sized
text encoder (768 wide, 12 layers; the tiny tokenizer's vocabulary), all with random weights, so
nothing is downloaded. Then runs each variant in its own process, on the same inputs and seed:

  (a) plain diffusers: `AnimateDiffPipeline.from_pretrained(dir, motion_adapter=MotionAdapter...)`, as the
      diffusers docs show (float16 on CUDA, as their AnimateDiff example loads it; float32 on the CPU);
  (b) the official ClassDiffusion video recipe: a StableDiffusionPipeline (whose 2D UNet would take the
      merged concept weights; with random weights there is nothing to merge), then
      `AnimateDiffPipeline.from_pipe(sd, motion_adapter=...)`; fp16 + VAE slicing + model CPU offload on
      CUDA, float32 + VAE slicing on the CPU (fp16 and offload are GPU-only). On CUDA the recipe's fp16
      does not survive: `from_pipe` casts every component to its own `torch_dtype`, float32 by default
      (docs/performance.md); the variant keeps the recipe as written;
  (c) cdvideo's `Renderer` with its defaults;
  (d) only with --variants abcd: a candidate speed-up, (c) with the UNet in channels_last (measured, not kept);
  (e) only when asked (--variants ce): (c) with --low-vram (VAE slicing; model CPU offload on CUDA);
  (f) only when asked: a candidate speed-up, (c) with `torch.compile` on the UNet's forward (compiled in
      the warm-up render, so the timed render measures the compiled kernels);
  (g), (h) only when asked (--variants gh): (c) rendering "a <new1> dog ..." with a random full-size concept
      (token and every spatial to_k/to_v delta) merged (g) and token-bound (h); h/g is the binding's cost;
  (i) only when asked (--variants ghi): the same concept region-bound (cdvideo.binding); i/g is its cost.

On CUDA every variant first renders one 1-step warm-up clip of the same shape (CUDA context, cuDNN
autotuning and, for (f), compilation), then the timed clip; the CPU has nothing to warm up. For
cdvideo's variants the report also gives the peak-memory estimate cdvideo prints before a render
(cdvideo.memory), beside the measured peak.

Per variant: seconds per denoising step (UNet calls), seconds per clip (pipeline call), VAE decode
time, peak memory (peak RSS of the child process on the CPU; CUDA max allocated on a GPU), ratios to
(a), and the largest pixel difference to (a)'s frames (uint8).

    python scripts/bench_realsize.py [--size 128] [--frames 8] [--steps 2] [--model-dir DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "a dog running on the beach"
NEGATIVE = "bad quality, worse quality"
SEED = 42
VARIANTS = {
    "a": "plain diffusers AnimateDiffPipeline",
    "b": "ClassDiffusion recipe (2D UNet -> from_pipe)",
    "c": "cdvideo Renderer, defaults",
    "d": "candidate: (c) + channels_last UNet",
    "e": "cdvideo --low-vram",
    "f": "candidate: (c) + torch.compile UNet",
    "g": "cdvideo with a concept, merged (prompt with its token)",
    "h": "cdvideo with the same concept, token-bound (issue 16's cost)",
    "i": "cdvideo with the same concept, region-bound",
}
CONCEPT_PROMPT = "a <new1> dog running on the beach"
BUILD_VERSION = 1  # bump when the configs below change


def build_realsize(path: Path, vocab_size: int | None = None) -> None:
    """SD 1.5 + AnimateDiff v2 at real size, random weights, as a local diffusers directory.
    `vocab_size` 49408 gives the text encoder SD 1.5's embedding table (scripts/bench_train.py)."""
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cdvideo.models.tiny import build_tokenizer, save_model_dir

    channels = (320, 640, 1280, 1280)
    tokenizer = build_tokenizer(vocab_size=vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        components = dict(
            unet=UNet2DConditionModel(  # runwayml/stable-diffusion-v1-5 unet/config.json
                sample_size=64, in_channels=4, out_channels=4, block_out_channels=channels, layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
                act_fn="silu", center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True,
                freq_shift=0, mid_block_scale_factor=1,
            ),
            motion_adapter=MotionAdapter(  # guoyww/animatediff-motion-adapter-v1-5-2
                block_out_channels=channels, motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
                motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
                use_motion_mid_block=True,
            ),
            vae=AutoencoderKL(  # SD 1.5 vae/config.json
                in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, sample_size=512, act_fn="silu",
            ),
            text_encoder=CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14 text tower, SD 1.5's text encoder
                vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )),
            tokenizer=tokenizer,
            scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                                    timestep_spacing="linspace", steps_offset=1),
        )
    save_model_dir(components, path)


def _ddim(model_dir: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler", beta_schedule="linear", clip_sample=False,
                                         timestep_spacing="linspace", steps_offset=1)


def _load(variant: str, model_dir: str, device: str):
    """The pipeline of one variant, loaded as its user would load it."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline

    cuda = device.startswith("cuda")
    if variant == "a":
        dtype = torch.float16 if cuda else torch.float32  # the diffusers AnimateDiff docs load in float16
        adapter = MotionAdapter.from_pretrained(model_dir + "/motion_adapter", torch_dtype=dtype)
        pipe = AnimateDiffPipeline.from_pretrained(model_dir, motion_adapter=adapter, torch_dtype=dtype)
        pipe.scheduler = _ddim(model_dir)
        return pipe.to(device)
    if variant == "b":
        dtype = torch.float16 if cuda else torch.float32
        sd = StableDiffusionPipeline.from_pretrained(model_dir, torch_dtype=dtype, safety_checker=None,
                                                     requires_safety_checker=False)
        # ClassDiffusion: sd.unet.load_attn_procs(concept) + sd.load_textual_inversion(token), merged into the
        # 2D UNet here. Random weights: nothing to merge.
        adapter = MotionAdapter.from_pretrained(model_dir + "/motion_adapter", torch_dtype=dtype)
        pipe = AnimateDiffPipeline.from_pipe(sd, motion_adapter=adapter)
        pipe.scheduler = _ddim(model_dir)
        # The recipe's pipe.enable_vae_slicing(); diffusers 0.42 keeps it on the VAE only.
        getattr(pipe, "enable_vae_slicing", pipe.vae.enable_slicing)()
        if cuda:
            pipe.enable_model_cpu_offload()
        return pipe
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer

    renderer = Renderer(load_preset(model_dir), device=device)
    if variant == "d":
        renderer.pipeline.unet.to(memory_format=torch.channels_last)
    if variant == "f":  # the forward alone, so the timing hooks around the module's call stay outside the graph
        renderer.pipeline.unet.forward = torch.compile(renderer.pipeline.unet.forward)
    return renderer


def _estimate_mb(loaded, variant: str, device: str, size: int, frames: int) -> float | None:
    """cdvideo's own peak-memory estimate for this render (the line it prints before rendering); None for (a), (b)."""
    if variant not in "cdefghi":
        return None
    from cdvideo.memory import estimate_peak_bytes, parameter_counts
    from cdvideo.models import locate

    counts = parameter_counts(locate(loaded.preset))
    return estimate_peak_bytes(counts, device, loaded.dtype, size, size, frames, low_vram=variant == "e") / 2**20


def _random_concept(pipe):
    """A concept of the real size: one token and a delta on every spatial to_k / to_v (random, seeded)."""
    from cdvideo.concept import ALLOWED_PARAM, Concept

    generator = torch.Generator().manual_seed(0)
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    deltas = {name: 0.01 * torch.randn(param.shape, generator=generator)
              for name, param in pipe.unet.named_parameters()
              if ALLOWED_PARAM.match(name) and name.endswith((".to_k.weight", ".to_v.weight"))}
    return Concept(tokens={"<new1>": torch.randn(1, dim, generator=generator)}, class_words={"<new1>": "dog"},
                   deltas=deltas)


def child(variant: str, model_dir: str, device: str, size: int, frames: int, steps: int, out: str,
          extra: dict | None = None) -> None:
    """One variant in this process: load, render once, report timings and peak memory as JSON.
    `extra`: RenderSettings fields on top of cdvideo's variants' own (scripts/bench_fast.py's speed modes)."""
    from torch._dynamo.utils import counters

    from cdvideo.cli.common import quiet_libraries
    from cdvideo.config import RenderSettings

    quiet_libraries()
    t = time.perf_counter()
    loaded = _load(variant, model_dir, device)
    load_s = time.perf_counter() - t
    pipe = loaded.pipeline if variant in "cdefghi" else loaded
    concepts = [(_random_concept(pipe), 1.0, "bench")] if variant in "ghi" else None
    pipe.set_progress_bar_config(disable=True)
    cuda = device.startswith("cuda")

    def render(n_steps: int, **overrides):
        if variant in "cdefghi":
            settings = RenderSettings(prompt=CONCEPT_PROMPT if concepts else PROMPT, negative_prompt=NEGATIVE,
                                      num_frames=frames, height=size, width=size, steps=n_steps, guidance_scale=7.5,
                                      seed=SEED, scheduler="ddim", low_vram=variant == "e",
                                      concept_binding={"g": "merged", "h": "token", "i": "region"}.get(variant),
                                      **{**(extra or {}), **overrides})
            return loaded.render(settings, concepts, progress=False)
        output = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=frames, height=size, width=size,
                      num_inference_steps=n_steps, guidance_scale=7.5,
                      generator=torch.Generator().manual_seed(SEED), output_type="np")
        return (output.frames[0] * 255).round().astype(np.uint8)

    warmup_s = None
    # A compiled cdvideo variant (`compile` in `extra`, scripts/bench_fast.py) renders a whole first clip as its
    # warm-up, on the CPU too: compilation plus one clip, so first clip - timed clip is the compile time.
    compiling = bool((extra or {}).get("compile"))
    limit_hits = []  # dynamo's warnings that a function hit its recompile limit (its later calls then run eager)
    if compiling:
        import logging

        class LimitHits(logging.Handler):
            def emit(self, record):
                if "recompile_limit" in record.getMessage():
                    limit_hits.append(record.getMessage().splitlines()[1].strip())

        logging.getLogger("torch._dynamo.convert_frame").addHandler(LimitHits())
    if cuda or compiling:  # CUDA context, cuDNN autotuning, (f)'s compilation: not what a clip costs once warm
        t = time.perf_counter()
        render(steps if compiling else 1)
        if cuda:
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    unet_times: list[float] = []
    vae_times: list[float] = []

    def pre(*_):
        sync()
        pre.t = time.perf_counter()

    def post(*_):
        sync()
        unet_times.append(time.perf_counter() - pre.t)

    pipe.unet.register_forward_pre_hook(pre)
    pipe.unet.register_forward_hook(post)
    decode = pipe.vae.decode

    def timed_decode(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        result = decode(*args, **kwargs)
        sync()
        vae_times.append(time.perf_counter() - t0)
        return result

    pipe.vae.decode = timed_decode
    unet_times.clear()
    vae_times.clear()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    t = time.perf_counter()
    result = render(steps)
    sync()
    clip_s = time.perf_counter() - t
    np.save(out, result)
    step_s, unet_calls, vae_s = float(np.mean(unet_times)), len(unet_times), float(sum(vae_times))
    eager_clip_s = None
    if compiling:  # the same clip eager, in this process right after: a ratio that a busy machine's drift spares
        t = time.perf_counter()
        render(steps, compile=False)
        sync()
        eager_clip_s = time.perf_counter() - t
    report = dict(
        load_s=load_s, clip_s=clip_s, step_s=step_s, unet_calls=unet_calls, vae_s=vae_s, eager_clip_s=eager_clip_s,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        warmup_s=warmup_s, first_clip_s=warmup_s if compiling else None,
        compiled_graphs=counters["stats"]["unique_graphs"] if compiling else None, recompile_limit_hits=limit_hits,
        estimate_mb=_estimate_mb(loaded, variant, device, size, frames),
    )
    print("RESULT " + json.dumps(report), flush=True)


def run_child(script: str, variant: str, model_dir, device: str, size: int, frames: int, steps: int, out: str,
              label: str, extra_args: list[str] = (), env: dict[str, str] | None = None) -> dict:
    """Run `script --child VARIANT ...` in its own process (with `env` on top of this one's environment)
    and return the report its child printed."""
    cmd = [sys.executable, script, "--child", variant, "--model-dir", str(model_dir), "--device", device,
           "--size", str(size), "--frames", str(frames), "--steps", str(steps), "--out", out, *extra_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="default: 128 on CPU, 512 on CUDA")
    parser.add_argument("--frames", type=int, default=None, help="default: 8 on CPU, 16 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="default: 2 on CPU, 25 on CUDA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help=f"where the real-size random model is built once (default: a temporary folder)")
    parser.add_argument("--variants", default="abc")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    size = args.size or (512 if cuda else 128)
    frames = args.frames or (16 if cuda else 8)
    steps = args.steps or (25 if cuda else 2)
    if args.child:
        child(args.child, str(args.model_dir), args.device, size, frames, steps, args.out)
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp) / "sd15-realsize"
        marker = model_dir / f".bench-realsize-v{BUILD_VERSION}"
        t = time.perf_counter()
        if not marker.exists():
            build_realsize(model_dir)
            marker.touch()
            print(f"built the real-size random model in {time.perf_counter() - t:.0f} s: {model_dir}")
        print(f"SD 1.5 + AnimateDiff v2 at real size (random weights); {size}x{size}, {frames} frames, {steps} steps, "
              f"guidance 7.5 (CFG batch 2), {args.device}, torch threads {torch.get_num_threads()}, "
              f"torch {torch.__version__}; each variant in its own process", flush=True)
        results, frames_of = {}, {}
        for variant in args.variants:
            out = str(Path(tmp) / f"frames-{variant}.npy")
            results[variant] = run_child(__file__, variant, model_dir, args.device, size, frames, steps, out,
                                         f"variant {variant}")
            frames_of[variant] = np.load(out)
            r = results[variant]
            warm = f", warm-up {r['warmup_s']:.1f} s" if r.get("warmup_s") is not None else ""
            print(f"  ({variant}) done: load {r['load_s']:.1f} s{warm}, clip {r['clip_s']:.1f} s", flush=True)

        base = results.get("a")
        ref = "a" if base else next(iter(results))  # frames compared with (a), or with the first variant run
        mem_key = "cuda_peak_mb" if cuda else "peak_rss_mb"
        mem_name = "CUDA max alloc" if cuda else "peak RSS"
        print()
        print(f"| variant | s/step | s/clip | VAE decode s | {mem_name} MB | load s | speed vs (a) "
              f"| load+clip vs (a) | memory vs (a) | max abs pixel diff to ({ref}) | cdvideo estimate MB (vs measured) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for variant, r in results.items():
            speed = f"{base['clip_s'] / r['clip_s']:.2f}x" if base else "-"
            whole = f"{(base['load_s'] + base['clip_s']) / (r['load_s'] + r['clip_s']):.2f}x" if base else "-"
            memory = f"{r[mem_key] / base[mem_key]:.2f}" if base else "-"
            estimate = (f"{r['estimate_mb']:.0f} ({r['estimate_mb'] / r[mem_key]:.2f})"
                        if r.get("estimate_mb") else "-")
            diff = (int(np.abs(frames_of[variant].astype(int) - frames_of[ref].astype(int)).max())
                    if frames_of[variant].shape == frames_of[ref].shape else "-")
            print(f"| ({variant}) {VARIANTS[variant]} | {r['step_s']:.2f} | {r['clip_s']:.2f} | {r['vae_s']:.2f} "
                  f"| {r[mem_key]:.0f} | {r['load_s']:.1f} | {speed} | {whole} | {memory} | {diff}/255 | {estimate} |")
        print("\nspeed vs (a): (a)'s s/clip / this s/clip (>1 is faster); memory vs (a): this peak / (a)'s peak "
              "(<1 is less). s/step is the mean UNet call (CFG batched: one call per step).")
        if "g" in results and "h" in results:
            g, h = results["g"], results["h"]
            print(f"token-bound (h) against merged (g): s/clip {h['clip_s'] / g['clip_s']:.3f}, s/step "
                  f"{h['step_s'] / g['step_s']:.3f}, {mem_name} {h[mem_key] / g[mem_key]:.3f} (1.0 = no cost)")
        if "g" in results and "i" in results:
            g, i = results["g"], results["i"]
            print(f"region-bound (i) against merged (g): s/clip {i['clip_s'] / g['clip_s']:.3f}, s/step "
                  f"{i['step_s'] / g['step_s']:.3f}, {mem_name} {i[mem_key] / g[mem_key]:.3f} (1.0 = no cost)")


if __name__ == "__main__":
    main()
