"""The concept file: one `.safetensors` holding what a ClassDiffusion run learned.

Tensors:
    token.<TOKEN>                      (n_vectors, dim)  embedding of a learned token such as <new1>
    unet.<PARAM>.delta                 full change of one UNet parameter relative to the base
    unet.<PARAM>.delta_up / .delta_down  the same change as low-rank factors: delta = up @ down
where <PARAM> is the parameter's full path in the UNet, e.g.
`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight`; only the spatial
cross-attention projections (to_k, to_v, and to_q / to_out.0 for `crossattn` training) are allowed.

Header metadata (strings): format, format_version, tokens and class_words (JSON), base_model,
base_fingerprint, method and training (JSON). Deltas rather than trained weights make strength
scaling, several concepts at once, and other SD 1.5 checkpoints possible (design decision 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cdvideo.errors import ConceptFileError, InputFileError
from cdvideo.files import atomic_path

FORMAT = "cdvideo.concept"
FORMAT_VERSION = "1"

# Spatial cross-attention projections of the SD 1.5 UNet. The motion modules' temporal
# self-attentions are also called `attn2` but live under `motion_modules`, which this excludes.
ALLOWED_PARAM = re.compile(
    r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+"
    r"\.attn2\.(to_k|to_v|to_q|to_out\.0)\.(weight|bias)$"
)
_DELTA_KEY = re.compile(r"^unet\.(?P<param>.+)\.(?P<kind>delta|delta_up|delta_down)$")
_TOKEN_KEY = re.compile(r"^token\.(?P<token>.+)$")


@dataclass
class Concept:
    """Learned tokens and UNet parameter changes, relative to a base model."""

    # token -> (n_vectors, dim) embedding
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    # token -> class word, e.g. {"<new1>": "dog"}
    class_words: dict[str, str] = field(default_factory=dict)
    # UNet parameter path -> full delta, or (up, down) low-rank factors
    deltas: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    base_model: str = ""
    # fingerprint_unet() of the base the deltas were taken against ("" when unknown)
    base_fingerprint: str = ""
    method: str = "classdiffusion"
    training: dict[str, Any] = field(default_factory=dict)

    def delta(self, param: str) -> torch.Tensor:
        """The full delta of `param` (low-rank factors multiplied out), in float32."""
        value = self.deltas[param]
        if isinstance(value, tuple):
            up, down = value
            return up.float() @ down.float()
        return value.float()

    def validate(self, source: str = "concept") -> None:
        """Check internal consistency; raise ConceptFileError naming the bad entry."""
        if not self.tokens and not self.deltas:
            raise ConceptFileError(f"{source}: holds neither tokens nor weight changes")
        for token, embedding in self.tokens.items():
            if not token or any(c.isspace() for c in token):
                raise ConceptFileError(f"{source}: token {token!r} must be one word without spaces")
            if embedding.ndim != 2 or embedding.shape[0] < 1:
                raise ConceptFileError(
                    f"{source}: token {token!r} embedding must be (n_vectors, dim), got {tuple(embedding.shape)}"
                )
        dims = {e.shape[1] for e in self.tokens.values()}
        if len(dims) > 1:
            raise ConceptFileError(f"{source}: token embeddings have different sizes {sorted(dims)}")
        unknown_classes = sorted(set(self.class_words) - set(self.tokens))
        if unknown_classes:
            raise ConceptFileError(f"{source}: class_words names tokens not in the file: {unknown_classes}")
        for name, tensor in [*((f"token {t}", e) for t, e in self.tokens.items()),
                             *((f"delta of {p}", d) for p, v in self.deltas.items() for d in (v if isinstance(v, tuple) else (v,)))]:
            # A NaN or infinity renders an all-black video without any other sign.
            if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
                what = "not floating point" if not tensor.is_floating_point() else "holds NaN or infinite values"
                raise ConceptFileError(f"{source}: the {name} {what}: the file is damaged; train or convert it again")
        for param, value in self.deltas.items():
            if not ALLOWED_PARAM.match(param):
                raise ConceptFileError(
                    f"{source}: {param!r} is not a spatial cross-attention projection of the UNet "
                    "(only ...attentions.N.transformer_blocks.N.attn2.to_k/to_v/to_q/to_out.0 may change)"
                )
            if isinstance(value, tuple):
                up, down = value
                if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
                    raise ConceptFileError(
                        f"{source}: low-rank factors of {param!r} do not multiply: "
                        f"up {tuple(up.shape)} @ down {tuple(down.shape)}"
                    )


def suggest_token(token: str) -> str:
    """A new-token spelling for `token`: `dog` -> `<dog1>`."""
    stem = re.sub(r"[^a-z0-9]", "", token.lower()) or "new"
    return f"<{stem}1>"


def check_new_token(tokenizer, token: str, source: str = "concept") -> None:
    """Refuse a token that the tokenizer already knows as a word or word-piece, asked as it tokenizes.

    CLIP's vocabulary stores `dog</w>`, not `dog`, so a look-up of the token itself finds nothing, and
    the added token would then replace the word `dog` in every prompt.
    """
    from cdvideo.errors import InjectionError

    vocab = tokenizer.get_vocab()
    pieces = tokenizer.tokenize(token)
    if token in vocab or (len(pieces) == 1 and pieces[0] in vocab):
        raise InjectionError(
            f"{source}: token {token!r} is already a word or word-piece of the tokenizer ({pieces[0] if pieces else token}), "
            f"so it would replace that word in every prompt: use a new token such as {suggest_token(token)}"
        )


def fingerprint_unet(unet: torch.nn.Module) -> str:
    """A short hash of the base weights that concepts change (spatial cross-attention k/v).

    Hashed in float16 so that a model loaded in float32 or float16 has the same fingerprint.
    """
    digest = hashlib.sha256()
    params = dict(unet.named_parameters())
    for name in sorted(n for n in params if ALLOWED_PARAM.match(n) and re.search(r"\.(to_k|to_v)\.weight$", n)):
        digest.update(name.encode())
        digest.update(params[name].detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_concept(concept: Concept, path: str | os.PathLike) -> Path:
    """Write `concept` to `path` (.safetensors) atomically."""
    from safetensors.torch import save_file

    concept.validate(str(path))
    tensors: dict[str, torch.Tensor] = {}
    for token, embedding in concept.tokens.items():
        tensors[f"token.{token}"] = embedding.detach().cpu().contiguous()
    for param, value in concept.deltas.items():
        if isinstance(value, tuple):
            tensors[f"unet.{param}.delta_up"] = value[0].detach().cpu().contiguous()
            tensors[f"unet.{param}.delta_down"] = value[1].detach().cpu().contiguous()
        else:
            tensors[f"unet.{param}.delta"] = value.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokens": json.dumps(list(concept.tokens)),
        "class_words": json.dumps(concept.class_words),
        "base_model": concept.base_model,
        "base_fingerprint": concept.base_fingerprint,
        "method": concept.method,
        "training": json.dumps(concept.training),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return Path(path)


def _json_field(metadata: dict[str, str], key: str, default: Any, source: str) -> Any:
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key])
    except (json.JSONDecodeError, RecursionError):
        raise ConceptFileError(f"{source}: metadata field {key!r} is not valid JSON") from None


def recorded_binding(path: str | os.PathLike) -> str | None:
    """The binding a cdvideo concept file says it was trained with, from its header alone (no tensors read);
    None for files from other tools, files from before bindings, and unreadable files (load_concept reports those)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    if metadata.get("format") != FORMAT:
        return None
    try:
        training = _json_field(metadata, "training", {}, str(path))
    except ConceptFileError:
        return None
    return training.get("binding") if isinstance(training, dict) else None


