"""CPU threads: several batch processes on a CPU divide the cores; a single one keeps them all (issue 19)."""

from types import SimpleNamespace

import pytest
import torch

from cdvideo.batch import cpu_cores, run_batch, share_cpu_threads


@pytest.fixture
def threads_kept():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def state(processes, device="cpu"):
    return SimpleNamespace(num_processes=processes, device=torch.device(device))


@pytest.mark.parametrize("processes", [2, 3, 64])
def test_each_cpu_worker_takes_its_share_of_the_cores(threads_kept, processes):
    assert share_cpu_threads(state(processes)) == max(1, cpu_cores() // processes)
    assert torch.get_num_threads() == max(1, cpu_cores() // processes)


@pytest.mark.parametrize("worker", [state(1), state(2, "cuda")])
def test_a_single_process_or_gpu_workers_keep_the_threads(threads_kept, worker):
    assert share_cpu_threads(worker) is None
    assert torch.get_num_threads() == threads_kept


def test_a_single_batch_keeps_every_thread_and_records_it(threads_kept, tiny_renderer, tmp_path):
    from cdvideo.batch import plan_batch

    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog running\n")
    items = plan_batch(prompts, {"model": "tiny", "num_frames": 2, "height": 32, "width": 32, "steps": 1}, seeds=[1])
    report = run_batch(items, tmp_path / "out", renderer=tiny_renderer, progress=False, gallery=False)
    assert [r["threads"] for r in report.records] == [threads_kept]
    assert torch.get_num_threads() == threads_kept
