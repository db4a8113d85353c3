"""Training's scale-out and memory paths on the tiny model: several processes, checkpointing, accumulation,
mixed precision. Each must train what the plain one-process run trains (within float rounding)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from cdvideo.concept import load_concept
from cdvideo.train import train
from test_train import make_images, tiny_config


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("photos"))


def losses(result) -> np.ndarray:
    return np.atleast_1d(np.genfromtxt(result.output_dir / "loss.csv", delimiter=",", names=True)["loss"])


def assert_same_concept(a, b, rtol=1e-4, atol=1e-5):
    """Equal within float rounding as Adam sees it: its update is about +-lr (here 2e-3) whatever the gradient's
    size, so where a gradient is near zero a rounding-level change of it moves that value by up to a few 1e-6
    (measured: 1 value of 1024 by 2.2e-6 after 3 steps, two processes against one); atol 1e-5 is 0.5 % of one step."""
    a, b = load_concept(a), load_concept(b)
    assert set(a.deltas) == set(b.deltas) and set(a.tokens) == set(b.tokens)
    assert any(float(d.abs().max()) > 1e-4 for d in a.deltas.values()), "nothing trained"
    for name in a.deltas:
        torch.testing.assert_close(b.deltas[name], a.deltas[name], rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
    for token in a.tokens:
        torch.testing.assert_close(b.tokens[token], a.tokens[token], rtol=rtol, atol=atol)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(os.cpu_count() < 2, reason="two processes need two cores")
def test_two_processes_under_accelerate_train_the_one_process_concept(photos, tmp_path):
    """Two CPU processes of batch 1 (gloo) against one of batch 2: the same global batch and data order, so the
    same concept. The learning rate is scaled by batch x processes (2e-3 both times), as documented."""
    steps = 3
    one = train(tiny_config(photos, tmp_path / "one.safetensors", steps=steps, batch_size=2, learning_rate=1e-3,
                            checkpoint_every=1, keep="all"), progress=False)
    two = tmp_path / "two.safetensors"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               "-m", "cdvideo", "train", "--images", str(photos), "--class-word", "dog", "--out", str(two),
               "--model", "tiny", "--steps", str(steps), "--batch-size", "1", "--resolution", "32",
               "--learning-rate", "1e-3", "--checkpoint-every", "1", "--keep", "all", "--no-validation-video",
               "--device", "cpu", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CDVIDEO_DEBUG="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    assert_same_concept(one.concept, two)
    assert load_concept(two).training["processes"] == 2
    assert load_concept(two).training["learning_rate"] == load_concept(one.concept).training["learning_rate"] == 2e-3
    # The log holds the global batch's loss once per step, equal to the one-process log.
    folder = tmp_path / "two-train"
    logged = np.genfromtxt(folder / "loss.csv", delimiter=",", names=True)
    assert list(logged["step"]) == list(range(1, steps + 1))
    np.testing.assert_allclose(logged["loss"], losses(one), rtol=1e-5)
    # Checkpoints written once: one set of weights per step, each process's RNG state beside it.
    for step in range(1, steps + 1):
        files = sorted(p.name for p in (folder / "checkpoints" / f"step-{step:06d}").iterdir())
        assert files == ["optimizer.pt", "rng-0.safetensors", "rng-1.safetensors", "state.json",
                         "trainable.safetensors"]
    assert done.stdout.count("concept: ") == 1  # one process reports
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == ["two-train", "two.safetensors"]


def test_gradient_checkpointing_trains_the_same_concept(photos, tmp_path):
    plain = train(tiny_config(photos, tmp_path / "plain.safetensors", learning_rate=1e-3), progress=False)
    saved = train(tiny_config(photos, tmp_path / "ckpt.safetensors", learning_rate=1e-3, gradient_checkpointing=True),
                  progress=False)
    np.testing.assert_allclose(losses(saved), losses(plain), rtol=1e-6)
    assert_same_concept(plain.concept, saved.concept)


def test_accumulation_trains_what_the_bigger_batch_trains(photos, tmp_path):
    """Batch 1 x 2 accumulation steps against batch 2: the same images, noise and timesteps in the same order,
    the same scaled learning rate (1e-3 x 2), so the same concept."""
    big = train(tiny_config(photos, tmp_path / "big.safetensors", learning_rate=1e-3, batch_size=2), progress=False)
    accumulated = train(tiny_config(photos, tmp_path / "acc.safetensors", learning_rate=1e-3, batch_size=1,
                                    gradient_accumulation_steps=2), progress=False)
    np.testing.assert_allclose(losses(accumulated), losses(big), rtol=1e-5)
    assert_same_concept(big.concept, accumulated.concept)


def cli_train(photos, out, *flags):
    """`cdvideo train` on the tiny model in its own process (accelerate's precision is fixed once per process)."""
    command = [sys.executable, "-m", "cdvideo", "train", "--images", str(photos), "--class-word", "dog", "--out",
               str(out), "--model", "tiny", "--steps", "2", "--resolution", "32", "--learning-rate", "1e-3",
               "--no-validation-video", "--device", "cpu", "--quiet", *flags]
    return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=600)


