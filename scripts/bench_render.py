"""Time `cdvideo render` against a plain diffusers AnimateDiffPipeline script, same weights and seed.

Builds an SD-1.5-shaped but narrow random model (the SD 1.5 block layout, AnimateDiff v2 motion
modules with a mid block, a 4-level VAE) as a local diffusers directory, then measures in one run:

  (a) the render with models loaded: `pipe(...)` in a plain script vs cdvideo's Renderer, in one
      process, alternating, median of --repeats;
  (b) the whole command, process start to video written: `python plain_script.py` vs
      `cdvideo render --model DIR`, alternating, median of --repeats.

The frames of (a) must be identical. Prints both ratios (cdvideo / plain; 1.00 = same speed).

    python scripts/bench_render.py [--size 128] [--frames 16] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PLAIN_SCRIPT = """
import sys, torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter
from diffusers.utils import export_to_video

model_dir, out, size, frames, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
adapter = MotionAdapter.from_pretrained(model_dir + "/motion_adapter")
pipe = AnimateDiffPipeline.from_pretrained(model_dir, motion_adapter=adapter)
pipe.scheduler = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler", beta_schedule="linear",
                                               clip_sample=False, timestep_spacing="linspace", steps_offset=1)
output = pipe(prompt="a dog running on the beach", negative_prompt="bad quality, worse quality",
              num_frames=frames, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
              generator=torch.Generator().manual_seed(42))
export_to_video(output.frames[0], out, fps=8)
"""


def build_narrow_sd15(path: Path) -> None:
    """SD 1.5's UNet layout and AnimateDiff v2's motion modules at a fraction of the width."""
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cdvideo.models.tiny import build_tokenizer, save_model_dir

    channels = (32, 64, 128, 128)  # SD 1.5: (320, 640, 1280, 1280)
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        components = dict(
            unet=UNet2DConditionModel(
                block_out_channels=channels, layers_per_block=2, cross_attention_dim=128, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                sample_size=32,
            ),
            motion_adapter=MotionAdapter(
                block_out_channels=channels, motion_layers_per_block=2, motion_num_attention_heads=8,
                motion_norm_num_groups=32, use_motion_mid_block=True, motion_max_seq_length=32,
            ),
            vae=AutoencoderKL(
                block_out_channels=(32, 64, 128, 128), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                norm_num_groups=32,
            ),
            text_encoder=CLIPTextModel(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=12,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )),
            tokenizer=tokenizer,
            scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False),
        )
    save_model_dir(components, path)


def bench_loaded(model_dir: Path, size: int, frames: int, steps: int, repeats: int) -> tuple[float, float, bool]:
    """(a): median seconds of plain `pipe(...)` and of cdvideo's render, models loaded; frames equal?"""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    from cdvideo.config import RenderSettings
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer

    adapter = MotionAdapter.from_pretrained(model_dir / "motion_adapter")
    plain = AnimateDiffPipeline.from_pretrained(model_dir, motion_adapter=adapter)
    plain.scheduler = DDIMScheduler.from_pretrained(
        model_dir, subfolder="scheduler", beta_schedule="linear", clip_sample=False,
        timestep_spacing="linspace", steps_offset=1)
    plain.set_progress_bar_config(disable=True)
    renderer = Renderer(load_preset(str(model_dir)), device="cpu", dtype="float32")
    settings = RenderSettings(prompt="a dog running on the beach", negative_prompt="bad quality, worse quality",
                              num_frames=frames, height=size, width=size, steps=steps, guidance_scale=7.5,
                              seed=42, scheduler="ddim")

    def run_plain():
        out = plain(prompt=settings.prompt, negative_prompt=settings.negative_prompt, num_frames=frames,
                    height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
                    generator=torch.Generator().manual_seed(42), output_type="np")
        return (out.frames[0] * 255).round().astype(np.uint8)

    plain_times, ours_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        plain_frames = run_plain()
        plain_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        our_frames = renderer.render(settings, progress=False)
        ours_times.append(time.perf_counter() - t)
    return statistics.median(plain_times), statistics.median(ours_times), np.array_equal(plain_frames, our_frames)


def bench_command(model_dir: Path, work: Path, size: int, frames: int, steps: int, repeats: int) -> tuple[float, float]:
    """(b): median seconds from process start to video written, plain script vs `cdvideo render`."""
    script = work / "plain_animatediff.py"
    script.write_text(PLAIN_SCRIPT)
    plain_cmd = [sys.executable, str(script), str(model_dir), str(work / "plain.mp4"), str(size), str(frames), str(steps)]
    ours_cmd = [sys.executable, "-m", "cdvideo", "render", "--model", str(model_dir), "--quiet",
                "--prompt", "a dog running on the beach", "--seed", "42", "--num-frames", str(frames),
                "--height", str(size), "--width", str(size), "--steps", str(steps), "--out", str(work / "ours.mp4")]
    plain_times, ours_times = [], []
    for _ in range(repeats):
        for cmd, times in ((plain_cmd, plain_times), (ours_cmd, ours_times)):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t)
    return statistics.median(plain_times), statistics.median(ours_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from cdvideo.cli.common import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "narrow-sd15"
        build_narrow_sd15(model_dir)
        print(f"model: SD-1.5-shaped narrow random model; {args.size}x{args.size}, {args.frames} frames, "
              f"{args.steps} steps, CPU float32, torch threads {torch.get_num_threads()}, repeats {args.repeats}")
        plain_a, ours_a, identical = bench_loaded(model_dir, args.size, args.frames, args.steps, args.repeats)
        print(f"(a) render, models loaded: plain diffusers {plain_a:.2f} s, cdvideo {ours_a:.2f} s, "
              f"ratio {ours_a / plain_a:.3f}; frames identical: {identical}")
        plain_b, ours_b = bench_command(model_dir, work, args.size, args.frames, args.steps, args.repeats)
        print(f"(b) whole command: plain diffusers script {plain_b:.2f} s, cdvideo render {ours_b:.2f} s, "
              f"ratio {ours_b / plain_b:.3f}")
        if not identical:
            sys.exit("frames differ between plain diffusers and cdvideo")


if __name__ == "__main__":
    main()
