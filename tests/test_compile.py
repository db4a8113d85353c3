"""Regional compilation (`--compile`, cdvideo.regional_compile): the repeated blocks compiled once per shape
and kept for the next renders, the eager UNet for renders that do not ask, composing with concepts, step
caching and FreeNoise windows; the flag in the sidecar, the batch file and `--from`; refused before loading
where torch cannot compile.

Most tests compile with torch's "eager" backend: what decides whether a render compiles again (dynamo's
tracing, its guards and its graph cache) is the same for every backend, which only turns a traced graph
into code, and inductor's C++ code generation takes a minute or more of a cold CPU for the tiny UNet's
graphs. The inductor test (frames against the eager render) is marked slow.
"""

import json

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from cdvideo import regional_compile
from cdvideo.config import RenderSettings
from cdvideo.errors import ConfigError
from cdvideo.render import check_inputs, render_to_file, resolve_settings
from conftest import make_concept
from test_step_cache import assert_unet_restored, unet_state

SMALL = dict(num_frames=8, height=32, width=32, steps=3, model="tiny", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def renderer(tiny_preset):
    """A Renderer of its own: the compiled blocks it keeps stay out of the session's shared tiny pipeline."""
    from cdvideo.render import Renderer

    return Renderer(tiny_preset, device="cpu", dtype="float32")


@pytest.fixture
def eager_backend(monkeypatch):
    monkeypatch.setattr(regional_compile, "BACKEND", "eager")


def settings_for(renderer, **fields):
    return resolve_settings(RenderSettings(**{"prompt": "a <new1> dog running", "seed": 3, **SMALL, **fields}),
                            renderer.preset)


def graphs_compiled(renderer, concepts=None, **fields) -> tuple[np.ndarray, int]:
    """One render's frames and how many graphs torch compiled for it."""
    before = counters["stats"]["unique_graphs"]
    frames = renderer.render(settings_for(renderer, **fields), concepts, progress=False)
    return frames, counters["stats"]["unique_graphs"] - before


def test_the_spatial_and_motion_transformer_blocks_and_the_resnets_are_compiled(renderer, eager_backend):
    unet = renderer.pipeline.unet
    renderer.render(settings_for(renderer, compile=True), progress=False)
    compiled = regional_compile.compiled_blocks(unet)
    expected = {name for name, module in unet.named_modules()
                if type(module).__name__ in ("BasicTransformerBlock", "ResnetBlock2D")}
    assert set(compiled) == expected
    assert any(".attentions." in name for name in compiled)  # spatial transformer blocks
    assert any(".motion_modules." in name for name in compiled)  # AnimateDiff's, inside AnimateDiffTransformer3D
    assert any(".resnets." in name for name in compiled)
    assert "forward" not in vars(unet) and unet._compiled_call_impl is None  # the UNet's own forward stays eager


def test_compiled_once_per_shape_and_reused(renderer, eager_backend):
    _, first = graphs_compiled(renderer, compile=True, seed=1)
    _, again = graphs_compiled(renderer, compile=True, seed=2, prompt="a cat sitting")
    _, other_shape = graphs_compiled(renderer, compile=True, height=48, width=48)
    _, first_shape = graphs_compiled(renderer, compile=True, seed=4)
    assert again == 0 and first_shape == 0  # another seed, prompt: the same graphs
    assert other_shape > 0


def test_a_render_without_compile_runs_eager_and_the_compiled_blocks_stay_for_the_next(renderer, eager_backend):
    unet = renderer.pipeline.unet
    plain, _ = graphs_compiled(renderer)
    compiled, _ = graphs_compiled(renderer, compile=True)
    kept = regional_compile.compiled_blocks(unet)
    before = unet_state(unet)

    def fail_if_compiled(module, *args):
        assert module._compiled_call_impl is None, "a compiled block ran in a render without compile"

    handles = [module.register_forward_pre_hook(fail_if_compiled) for module in kept.values()]
    try:
        again = renderer.render(settings_for(renderer), progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert np.array_equal(again, plain) and np.array_equal(compiled, plain)  # "eager" backend: the same kernels
    assert_unet_restored(unet, before)
    assert {n: m._compiled_call_impl for n, m in regional_compile.compiled_blocks(unet).items()} == \
        {n: m._compiled_call_impl for n, m in kept.items()}
    assert graphs_compiled(renderer, compile=True)[1] == 0


def test_a_merged_concept_compiles_nothing_again(renderer, eager_backend):
    """Merging edits the weights in place; parameters are graph inputs, so every strength uses the same graphs."""
    graphs_compiled(renderer, compile=True)
    for strength, start in ((1.0, 0.0), (0.5, 0.0), (1.0, 0.4)):
        concepts = [(make_concept(renderer.pipeline, seed=4, scale=2.0), strength, "test")]
        eager, _ = graphs_compiled(renderer, concepts, concept_binding="merged", concept_start=start)
        frames, graphs = graphs_compiled(renderer, concepts, compile=True, concept_binding="merged", concept_start=start)
        assert graphs == 0 and np.array_equal(frames, eager)


@pytest.mark.parametrize("binding", ["token", "region"])
def test_a_token_bound_concept_compiles_once_then_reuses(renderer, eager_backend, binding):
    """Bound processors on attn2 are another code path (with graph breaks at their data-dependent token
    checks): compiled on the first bound render of a shape, then reused by every bound render, whatever
    the concept object, strength or schedule."""
    graphs_compiled(renderer, compile=True)
    renders = []
    for seed, strength, start in ((5, 1.0, 0.0), (6, 1.0, 0.0), (6, 0.5, 0.0), (6, 1.0, 0.4)):
        concepts = [(make_concept(renderer.pipeline, seed=seed, scale=2.0), strength, "test")]
        eager, _ = graphs_compiled(renderer, concepts, concept_binding=binding, concept_start=start)
        frames, graphs = graphs_compiled(renderer, concepts, compile=True, concept_binding=binding, concept_start=start)
        assert np.array_equal(frames, eager)
        renders.append(graphs)
    assert renders[0] > 0 and renders[1:] == [0, 0, 0], renders
    assert_after = unet_state(renderer.pipeline.unet)
    graphs_compiled(renderer, compile=True)  # back to the plain processors (once: see docs/performance.md)
    assert graphs_compiled(renderer, compile=True, seed=8)[1] == 0
    assert_unet_restored(renderer.pipeline.unet, assert_after)


def test_composes_with_step_caching(renderer, eager_backend):
    """The cached steps' shallow branch calls the same compiled blocks (one graph more: the hook that keeps
    the deep feature on the cut's resnet)."""
    eager, _ = graphs_compiled(renderer, step_cache=2)
    frames, _ = graphs_compiled(renderer, step_cache=2, compile=True)
    assert np.array_equal(frames, eager)
    assert graphs_compiled(renderer, step_cache=2, compile=True, seed=9)[1] == 0
    assert "forward" not in vars(renderer.pipeline.unet)


def test_composes_with_freenoise_windows(renderer, eager_backend, monkeypatch):
    """FreeNoise swaps the motion blocks for its windowed ones for the render (compiled too) and rebuilds plain
    ones after it: those are compiled on the next compiled render, from the graphs torch already has."""
    windows = dict(num_frames=12, context_length=8, context_stride=4)
    eager, _ = graphs_compiled(renderer, **windows)
    compiled_kinds = []
    compile_blocks = regional_compile.compile_blocks

    def recording(unet):
        compile_blocks(unet)
        compiled_kinds.append({type(m).__name__ for m in regional_compile.compiled_blocks(unet).values()})

    monkeypatch.setattr(regional_compile, "compile_blocks", recording)
    frames, _ = graphs_compiled(renderer, compile=True, **windows)
    assert compiled_kinds == [{"BasicTransformerBlock", "FreeNoiseTransformerBlock", "ResnetBlock2D"}]
    assert np.array_equal(frames, eager)
    assert graphs_compiled(renderer, compile=True, seed=10, **windows)[1] == 0
    unet = renderer.pipeline.unet
    graphs_compiled(renderer, compile=True)
    assert len(regional_compile.compiled_blocks(unet)) == sum(
        type(m).__name__ in ("BasicTransformerBlock", "ResnetBlock2D") for m in unet.modules())


def test_batch_items_of_one_shape_compile_once(renderer, eager_backend, tmp_path):
    from cdvideo.batch import plan_batch, run_batch

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"a dog {word}", "seed": i, "compile": True, **SMALL,
                                           "num_frames": 4}) + "\n"
                               for i, word in enumerate(("running", "sitting", "jumping"))))
    items = plan_batch(prompts)
    before = counters["stats"]["unique_graphs"]
    first = run_batch(items[:1], tmp_path / "run", renderer=renderer, progress=False, gallery=False)
    between = counters["stats"]["unique_graphs"]
    rest = run_batch(items, tmp_path / "run", renderer=renderer, progress=False, gallery=False)
    assert [r["status"] for r in first.records] == ["done"]
    assert [r["status"] for r in rest.records] == ["skipped", "done", "done"]
    assert between > before and counters["stats"]["unique_graphs"] == between