def test_bf16_mixed_precision_trains_close_to_fp32(photos, tmp_path):
    """bf16 autocast keeps 8 bits of mantissa: not float rounding but a stated tolerance. The first loss within
    2 %; the trained change points the same way (cosine > 0.95; 0.972 measured after 2 steps): Adam's first
    updates are about +-lr per value whatever the gradient's size, so bf16 flips the values whose gradient is
    near zero. The trained weights themselves stay float32."""
    runs = {}
    for precision in ("no", "bf16"):
        done = cli_train(photos, tmp_path / f"{precision}.safetensors", "--mixed-precision", precision)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[precision] = np.genfromtxt(tmp_path / f"{precision}-train" / "loss.csv", delimiter=",", names=True)
    np.testing.assert_allclose(runs["bf16"]["loss"][0], runs["no"]["loss"][0], rtol=0.02)
    a, b = load_concept(tmp_path / "no.safetensors"), load_concept(tmp_path / "bf16.safetensors")
    flat_a = torch.cat([d.flatten() for d in a.deltas.values()])
    flat_b = torch.cat([b.deltas[n].flatten() for n in a.deltas])
    assert all(d.dtype == torch.float32 for d in b.deltas.values())
    assert float(torch.cosine_similarity(flat_a, flat_b, dim=0)) > 0.95


def test_fp16_on_the_cpu_is_refused_in_one_line_before_loading(photos, tmp_path):
    done = cli_train(photos, tmp_path / "x.safetensors", "--mixed-precision", "fp16")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --mixed-precision fp16 needs a CUDA GPU (on the CPU nothing would run in fp16); "
        "use --mixed-precision bf16 or no")
    assert not (tmp_path / "x-train").exists()


def test_memory_estimate_grows_with_rows_and_size_and_shrinks_with_checkpointing():
    from cdvideo.memory import parameter_counts
    from cdvideo.models import load_preset, locate
    from cdvideo.train.memory import estimate_training_bytes

    counts = parameter_counts(locate(load_preset("tiny")))
    estimate = lambda size, rows, **options: estimate_training_bytes(counts, "cpu", size, rows, 1000, **options)
    assert estimate(64, 2) > estimate(64, 1) > 4 * sum(v for k, v in counts.items() if k != "motion_adapter")
    assert estimate(128, 1) > estimate(64, 1)
    assert estimate(512, 2, gradient_checkpointing=True) < estimate(512, 2)
    assert estimate(512, 2, mixed_precision="bf16") < estimate(512, 2)


