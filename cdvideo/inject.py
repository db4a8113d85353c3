"""Apply concepts to a built AnimateDiff pipeline and remove them again, exactly.

Key/value changes are merged into the named spatial `attn2` projections of the motion UNet
(merging costs nothing at inference); tokens go into the tokenizer and text encoder through
diffusers' textual-inversion loader. Every parameter a concept touches is copied once before
the first change, and the merged weight is always recomputed from that copy, so removing a
concept restores every weight bit for bit (design decision 2). Motion modules are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch

from cdvideo.concept import Concept, fingerprint_unet
from cdvideo.errors import InjectionError

logger = logging.getLogger(__name__)


@dataclass
class AppliedConcept:
    concept: Concept
    strength: float
    name: str
    # Tokens added to the tokenizer: the concept's own plus diffusers' `<tok>_1 ...` for extra vectors.
    added_tokens: list[str]


class ConceptInjector:
    """Applies and removes concepts on one pipeline (tokenizer, text encoder, motion UNet)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.applied: list[AppliedConcept] = []
        # parameter path -> the base weight, copied before its first change
        self._originals: dict[str, torch.Tensor] = {}
        self.base_fingerprint: str | None = None

    @property
    def _params(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.pipeline.unet.named_parameters())

    def check(self, concept: Concept, name: str = "concept") -> None:
        """Raise InjectionError if `concept` does not fit this pipeline; changes nothing."""
        params = self._params
        unmatched = sorted(p for p in concept.deltas if p not in params)
        if unmatched:
            shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
            raise InjectionError(
                f"{name}: {len(unmatched)} weight change(s) match no module of this UNet: {shown} "
                "(was the concept made for another architecture?)"
            )
        for param, value in concept.deltas.items():
            shape = (value[0].shape[0], value[1].shape[1]) if isinstance(value, tuple) else tuple(value.shape)
            if tuple(params[param].shape) != tuple(shape):
                raise InjectionError(
                    f"{name}: {param} is {tuple(params[param].shape)} in the model but {tuple(shape)} "
                    "in the concept: the concept was made for a different base model"
                )
        embedding_dim = self.pipeline.text_encoder.get_input_embeddings().weight.shape[1]
        vocab = self.pipeline.tokenizer.get_vocab()
        for token, embedding in concept.tokens.items():
            if embedding.shape[1] != embedding_dim:
                raise InjectionError(
                    f"{name}: token {token} has embedding size {embedding.shape[1]}, "
                    f"the text encoder expects {embedding_dim}: the concept was made for a different base model"
                )
            if token in vocab:
                raise InjectionError(
                    f"{name}: token {token} is already in the tokenizer's vocabulary "
                    "(another concept uses it, or it is an ordinary word): rename it in one of the files"
                )

    def apply(self, concept: Concept, strength: float = 1.0, name: str = "concept") -> AppliedConcept:
        """Add `concept` with its key/value changes scaled by `strength`."""
        self.check(concept, name)
        if self.base_fingerprint is None:
            # Taken before the first change, while the UNet still holds its base weights.
            self.base_fingerprint = fingerprint_unet(self.pipeline.unet)
        if concept.base_fingerprint and concept.deltas and concept.base_fingerprint != self.base_fingerprint:
            warnings.warn(
                f"{name} was made against base weights {concept.base_fingerprint}, this model's are "
                f"{self.base_fingerprint}: its key/value changes are applied to a different checkpoint",
                stacklevel=2,
            )
        added: list[str] = []
        if concept.tokens:
            tokenizer_size = len(self.pipeline.tokenizer)
            self.pipeline.load_textual_inversion(
                [{token: embedding} for token, embedding in concept.tokens.items()],
                token=list(concept.tokens),
            )
            added = self.pipeline.tokenizer.convert_ids_to_tokens(range(tokenizer_size, len(self.pipeline.tokenizer)))
        entry = AppliedConcept(concept, float(strength), name, added)
        self.applied.append(entry)
        self._merge(concept.deltas)
        return entry

    def remove(self, entry: AppliedConcept) -> None:
        """Take `entry` off again; with no concept left, every weight is the base weight to the bit."""
        self.applied.remove(entry)
        if entry.added_tokens:
            self.pipeline.unload_textual_inversion(entry.added_tokens)
        self._merge(entry.concept.deltas)

    def remove_all(self) -> None:
        for entry in reversed(list(self.applied)):
            self.remove(entry)

    @torch.no_grad()
    def _merge(self, param_names) -> None:
        """Set each parameter to base + sum(strength * delta) over the applied concepts."""
        params = self._params
        for name in param_names:
            param = params[name]
            original = self._originals.setdefault(name, param.detach().clone())
            contributions = [
                (a.strength, a.concept) for a in self.applied if name in a.concept.deltas and a.strength != 0.0
            ]
            if not contributions:
                # Copy back rather than add zero: base + 0.0 would turn a -0.0 weight into +0.0.
                param.copy_(original)
                del self._originals[name]
                continue
            merged = original.float()
            for strength, concept in contributions:
                merged = merged + strength * concept.delta(name).to(merged.device)
            param.copy_(merged.to(param.dtype))