def test_flag_sidecar_from_and_batch_field(renderer, eager_backend, tmp_path):
    from cdvideo.batch import plan_batch
    from cdvideo.cli import build_parser
    from cdvideo.cli.render import settings_from_args

    assert build_parser().parse_args(["render", "--prompt", "a dog", "--compile"]).compile is True
    assert build_parser().parse_args(["render", "--prompt", "a dog"]).compile is None
    request = RenderSettings(prompt="a dog running", seed=2, compile=True, **SMALL)
    result = render_to_file(request, tmp_path / "a.mp4", renderer=renderer, progress=False)
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["settings"]["compile"] is True
    repeated, _ = settings_from_args(build_parser().parse_args(["render", "--from", str(result.sidecar)]))
    assert repeated.compile is True
    again = render_to_file(repeated, tmp_path / "b.mp4", renderer=renderer, progress=False)
    assert np.array_equal(again.frames, result.frames)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a dog", "model": "tiny", "compile": True}) + "\n")
    assert [item.settings.compile for item in plan_batch(prompts)] == [True]
    prompts.write_text(json.dumps({"prompt": "a dog", "model": "tiny", "compile": "yes"}) + "\n")
    with pytest.raises(ConfigError, match="line 1: field 'compile': expected true or false"):
        plan_batch(prompts)


