"""Regional compilation of the motion UNet (`--compile`): torch.compile on its repeated blocks, compiled
once per shape and kept for the later renders of a batch.

diffusers' regional compilation (`ModelMixin.compile_repeated_blocks`, after PyTorch's recipe "Reducing
torch.compile cold start compilation time with regional compilation") compiles in place
(`module.compile()`) every submodule whose class the model names in `_repeated_blocks`, instead of the
whole forward: one compiled graph of a block class serves every block of that class whose parameters
have the same shapes, so it compiles in a fraction of a full compile's time. UNetMotionModel (diffusers
0.42) names no blocks and `compile_repeated_blocks` raises on it; REPEATED_BLOCKS names them here.

Only blocks are compiled, never the UNet's own `forward`: the step cache's patched forward, guidance
rescale, offload hooks and timing hooks on the UNet stay outside the graphs, and a cached step's
shallow branch calls the same compiled blocks as a full step does.

The compiled state is kept on the modules after a render (that is the point: the next render of the
same shape runs compiled code at once). Torch keeps the graphs per block class, guarded on the input
shapes, dtypes and devices and on the attributes the code reads, not on the module objects: a merged
concept changes weights in place (parameters are graph inputs) and compiles nothing again; FreeNoise's
rebuilt motion blocks are compiled on their next render without a new graph. A render that does not
ask for compilation runs the eager modules (`compile_applied` hides the compiled forwards for that
render and puts them back after it). What compiles again: docs/performance.md, "Regional compilation".
"""

from __future__ import annotations

import contextlib
import platform
import sys
from typing import Iterator

from cdvideo.errors import ConfigError

# The spatial and the motion transformer blocks (both diffusers' BasicTransformerBlock: AnimateDiff's
# AnimateDiffTransformer3D wraps one), FreeNoise's windowed replacement of the motion ones (long videos),
# and the resnets: everything of the UNet but its embeddings, samplers and in/out convolutions.
REPEATED_BLOCKS = ("BasicTransformerBlock", "FreeNoiseTransformerBlock", "ResnetBlock2D")
# Parameters are static in the graphs, so each parameter shape of a block class is a graph of its own:
# SD 1.5's UNet has 12 resnet shapes, more than torch's default limit of 8 graphs per function, beyond
# which dynamo runs the remaining blocks eager (a log warning only). Raised for compiled renders only.
RECOMPILE_LIMIT = 64
BACKEND = "inductor"
# On the CPU inductor turns every graph with a convolution to channels_last (its layout optimization); per
# compiled resnet that is a conversion in and out, and mkldnn's channels_last convolutions were slower
# here anyway (docs/performance.md: a UNet call 1.4-1.8x slower compiled with it, the same as eager without).
CPU_INDUCTOR_CONFIG = {"layout_optimization": False}


def check_compile(settings) -> None:
    """Refuse `compile` before a model loads where torch cannot compile: the Python, or the device's
    code generator (a C++ compiler on the CPU, Triton on CUDA)."""
    if not isinstance(settings.compile, bool):
        raise ConfigError(f"compile must be true or false, got {settings.compile!r}")
    if not settings.compile:
        return
    import torch

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(f"compile: torch.compile does not run on Python {platform.python_version()} "
                          f"({sys.implementation.name}) with torch {torch.__version__}: drop --compile")
    device = "cuda" if settings.device == "auto" and torch.cuda.is_available() else settings.device
    if device == "auto":
        device = "cpu"
    if device.startswith("cuda"):
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError("compile on CUDA needs Triton (pip install triton), which torch cannot find: "
                              "install it or drop --compile")
    elif device == "cpu":
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            raise ConfigError("compile on the CPU needs a C++ compiler (g++ or clang++ on PATH, or CXX=...), "
                              "none found: install one or drop --compile") from None
    else:
        raise ConfigError(f"compile is supported on cpu and cuda, not on {device!r}: drop --compile")


def compiled_blocks(unet) -> dict[str, object]:
    """Path -> module for every block of `unet` that runs compiled now."""
    return {name: module for name, module in unet.named_modules() if module._compiled_call_impl is not None}


def compile_blocks(unet) -> None:
    """`unet.compile_repeated_blocks()` with REPEATED_BLOCKS; blocks compiled before are left as they are
    (their compiled forward, and so torch's graphs, stay), blocks built since (FreeNoise's) are compiled."""
    unet._repeated_blocks = list(REPEATED_BLOCKS)
    if not compiled_blocks(unet):
        try:
            unet.compile_repeated_blocks(backend=BACKEND)
        except ValueError as error:  # diffusers: none of the classes found
            raise ConfigError(f"compile: this model's UNet ({type(unet).__name__}) has none of the blocks regional "
                              f"compilation compiles ({', '.join(REPEATED_BLOCKS)}): drop --compile") from error
        return
    for module in unet.modules():
        if type(module).__name__ in REPEATED_BLOCKS and module._compiled_call_impl is None:
            module.compile(backend=BACKEND)


@contextlib.contextmanager
def compile_applied(pipeline, settings) -> Iterator[None]:
    """One render with `settings.compile`: the UNet's repeated blocks compiled (kept after the render), or,
    for a render without it, any blocks compiled by an earlier render run eager and are compiled again after."""
    import torch

    unet = pipeline.unet
    if settings.compile:
        import torch._inductor.config

        compile_blocks(unet)
        inductor = CPU_INDUCTOR_CONFIG if unet.device.type == "cpu" else {}
        with (torch._dynamo.config.patch(recompile_limit=max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)),
              torch._inductor.config.patch(**inductor)):
            yield
        return
    hidden = {module: module._compiled_call_impl for module in compiled_blocks(unet).values()}
    for module in hidden:
        module._compiled_call_impl = None
    try:
        yield
    finally:
        for module, compiled in hidden.items():
            module._compiled_call_impl = compiled