@contextlib.contextmanager
def concepts_applied(pipeline, concepts: list[tuple[Concept, float, str]],
                     base_fingerprint: str | None = None) -> Iterator[ConceptInjector]:
    """Apply `(concept, strength, name)` triples for the duration of a `with` block.

    `base_fingerprint`: the UNet's fingerprint taken before LoRAs were merged, so that a LoRA on the
    key/value weights does not make every concept look as if it were made for another checkpoint.
    """
    injector = ConceptInjector(pipeline)
    injector.base_fingerprint = base_fingerprint
    try:
        for concept, strength, name in concepts:
            injector.apply(concept, strength, name)
        yield injector
    finally:
        injector.remove_all()


@contextlib.contextmanager
def deltas_delayed(injector: ConceptInjector, off_steps: int, total_steps: int):
    """Keep the applied concepts' key/value changes off for the first `off_steps` denoising steps.

    Yields a diffusers `callback_on_step_end` that puts them on after step `off_steps` (and off again
    after the last step, so a FreeInit pass starts without them too), or None when there is nothing to
    delay. The token embeddings stay in from the start. Why: the first, noisiest steps settle where
    things are and which way they move, and a concept's key/value changes, trained on still images,
    act on every word of the prompt, the motion words too (docs/shapes-world.md measures it). On exit
    the concepts are as applied, for `concepts_applied` to take off bit for bit.
    """
    entries = [e for e in injector.applied if e.concept.deltas]
    if off_steps <= 0 or not entries:
        yield None
        return
    strengths = [e.strength for e in entries]
    names = set().union(*(e.concept.deltas for e in entries))

    def switch(on: bool) -> None:
        for entry, strength in zip(entries, strengths):
            entry.strength = strength if on else 0.0
        injector._merge(names)

    def callback(pipeline, step: int, timestep, callback_kwargs):
        if step + 1 == off_steps:
            switch(True)
        elif step + 1 == total_steps:
            switch(False)
        return callback_kwargs

    switch(False)
    try:
        yield callback
    finally:
        switch(True)


@contextlib.contextmanager
def loras_applied(pipeline, loras: list[tuple[dict, float, str]]) -> Iterator[None]:
    """Merge bound LoRAs `(bound, strength, name)` for the duration of a `with` block, then restore exactly.

    `bound` maps (component, parameter name) to (up, down, scale), as cdvideo.formats.lora.bind_lora
    makes it. Each weight is copied before its first change and copied back afterwards, so taking
    the LoRAs off restores every weight bit for bit. Apply LoRAs before concepts: a concept then
    adds its deltas on top, and is taken off first.
    """
    originals: dict[tuple[str, str], torch.Tensor] = {}
    params = {c: dict(getattr(pipeline, c).named_parameters()) for c in ("unet", "text_encoder")}
    try:
        with torch.no_grad():
            for bound, strength, _ in loras:
                if strength == 0.0:
                    continue
                for (component, name), (up, down, scale) in bound.items():
                    param = params[component][name]
                    originals.setdefault((component, name), param.detach().clone())
                    change = (up.float() @ down.float()).reshape(param.shape).to(param.device)
                    param.copy_((param.float() + (strength * scale) * change).to(param.dtype))
        yield
    finally:
        with torch.no_grad():
            for (component, name), original in originals.items():
                params[component][name].copy_(original)
