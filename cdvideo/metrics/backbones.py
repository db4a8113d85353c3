"""The one place metrics load pretrained image/text encoders (CLIP, DINO) from the hub or a local dir.

Uses transformers only (never diffusers), so `cdvideo eval` runs without a diffusion model. A
model id is a hub id or a local directory written by `save_pretrained`; tests point the same
code at tiny models saved locally. Offline (HF_HUB_OFFLINE) nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdvideo.errors import ModelNotAvailableError
from cdvideo.hub import hub_offline

CLIP_VIT_B32 = "openai/clip-vit-base-patch32"
DINO_VIT_B16 = "facebook/dino-vitb16"
DINO_VIT_S16 = "facebook/dino-vits16"

# Each embedding metric's model, as its source paper / VBench uses it; `--model METRIC=ID` overrides.
DEFAULT_MODELS = {
    "clip_temporal_consistency": CLIP_VIT_B32,
    "subject_consistency": DINO_VIT_B16,
    "background_consistency": CLIP_VIT_B32,
    "clip_t": CLIP_VIT_B32,
    "clip_i": CLIP_VIT_B32,
    "dino_i": DINO_VIT_S16,
}

@dataclass
class Backbone:
    """A loaded encoder: `kind` is `clip` (image and text towers) or `dino` (ViT, CLS token)."""

    kind: str
    model_id: str
    model: Any  # torch.nn.Module in eval mode on `device`
    processor: Any  # the model's own image processor: preprocessing exactly as it defines
    tokenizer: Any = None  # CLIP only
    device: str = "cpu"


class BackboneLoader:
    """Loads each (kind, model id) once per run and remembers failures, so a missing model is reported once."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._loaded: dict[tuple[str, str], Backbone | ModelNotAvailableError] = {}

    def get(self, kind: str, model_id: str) -> Backbone:
        key = (kind, model_id)
        if key not in self._loaded:
            try:
                self._loaded[key] = load_backbone(kind, model_id, self.device)
            except ModelNotAvailableError as error:
                self._loaded[key] = error
        loaded = self._loaded[key]
        if isinstance(loaded, ModelNotAvailableError):
            raise loaded
        return loaded


def load_backbone(kind: str, model_id: str, device: str) -> Backbone:
    """Load a CLIP or DINO encoder and its processor; a missing model is a one-line ModelNotAvailableError."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, CLIPModel

    local_dir = Path(model_id).expanduser()
    is_local = local_dir.is_dir()
    # A hub id is `name` or `namespace/name`; anything else is meant as a local path.
    looks_like_path = model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
    if not is_local and looks_like_path:
        raise ModelNotAvailableError(f"model directory not found: {model_id}")
    source = str(local_dir) if is_local else model_id
    offline = hub_offline() and not is_local
    kwargs = {"local_files_only": offline or is_local}
    try:
        processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        if kind == "clip":
            model = CLIPModel.from_pretrained(source, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        else:
            model = AutoModel.from_pretrained(source, **kwargs)
            tokenizer = None
    except (OSError, ValueError) as error:
        raise ModelNotAvailableError(_why_missing(model_id, is_local, offline, error)) from error
    model.to(device).eval()
    return Backbone(kind=kind, model_id=model_id, model=model, processor=processor, tokenizer=tokenizer, device=device)


def _why_missing(model_id: str, is_local: bool, offline: bool, error: Exception) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if is_local:
        return f"{model_id} is not a complete model directory ({first_line})"
    if offline:
        return (
            f"{model_id} is not in the local cache and HF_HUB_OFFLINE is set: "
            f"run `hf download {model_id}` while online, or pass --model METRIC=LOCAL_DIR"
        )
    return f"could not load {model_id}: {first_line}"
