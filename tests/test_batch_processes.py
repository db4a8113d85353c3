"""Batch runs in real subprocesses: killed with SIGKILL and resumed; sharded over 2 processes by accelerate."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cdvideo.batch import cpu_cores
from cdvideo.cli import main
from cdvideo.export import read_video
from cdvideo.sidecar import read_sidecar

FLAGS = ["--model", "tiny", "--num-frames", "4", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]


def finished_items(out):
    """Sidecars under their final name: what a resumed run counts as done."""
    return sorted(p for p in out.glob("0*.json"))


def test_sigkill_leaves_nothing_truncated_and_the_next_run_completes(tmp_path, tiny_pipeline):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog running\na cat on a sofa\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cdvideo", "batch", str(prompts), "--out", str(out), "--seeds", "1", *FLAGS]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    first_done = None
    # Kill while the second video is being written if we catch it, else as soon as the first finished.
    while time.monotonic() < deadline and process.poll() is None:
        if finished_items(out):
            first_done = first_done or time.monotonic()
            if list(out.glob(".*.partial*")) or time.monotonic() - first_done > 0.2:
                break
        time.sleep(0.01)
    assert process.poll() is None, f"the batch ended before it could be killed: {process.stderr.read()[-500:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()

    done_before = finished_items(out)
    assert len(done_before) == 1
    for sidecar in done_before:  # everything under a final name is complete
        frames, _ = read_video(out / read_sidecar(sidecar)["video"])
        assert frames.shape == (4, 32, 32, 3)

    assert main(command[3:]) == 0  # the same command again, in this process
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records].count("skipped") == len(done_before)
    assert all(r["status"] in ("done", "skipped") for r in records)
    assert not list(out.glob(".*.partial*"))
    for record in records:
        assert read_video(out / record["video"])[0].shape == (4, 32, 32, 3)


ORPHAN_WRITER = """
import os, signal, subprocess, sys
from cdvideo.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    # Like imageio-ffmpeg's ffmpeg: its own process group, so it outlives us, and it (re)opens the
    # output by name after a while (the +faststart pass rewrites the file in place).
    subprocess.Popen(["sh", "-c", f"sleep 1; echo late > '{tmp}'"], preexec_fn=os.setpgrp)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_that_outlives_its_killed_process_cannot_bring_a_partial_back(tmp_path):
    from cdvideo.batch import remove_leftovers

    out = tmp_path / "out"
    out.mkdir()
    killed = subprocess.run([sys.executable, "-c", ORPHAN_WRITER, str(out / "0000-a-dog-1.mp4")])
    assert killed.returncode == -signal.SIGKILL
    assert list(out.glob(".*.partial*"))  # what the killed run left
    remove_leftovers(out)  # what the next run does first
    time.sleep(2)  # the orphan has written by now, if it could
    assert not list(out.iterdir())


@pytest.mark.skipif(os.cpu_count() < 2, reason="two processes need two cores")
def test_two_processes_share_the_items_and_the_manifest_ends_complete(tmp_path, tiny_pipeline, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog running\na cat on a sofa\n")
    out = tmp_path / "out"
    code = main(["batch", str(prompts), "--out", str(out), "--seeds", "1,2", "--processes", "2", *FLAGS])
    assert code == 0, capsys.readouterr()
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert all(r["status"] == "done" for r in records)
    assert {r["process"] for r in records} == {0, 1}  # each process rendered its own share
    if not torch.cuda.is_available():  # on a CPU each process rendered with its share of the cores
        assert {r["threads"] for r in records} == {max(1, cpu_cores() // 2)}
    for record in records:
        assert read_sidecar(out / record["sidecar"])["video"] == record["video"]
    assert not list(out.glob(".manifest.part*"))
    assert (out / "index.html").read_text().count("<video ") == 4
