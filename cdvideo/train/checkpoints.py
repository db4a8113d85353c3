"""Checkpoints that resume exactly: trainable weights, optimizer, RNG and sampler state, tensors only.

    checkpoints/step-000100/
        trainable.safetensors   trained UNet parameters (full paths) and `token_rows` (k, d)
        optimizer.pt            optimizer (and fp16 grad-scaler) state: tensors and numbers, read with weights_only=True
        rng-<rank>.safetensors  each process's generator state and sampler position
        state.json              step and score; written last, so a checkpoint without it is incomplete
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from cdvideo.errors import ConfigError
from cdvideo.files import write_json_atomic

TOKEN_ROWS = "token_rows"
# Settings that may change between a run and its resumption: none of them alters the trained values.
MAY_DIFFER_ON_RESUME = {
    "steps", "resume", "keep", "checkpoint_every", "validation_prompt", "validation_video", "out",
    "output_dir", "device", "score",
    "from_model",  # where a setting came from (the model's defaults or a flag) does not change it
}


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "state.json").read_text())


def save_checkpoint(checkpoint: Path, *, step: int, trainable: dict[str, torch.Tensor], token_rows: torch.Tensor,
                    optimizer_state: dict, is_main: bool, rank: int, rng: dict[str, torch.Tensor],
                    score: float | None, score_name: str) -> None:
    """Write one checkpoint; every process writes its own RNG file, the main process the rest."""
    from safetensors.torch import save_file

    checkpoint.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in rng.items()}, str(checkpoint / f"rng-{rank}.safetensors"))
    if not is_main:
        return
    tensors = {name: value.detach().float().cpu().contiguous() for name, value in trainable.items()}
    tensors[TOKEN_ROWS] = token_rows.detach().float().cpu().contiguous()
    save_file(tensors, str(checkpoint / "trainable.safetensors"))
    torch.save(optimizer_state, checkpoint / "optimizer.pt")
    write_json_atomic({"step": step, "score": score, "score_name": score_name}, checkpoint / "state.json")


def load_trainable(checkpoint: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "trainable.safetensors"))
    return tensors, tensors.pop(TOKEN_ROWS)


def load_optimizer_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)


def load_rng(checkpoint: Path, rank: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = checkpoint / f"rng-{rank}.safetensors"
    if not path.is_file():
        raise ConfigError(f"{checkpoint} has no RNG state for process {rank}: resume with the same number of processes")
    return load_file(str(path))


def check_resumable(saved: dict[str, Any], current: dict[str, Any], source: Path) -> None:
    """Refuse to resume with settings that would change what is trained."""
    changed = sorted(k for k in current if k not in MAY_DIFFER_ON_RESUME and saved.get(k) != current[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume from {source}: settings differ from the interrupted run ({details}); "
            "use the same settings or a new --output-dir"
        )


def prune_checkpoints(output_dir: Path, keep: str, best: Path | None) -> None:
    """Keep every checkpoint (all), the newest (last), or the newest and the best (best)."""
    if keep == "all":
        return
    checkpoints = list_checkpoints(output_dir)
    for checkpoint in checkpoints[:-1]:
        if keep == "best" and checkpoint == best:
            continue
        shutil.rmtree(checkpoint, ignore_errors=True)
