"""Apply concepts to a built AnimateDiff pipeline and remove them again, exactly.

Key/value changes either merge into the named spatial `attn2` projections of the motion UNet
(binding "merged": every word sees them; costs nothing at inference) or act only at the concept
token's text positions through attention processors (cdvideo.binding; every other word and the
unconditional branch see the base model). Tokens go into the tokenizer and text encoder through
diffusers' textual-inversion loader. Every parameter a concept touches is copied once before the
first change, and the merged weight is always recomputed from that copy; every processor replaced is
kept and put back; so removing a concept restores the model bit for bit (design decision 2). Motion
modules are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch

from cdvideo.binding import (BoundAttnProcessor, BoundChange, TokenPositions, class_word_ids, spatial_attn2_modules,
                             token_ids)
from cdvideo.schedule import TRAINED_MERGED, check_binding, parse_schedule, step_factors
from cdvideo.concept import Concept, check_new_token, fingerprint_unet
from cdvideo.errors import InjectionError

logger = logging.getLogger(__name__)


@dataclass
class AppliedConcept:
    concept: Concept
    strength: float
    name: str
    # Tokens added to the tokenizer: the concept's own plus diffusers' `<tok>_1 ...` for extra vectors.
    added_tokens: list[str]
    # Where the key/value changes act (cdvideo.binding.BINDINGS).
    binding: str = TRAINED_MERGED
    # The strength schedule's factor for the current denoising step (strength_scheduled).
    factor: float = 1.0

    @property
    def effective_strength(self) -> float:
        return self.strength * self.factor


def trained_binding(concept: Concept) -> str:
    """The binding a concept was trained with: its file says; files from before bindings and from other
    tools were trained merged."""
    recorded = concept.training.get("binding") if isinstance(concept.training, dict) else None
    return recorded or TRAINED_MERGED


class ConceptInjector:
    """Applies and removes concepts on one pipeline (tokenizer, text encoder, motion UNet)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.applied: list[AppliedConcept] = []
        # parameter path -> the base weight, copied before its first change
        self._originals: dict[str, torch.Tensor] = {}
        self.base_fingerprint: str | None = None
        # Token-bound concepts: where their tokens stand, and the attn2 processors replaced for them.
        self.positions = TokenPositions()
        self._processors: dict[str, object] = {}
        self._hook = None

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
            check_new_token(self.pipeline.tokenizer, token, name)  # `dog` is stored as `dog</w>`

    def apply(self, concept: Concept, strength: float = 1.0, name: str = "concept",
              binding: str | None = None) -> AppliedConcept:
        """Add `concept` with its key/value changes scaled by `strength`, acting where `binding` says
        (None: as the concept was trained)."""
        check_binding(binding)
        binding = binding or trained_binding(concept)
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
        entry = AppliedConcept(concept, float(strength), name, added, binding)
        self.applied.append(entry)
        if binding == TRAINED_MERGED:
            self._merge(concept.deltas)
        else:
            self._bind(entry)
        return entry

    def remove(self, entry: AppliedConcept) -> None:
        """Take `entry` off again; with no concept left, every weight and processor is the base one to the bit."""
        self.applied.remove(entry)
        if entry.added_tokens:
            self.pipeline.unload_textual_inversion(entry.added_tokens)
        if entry.binding == TRAINED_MERGED:
            self._merge(entry.concept.deltas)
        else:
            self._unbind(entry)

    def set_factor(self, factor: float) -> None:
        """Scale every applied concept's key/value change by `factor` (a strength schedule's step)."""
        changed = [e for e in self.applied if e.concept.deltas and e.factor != factor]
        for entry in changed:
            entry.factor = factor
        # Bound changes read the factor live; merged ones are merged again.
        self._merge(set().union(*(e.concept.deltas for e in changed if e.binding == TRAINED_MERGED)))

    def _bind(self, entry: AppliedConcept) -> None:
        """Install (or extend) a BoundAttnProcessor on each attn2 module the concept changes."""
        concept = entry.concept
        unbindable = sorted(p for p in concept.deltas if not p.endswith((".to_k.weight", ".to_v.weight")))
        if unbindable:
            raise InjectionError(
                f"{entry.name}: changes {unbindable[0]} (to_q / to_out / a bias), which cannot be bound to a token: "
                "render it with --concept-binding merged")
        tokenizer = self.pipeline.tokenizer
        class_word = next(iter(concept.class_words.values()), None) if len(concept.tokens) == 1 else None
        index = self.positions.add_concept(token_ids(tokenizer, entry.added_tokens), class_word_ids(tokenizer, class_word))
        modules = spatial_attn2_modules(self.pipeline.unet)
        params = self._params
        for path, attn in modules.items():
            delta_k = self._bound_delta(concept, f"{path}.to_k.weight", params)
            delta_v = self._bound_delta(concept, f"{path}.to_v.weight", params)
            if delta_k is None and delta_v is None:
                continue
            if path not in self._processors:
                self._processors[path] = attn.processor
                attn.set_processor(BoundAttnProcessor(self.positions, []))
            attn.processor.changes.append(BoundChange(entry, index, entry.binding, delta_k, delta_v))
        if self._hook is None:
            self._hook = self.positions.hook(self.pipeline.text_encoder)

    @staticmethod
    def _bound_delta(concept: Concept, param: str, params) -> torch.Tensor | None:
        if param not in concept.deltas:
            return None
        weight = params[param]
        return concept.delta(param).to(weight.device, weight.dtype)

    def _unbind(self, entry: AppliedConcept) -> None:
        modules = spatial_attn2_modules(self.pipeline.unet)
        for path, original in list(self._processors.items()):
            processor = modules[path].processor
            processor.changes = [c for c in processor.changes if c.owner is not entry]
            if not processor.changes:
                modules[path].set_processor(original)
                del self._processors[path]
        if not self._processors and self._hook is not None:
            self._hook.remove()
            self._hook = None
            self.positions = TokenPositions()

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
                (a.effective_strength, a.concept) for a in self.applied
                if a.binding == TRAINED_MERGED and name in a.concept.deltas and a.effective_strength != 0.0
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
                     base_fingerprint: str | None = None, binding: str | None = None) -> Iterator[ConceptInjector]:
    """Apply `(concept, strength, name)` triples for the duration of a `with` block, each bound as
    `binding` says (None: as each concept was trained).

    `base_fingerprint`: the UNet's fingerprint taken before LoRAs were merged, so that a LoRA on the
    key/value weights does not make every concept look as if it were made for another checkpoint.
    """
    injector = ConceptInjector(pipeline)
    injector.base_fingerprint = base_fingerprint
    try:
        for concept, strength, name in concepts:
            injector.apply(concept, strength, name, binding)
        yield injector
    finally:
        injector.remove_all()