def test_training_that_does_not_fit_is_refused_before_loading_and_names_what_fits(photos, tmp_path, monkeypatch):
    import cdvideo.models
    from cdvideo.memory import NotEnoughMemoryError, parameter_counts
    from cdvideo.models import load_preset, locate
    from cdvideo.train import memory

    monkeypatch.setattr(cdvideo.models, "load_training_components",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model was loaded")))
    # Single images: the motion adapter is not loaded, so it is not in the run's estimate.
    counts = {k: v for k, v in parameter_counts(locate(load_preset("tiny"))).items() if k != "motion_adapter"}
    trained = int(memory.TRAINED_SHARE["kv"] * counts["unet"])
    full = memory.estimate_training_bytes(counts, "cpu", 256, 2, trained)
    checkpointed = memory.estimate_training_bytes(counts, "cpu", 256, 2, trained, gradient_checkpointing=True)
    monkeypatch.setattr(memory, "available_bytes", lambda device: (full + checkpointed) // 2)
    config = tiny_config(photos, tmp_path / "a.safetensors", batch_size=2, resolution=256)
    with pytest.raises(NotEnoughMemoryError) as error:
        train(config, progress=False)
    message = str(error.value)
    assert "\n" not in message and "add --gradient-checkpointing (estimate" in message and "fits" in message
    # Not even every option fits: the message says so and names what is left.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)
    with pytest.raises(NotEnoughMemoryError, match="even with --gradient-checkpointing and --batch-size 1 "
                                                   "--gradient-accumulation-steps 2 .* lower --resolution"):
        train(config, progress=False)
    assert not (tmp_path / "a-train").exists()


def test_the_estimate_is_printed_before_the_first_step(photos, tmp_path):
    done = cli_train(photos, tmp_path / "e.safetensors")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("peak memory estimate: ") and "GiB on cpu for 2 image(s) of 32 px per step" in lines[0]
    assert any(line.startswith("concept: ") for line in lines[1:])


def test_merged_training_gradients_are_diffusers_custom_diffusion_gradients():
    """Custom Diffusion stops the gradient of the start token's key and value (diffusers'
    CustomDiffusionAttnProcessor2_0, which ClassDiffusion's code trains with); merged training does the same."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    from cdvideo.models import load_preset, load_training_components
    from cdvideo.train.loop import stop_start_token_gradient, trainable_param_names

    unet = load_training_components(load_preset("tiny"), device="cpu", dtype=torch.float32)["unet"]
    names = trainable_param_names(unet, "kv")
    params = dict(unet.named_parameters())
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, 8, 8, generator=generator)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    timesteps = torch.tensor([10, 700])

    def gradients(detach: bool) -> tuple[dict, torch.Tensor]:
        unet.requires_grad_(False)
        for name in names:
            params[name].requires_grad_(True)
            params[name].grad = None
        remove = stop_start_token_gradient(unet, names) if detach else (lambda: None)
        output = unet(latents, timesteps, hidden).sample
        output.square().mean().backward()
        remove()
        return {n: params[n].grad.clone() for n in names}, output.detach()

    ours, ours_output = gradients(detach=True)
    plain, plain_output = gradients(detach=False)
    assert torch.equal(ours_output, plain_output)  # the forward is unchanged to the bit

    processors = {}
    for name, processor in unet.attn_processors.items():
        layer = unet.get_submodule(name.rsplit(".processor", 1)[0])
        if not name.endswith("attn2.processor"):
            processors[name] = processor
            continue
        processors[name] = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=False,
                                                           hidden_size=layer.to_k.weight.shape[0],
                                                           cross_attention_dim=layer.to_k.weight.shape[1])
        processors[name].load_state_dict({"to_k_custom_diffusion.weight": layer.to_k.weight.detach(),
                                          "to_v_custom_diffusion.weight": layer.to_v.weight.detach()})
    unet.requires_grad_(False)
    unet.set_attn_processor(processors)  # its trained copies require gradient
    output = unet(latents, timesteps, hidden).sample
    theirs_params = {n: p for n, p in unet.attn_processors.items() if n.endswith("attn2.processor")}
    output.square().mean().backward()
    torch.testing.assert_close(output, ours_output, rtol=1e-5, atol=1e-6)
    for name in names:
        processor = theirs_params[name.split(".to_")[0] + ".processor"]
        kind = "to_k" if ".to_k." in name else "to_v"
        theirs = getattr(processor, f"{kind}_custom_diffusion").weight.grad
        torch.testing.assert_close(ours[name], theirs, rtol=1e-4, atol=1e-9)
    assert any(not torch.allclose(plain[n], ours[n], rtol=1e-3) for n in names)  # the detach matters


def test_learning_rate_scales_as_diffusers_custom_diffusion_scales_it(photos, tmp_path):
    """lr x batch x processes x accumulation, and x2 with prior preservation (the class images join the batch)."""
    from cdvideo.train import ConceptData

    plain = train(tiny_config(photos, tmp_path / "a.safetensors", steps=1, batch_size=2, gradient_accumulation_steps=3,
                              learning_rate=1e-5), progress=False)
    assert load_concept(plain.concept).training["learning_rate"] == pytest.approx(6e-5)
    prior = train(tiny_config(photos, tmp_path / "b.safetensors", steps=1, batch_size=2, learning_rate=1e-5,
                              with_prior_preservation=True, binding="merged",
                              concepts=[ConceptData(str(photos), "dog", class_images=str(photos))]), progress=False)
    assert load_concept(prior.concept).training["learning_rate"] == pytest.approx(4e-5)
    unscaled = train(tiny_config(photos, tmp_path / "c.safetensors", steps=1, batch_size=2, learning_rate=1e-5,
                                 scale_lr=False), progress=False)
    assert load_concept(unscaled.concept).training["learning_rate"] == pytest.approx(1e-5)
