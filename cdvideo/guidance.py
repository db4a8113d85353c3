"""Guidance rescale for the AnimateDiff pipeline, which has no `guidance_rescale` of its own.

Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4): with
a zero-terminal-SNR schedule the guided prediction `uncond + g * (text - uncond)` grows in spread
with the guidance scale g, and the frames over-saturate. Rescaling it to the spread of the
text-conditioned prediction, blended by phi (0.7 in the paper), keeps high guidance usable.
diffusers' StableDiffusionPipeline does this (`guidance_rescale`, `rescale_noise_cfg`);
AnimateDiffPipeline does not, and it combines the two halves of the UNet's batched output itself.

So the rescale happens one step earlier, on the UNet's output: classifier-free guidance is linear
in both halves, so scaling both by k scales the guided prediction by k, and with
k = phi * std(text) / std(guided) + (1 - phi) the pipeline's own combination comes out exactly as
`rescale_noise_cfg` would make it (tests/test_guidance.py checks this against StableDiffusionPipeline).
The spread is taken per video over channels, frames and pixels, as diffusers takes it per image.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


def rescale_factor(uncond, text, guidance_scale: float, phi: float):
    """k per sample (shape (B, 1, ...)): the factor that turns the guided prediction into the rescaled one."""
    guided = uncond + guidance_scale * (text - uncond)
    dims = list(range(1, text.ndim))
    ratio = text.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * ratio + (1 - phi)


@contextlib.contextmanager
def guidance_rescale_applied(pipeline, settings) -> Iterator[None]:
    """While rendering `settings`, scale the UNet's CFG-batched output so that the pipeline's guided
    prediction is the rescaled one (phi = `settings.guidance_rescale`); nothing changes for phi 0 or
    without guidance (guidance scale <= 1, no unconditional half)."""
    phi = settings.guidance_rescale or 0.0  # None: unresolved settings, off
    if phi == 0 or settings.guidance_scale <= 1:
        yield
        return
    unet = pipeline.unet
    patched_before = "forward" in vars(unet)  # someone's wrapper (torch.compile, a test hook) stays ours to restore
    forward = unet.forward
    scale = settings.guidance_scale

    def rescaled_forward(*args, **kwargs):
        output = forward(*args, **kwargs)
        prediction = output[0] if isinstance(output, tuple) else output.sample
        if prediction.shape[0] % 2:  # not a [negative, positive] batch: nothing to rescale
            return output
        uncond, text = prediction.chunk(2)
        k = rescale_factor(uncond.float(), text.float(), scale, phi).to(prediction.dtype)
        prediction = prediction * k.repeat(2, *([1] * (k.ndim - 1)))
        if isinstance(output, tuple):
            return (prediction, *output[1:])
        return type(output)(sample=prediction)

    unet.forward = rescaled_forward
    try:
        yield
    finally:
        if patched_before:
            unet.forward = forward
        else:
            del unet.forward