@contextlib.contextmanager
def strength_scheduled(injector: ConceptInjector, factors: list[float]):
    """Scale the applied concepts' key/value changes by `factors[i]` during denoising step i.

    Yields a diffusers `callback_on_step_end` that sets the next step's factor (and the first step's
    again after the last, so a FreeInit pass starts the schedule over), or None when every factor is 1.
    The token embeddings stay in throughout. Why: the first, noisiest steps settle where things are and
    which way they move; a concept's key/value changes, trained on still images, pull against the
    motion words (`concept_start` = the schedule "0:0, S:1"; docs/personalization.md measures both).
    On exit every factor is 1 again, for `concepts_applied` to take the concepts off bit for bit.
    """
    if all(f == 1.0 for f in factors) or not any(e.concept.deltas for e in injector.applied):
        yield None
        return

    def callback(pipeline, step: int, timestep, callback_kwargs):
        injector.set_factor(factors[step + 1] if step + 1 < len(factors) else factors[0])
        return callback_kwargs

    injector.set_factor(factors[0])
    try:
        yield callback
    finally:
        injector.set_factor(1.0)


def schedule_factors(concept_start: float, schedule: str | None, steps: int) -> list[float]:
    """Per-step strength factors from a render's `concept_start` or `concept_schedule` (one of them is set)."""
    points = parse_schedule(schedule) if schedule else [(0.0, 0.0), (concept_start, 1.0)] if concept_start > 0 else []
    return step_factors(points, steps)


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