def load_concept(path: str | os.PathLike) -> Concept:
    """Read and validate a concept file; every problem is a one-line ConceptFileError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise InputFileError(f"concept file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ConceptFileError(
            f"{source}: not a readable safetensors file (corrupt or truncated?): {error}".splitlines()[0]
        ) from error
    if metadata.get("format") != FORMAT:
        raise ConceptFileError(
            f"{source}: not a cdvideo concept file (format {metadata.get('format')!r}); "
            "convert files from other tools with `cdvideo concept convert`"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ConceptFileError(
            f"{source}: concept format version {metadata.get('format_version')!r} is not supported "
            f"by this cdvideo (reads version {FORMAT_VERSION}); upgrade cdvideo"
        )

    class_words = _json_field(metadata, "class_words", {}, source)
    if not isinstance(class_words, dict) or not all(isinstance(w, str) and w.strip() for w in class_words.values()):
        raise ConceptFileError(f"{source}: class_words must map each token to a class word (text), got "
                               f"{metadata.get('class_words', '')[:40]!r}")
    training = _json_field(metadata, "training", {}, source)
    concept = Concept(
        class_words=class_words,
        base_model=metadata.get("base_model", ""),
        base_fingerprint=metadata.get("base_fingerprint", ""),
        method=metadata.get("method", ""),
        training=training if isinstance(training, dict) else {},
    )
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if match := _TOKEN_KEY.match(key):
            concept.tokens[match["token"]] = tensor
        elif match := _DELTA_KEY.match(key):
            if match["kind"] == "delta":
                concept.deltas[match["param"]] = tensor
            else:
                factors.setdefault(match["param"], {})[match["kind"]] = tensor
        else:
            raise ConceptFileError(f"{source}: unexpected tensor {key!r} (expected token.* or unet.*.delta*)")
    for param, pair in factors.items():
        if set(pair) != {"delta_up", "delta_down"}:
            raise ConceptFileError(f"{source}: {param!r} has only one of delta_up/delta_down")
        if param in concept.deltas:
            raise ConceptFileError(f"{source}: {param!r} has both a full delta and low-rank factors")
        concept.deltas[param] = (pair["delta_up"], pair["delta_down"])
    listed = _json_field(metadata, "tokens", list(concept.tokens), source)
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed) or sorted(listed) != sorted(concept.tokens):
        raise ConceptFileError(
            f"{source}: header lists tokens {listed} but the file holds embeddings for {sorted(concept.tokens)}"
        )
    concept.validate(source)
    return concept
