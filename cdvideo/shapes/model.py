"""The Shapes model: an SD-shaped text-to-video model sized for 32x32 frames, and where it ships.

Same parts as SD 1.5 + AnimateDiff (VAE, CLIP text encoder, UNet with cross-attention, motion
adapter, DDIM), so every cdvideo feature (concepts, training, eval) runs on it unchanged. The
VAE downsamples by 4 (32x32 frames -> 8x8 latents); the tokenizer has one token per world word
and is 24 tokens long (the longest caption is 20). `scripts/train_shapes.py` trains it from these
configs; the trained weights ship in `cdvideo/shapes/model/` and load as `--model shapes`.
"""

from __future__ import annotations

from pathlib import Path

from cdvideo.shapes.world import WORDS

MODEL_DIR = Path(__file__).resolve().parent / "model"
SEED = 0
MAX_TOKENS = 24

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=16,
    sample_size=32,
)
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=4,  # diffusers' name for the number of heads
    norm_num_groups=16,
)
MOTION_ADAPTER_CONFIG = dict(
    block_out_channels=(64, 128),
    motion_layers_per_block=1,
    motion_norm_num_groups=16,
    motion_num_attention_heads=4,
    use_motion_mid_block=True,
    motion_max_seq_length=32,
)
TEXT_ENCODER_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_TOKENS,
    projection_dim=64,
)
# SD's noise schedule, DDIM as SD's own pipeline configures it: what the first training stages use.
NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SCHEDULER_CONFIG = dict(**NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                        timestep_spacing="leading")
# The same betas rescaled so the last step keeps nothing of the clean clip (Lin et al. 2024), with
# v-prediction (epsilon is undefined at zero SNR) and sampling from t = 999: what the last stages
# train with and the shipped model samples with (SCHEDULER_CONFIG + ZERO_SNR; configs/models/shapes.yaml).
ZERO_SNR = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")


def build_tokenizer():
    from cdvideo.models.tiny import build_tokenizer as build

    return build(WORDS, model_max_length=MAX_TOKENS)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_text_encoder(tokenizer):
    from cdvideo.models.tiny import build_text_encoder as build

    return build(tokenizer, TEXT_ENCODER_CONFIG)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_motion_adapter():
    from diffusers import MotionAdapter

    return MotionAdapter(**MOTION_ADAPTER_CONFIG)


def build_scheduler(zero_snr: bool = False):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{**SCHEDULER_CONFIG, **(ZERO_SNR if zero_snr else {})})