def test_without_a_cpp_compiler_it_is_one_line_before_loading(capsys, tmp_path, monkeypatch):
    import torch._inductor.config

    import cdvideo.models
    from cdvideo.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before validation finished")

    monkeypatch.setattr(cdvideo.models, "load_pipeline", refuse)
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("cdvideo-test-no-such-compiler",))
    monkeypatch.chdir(tmp_path)
    code = main(["render", "--model", "tiny", "--prompt", "a dog", "--device", "cpu", "--compile", "--quiet",
                 "--out", "dog.mp4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "compile on the CPU needs a C++ compiler" in err[0], err
    assert not list(tmp_path.iterdir())


def test_an_unsupported_device_is_refused_before_loading(tiny_preset):
    settings = resolve_settings(RenderSettings(prompt="a dog", compile=True, **{**SMALL, "device": "mps"}), tiny_preset)
    with pytest.raises(ConfigError, match="compile is supported on cpu and cuda, not on 'mps'"):
        check_inputs(settings, tiny_preset)


def test_on_the_cpu_inductor_keeps_the_layout_only_while_compiling(renderer, eager_backend):
    """Inductor's channels_last layout optimization is off for compiled CPU renders (measured slower), and
    torch's setting is as before after the render."""
    import torch._inductor.config

    before = torch._inductor.config.layout_optimization
    with regional_compile.compile_applied(renderer.pipeline, settings_for(renderer, compile=True)):
        assert torch._inductor.config.layout_optimization is False
        assert torch._dynamo.config.recompile_limit >= regional_compile.RECOMPILE_LIMIT
    assert torch._inductor.config.layout_optimization == before


def test_a_model_without_repeated_blocks_is_one_line():
    from types import SimpleNamespace

    from diffusers import ConfigMixin, ModelMixin

    class NoBlocks(ModelMixin, ConfigMixin):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

    with pytest.raises(ConfigError, match=r"has none of the blocks regional compilation compiles .*drop --compile"):
        with regional_compile.compile_applied(SimpleNamespace(unet=NoBlocks()), SimpleNamespace(compile=True)):
            pass


@pytest.mark.slow
def test_inductor_frames_within_one_level_of_eager_and_compiled_once(tiny_preset):
    """The real backend, on a Renderer of its own (the module's has eager-backend wrappers). Inductor's fused
    kernels add and multiply in another order, so latents differ by float rounding; after the VAE and the
    rounding to uint8 a pixel may move by one level (the full-forward compile did on the GPU,
    docs/performance.md; on this CPU the tiny model's frames came out identical). Cold, compiling the tiny
    UNet's graphs took ~90 s on a shared 2-core CPU (gcc); warm (inductor's cache on disk), ~7 s."""
    from cdvideo.render import Renderer

    renderer = Renderer(tiny_preset, device="cpu", dtype="float32")
    eager, _ = graphs_compiled(renderer, seed=21)
    frames, first = graphs_compiled(renderer, compile=True, seed=21)
    _, second = graphs_compiled(renderer, compile=True, seed=22, prompt="a cat sitting")
    assert np.abs(frames.astype(int) - eager.astype(int)).max() <= 1
    assert first > 0 and second == 0


def test_bench_fast_break_even():
    from conftest import load_script

    bench = load_script("bench_fast")
    assert bench.break_even(60.0, 10.0, 4.0) == 10  # 60 s of compiling, 6 s saved per clip
    assert bench.break_even(61.0, 10.0, 4.0) == 11
    assert bench.break_even(60.0, 4.0, 4.5) is None  # compiled clips not faster: never pays off
