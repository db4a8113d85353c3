"""Step caching for the motion UNet: DeepCache (Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for Free").

A UNet's deep features change slowly from one denoising step to the next, its shallow ones quickly.
So every `interval` steps the whole UNet runs ("full" step) and the feature its deep part hands to
the shallow up layers is kept; on the steps between ("cached" steps) only the shallow branch runs:
`conv_in`, the down layers that make the shallow skip features, and the up layers that take them,
starting from the kept deep feature. Everything else is skipped, the motion modules of the skipped
layers included (the DeepCache package, 0.1.1, leaves the motion modules of `up_blocks.3`'s skipped
layers running on its cached inputs: the same values at full cost; here they do not run).

The branch is counted in skip connections, the finest cut DeepCache makes: the UNet's skip features
are numbered from the shallowest, 0 = `conv_in`'s output, then one per down layer (resnet + attention
+ motion module) and per downsampler, in the order the down path makes them (12 on SD 1.5). Branch
m recomputes features 0..m and the up layers that take them; the kept feature is what the up layer
that takes feature m receives from below, before it is concatenated with its skip. Branch 0 is
DeepCache's default for SD 1.5 (block 0, layer 0): `conv_in`, then only the last up layer (resnet,
attention, motion module) and the output convolution; the largest branch skips only the mid block.

Why our own and not the `DeepCache` package: it wraps the blocks' `forward` methods (which FreeNoise's
split inference then wraps again), runs skipped motion modules, and counts steps by looking the
timestep up in the scheduler's list, which FreeInit's restarts and schedulers with repeated
timesteps confuse. Here one `forward` is patched on the UNet for one render: full steps call the
UNet's own `forward` (so they are diffusers' computation exactly, and an interval of 1 is the plain
render), and a step counter restarts whenever the timestep rises (a new FreeInit pass starts with a
full step). The concepts' processors live on the attention modules, which cached steps call just as
the blocks do, so merged and token-bound concepts, LoRAs and FreeNoise's windowed motion modules
all work unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

from cdvideo.errors import ConfigError

# DeepCache's uniform interval for SD 1.5 (their paper's N=3 row: ~2.3x at a small quality cost).
DEFAULT_INTERVAL = 3


def check_step_cache(settings) -> None:
    """Validate `step_cache` and `step_cache_branch` before a model loads (the branch's upper bound needs the UNet)."""
    for name in ("step_cache", "step_cache_branch"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            what = "an interval in steps (0 or 1 is off)" if name == "step_cache" else "a skip-connection index (0 = shallowest)"
            raise ConfigError(f"{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class _Cut:
    """Where the branch cuts the up path: up block `block`, its resnet `layer` takes skip feature `skip`."""

    skip: int
    block: int
    layer: int
    hidden_channels: int  # channels of the kept feature (the rest of that resnet's input is the skip)


def skip_count(unet) -> int:
    """How many skip features the down path makes (`conv_in`'s included): the branches are 0..this-1."""
    return 1 + sum(len(b.resnets) + (1 if b.downsamplers is not None else 0) for b in unet.down_blocks)


def find_cut(unet, branch: int) -> _Cut:
    """The up layer that takes skip feature `branch`; refuses a branch the UNet does not have."""
    count = skip_count(unet)
    if not 0 <= branch < count:
        raise ConfigError(f"step_cache_branch must be between 0 and {count - 1} for this model "
                          f"(its skip connections, 0 = shallowest), got {branch}")
    channels = list(reversed(unet.config.block_out_channels))  # each up block's output channels
    end = count
    for i, block in enumerate(unet.up_blocks):
        for j in range(len(block.resnets)):
            if end - 1 - j == branch:
                # From below: the mid block's (= deepest block's) output, the previous up block's, or this one's.
                hidden = channels[i] if j > 0 else channels[max(i - 1, 0)]
                return _Cut(branch, i, j, hidden)
        end -= len(block.resnets)
    raise AssertionError("every skip feature is taken by an up layer")


def _check_supported(unet) -> None:
    if unet.config.addition_embed_type is not None or unet.encoder_hid_proj is not None:
        raise ConfigError("step_cache supports UNets without added embeddings (SD 1.5 + AnimateDiff); "
                          f"this one has addition_embed_type={unet.config.addition_embed_type!r}: set step_cache 0")
    if any(getattr(block, "s1", None) for block in unet.up_blocks):
        raise ConfigError("step_cache and FreeU together are not supported: disable FreeU or set step_cache 0")


class StepCache:
    """The patched `forward` of one render: the UNet's own on full steps, the shallow branch on cached ones."""

    def __init__(self, unet, forward, interval: int, cut: _Cut):
        self.unet, self.forward, self.interval, self.cut = unet, forward, interval, cut
        self.deep = None  # the kept feature of the last full step
        self.calls = 0  # UNet calls since this pass of the denoising loop began
        self.last_t: float | None = None
        self.full_steps = self.cached_steps = 0

    def __call__(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        t = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
        if self.last_t is not None and t > self.last_t:
            self.calls = 0  # the timestep rose: a new pass (FreeInit) starts from noise, the kept feature is stale
        self.last_t = t
        full = self.calls % self.interval == 0
        self.calls += 1
        shape = (sample.shape[0] * sample.shape[2], self.cut.hidden_channels)
        plain = args or kwargs.get("down_block_additional_residuals") is not None \
            or kwargs.get("mid_block_additional_residual") is not None  # ControlNet-style residuals: always full
        if full or plain or self.deep is None or tuple(self.deep.shape[:2]) != shape:
            self.full_steps += 1
            return self._full(sample, timestep, encoder_hidden_states, *args, **kwargs)
        self.cached_steps += 1
        return shallow_forward(self.unet, sample, timestep, encoder_hidden_states, deep=self.deep, cut=self.cut, **kwargs)

    def _full(self, *args, **kwargs):
        """The UNet's own forward; a hook keeps what the cut's up layer receives from below."""
        cut = self.cut

        def keep(module, hook_args, hook_kwargs):
            joined = hook_kwargs["input_tensor"] if "input_tensor" in hook_kwargs else hook_args[0]
            self.deep = joined[:, : cut.hidden_channels].clone()  # (b*f, c_hidden, h, w): cat([hidden, skip])

        handle = self.unet.up_blocks[cut.block].resnets[cut.layer].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            return self.forward(*args, **kwargs)
        finally:
            handle.remove()


def _shallow(unet, sample, timestep, encoder_hidden_states, timestep_cond=None, attention_mask=None,
             cross_attention_kwargs=None, added_cond_kwargs=None, return_dict: bool = True, *, deep, cut: _Cut):
    """UNetMotionModel.forward (diffusers 0.42) with the down path stopped after skip feature `cut.skip`
    and the up path started at the cut's layer from `deep`; each layer is called as its block calls it."""
    import torch
    from diffusers.models.unets.unet_motion_model import UNetMotionOutput

    # 1. time, as UNetMotionModel.forward makes it
    forward_upsample_size = any(s % 2**unet.num_upsamplers != 0 for s in sample.shape[-2:])
    if attention_mask is not None:
        attention_mask = (1 - attention_mask.to(sample.dtype)) * -10000.0
        attention_mask = attention_mask.unsqueeze(1)
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        if sample.device.type == "mps":
            dtype = torch.float32 if dtype == torch.float64 else torch.int32
        timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
    elif len(timesteps.shape) == 0:
        timesteps = timesteps[None].to(sample.device)
    num_frames = sample.shape[2]
    timesteps = timesteps.expand(sample.shape[0])
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=unet.dtype), timestep_cond)
    emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)
    attention = dict(encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs,
                     attention_mask=attention_mask, encoder_attention_mask=None, return_dict=False)

    # 2. pre-process: (b, c, f, h, w) -> (b*f, c, h, w)
    sample = sample.permute(0, 2, 1, 3, 4).reshape((sample.shape[0] * num_frames, -1) + sample.shape[3:])
    hidden = unet.conv_in(sample)

    # 3. down, only as far as skip feature `cut.skip`
    skips = [hidden]
    for block in unet.down_blocks:
        if len(skips) > cut.skip:
            break
        attentions = getattr(block, "attentions", None)
        for i, (resnet, motion) in enumerate(zip(block.resnets, block.motion_modules)):
            if len(skips) > cut.skip:
                break
            hidden = resnet(input_tensor=hidden, temb=emb)
            if attentions is not None:
                hidden = attentions[i](hidden_states=hidden, **attention)[0]
            hidden = motion(hidden, num_frames=num_frames)
            skips.append(hidden)
        if block.downsamplers is not None and len(skips) <= cut.skip:
            for downsampler in block.downsamplers:
                hidden = downsampler(hidden_states=hidden)
            skips.append(hidden)

    # 4. up, from the kept deep feature at the cut's layer
    hidden = deep
    end = skip_count(unet) - sum(len(b.resnets) for b in unet.up_blocks[: cut.block])
    for i in range(cut.block, len(unet.up_blocks)):
        block = unet.up_blocks[i]
        attentions = getattr(block, "attentions", None)
        for j in range(cut.layer if i == cut.block else 0, len(block.resnets)):
            hidden = torch.cat([hidden, skips[end - 1 - j]], dim=1)
            hidden = block.resnets[j](input_tensor=hidden, temb=emb)
            if attentions is not None:
                hidden = attentions[j](hidden_states=hidden, **attention)[0]
            hidden = block.motion_modules[j](hidden, num_frames=num_frames)
        end -= len(block.resnets)
        if block.upsamplers is not None:
            size = skips[end - 1].shape[2:] if forward_upsample_size and i < len(unet.up_blocks) - 1 else None
            for upsampler in block.upsamplers:
                hidden = upsampler(hidden_states=hidden, output_size=size)

    # 5. post-process: (b*f, c, h, w) -> (b, c, f, h, w)
    if unet.conv_norm_out:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    hidden = unet.conv_out(hidden)
    hidden = hidden[None, :].reshape((-1, num_frames) + hidden.shape[1:]).permute(0, 2, 1, 3, 4)
    return UNetMotionOutput(sample=hidden) if return_dict else (hidden,)


def _lora_scaled(function):
    """diffusers' own handling of `cross_attention_kwargs["scale"]` (PEFT LoRA scale), as on the UNet's forward."""
    from diffusers.utils.peft_utils import apply_lora_scale

    return apply_lora_scale("cross_attention_kwargs")(function)


def shallow_forward(unet, sample, timestep, encoder_hidden_states, **kwargs):
    """One cached step: the shallow branch of `unet` from the kept deep feature (`deep=`, `cut=` in kwargs)."""
    return _lora_scaled(_shallow)(unet, sample, timestep, encoder_hidden_states, **kwargs)


@contextlib.contextmanager
def step_cache_applied(pipeline, settings) -> Iterator[StepCache | None]:
    """Step caching at `settings.step_cache` (interval) and `settings.step_cache_branch` for one render;
    the UNet's `forward` is as before after it (nothing else is changed). Yields the cache (its
    `full_steps` / `cached_steps` counts), or None when off (interval 0 or 1)."""
    interval = settings.step_cache
    if interval <= 1:
        yield None
        return
    unet = pipeline.unet
    _check_supported(unet)
    cut = find_cut(unet, settings.step_cache_branch)
    patched_before = "forward" in vars(unet)  # someone's wrapper (torch.compile, offload hooks) stays theirs
    forward = unet.forward
    cache = StepCache(unet, forward, interval, cut)
    unet.forward = cache
    try:
        yield cache
    finally:
        if patched_before:
            unet.forward = forward
        else:
            del unet.forward
        cache.deep = None
