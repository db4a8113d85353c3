"""Any concept-like file -> a cdvideo Concept: our own files, Custom Diffusion outputs, embeddings.

Reading happens in two steps so that every file is checked before a model is loaded: `open_concept`
reads and validates the file; `ConceptSource.resolve` makes full trained matrices relative to the
base UNet once it is loaded (only Custom Diffusion files need that step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cdvideo.concept import Concept, load_concept
from cdvideo.formats.custom_diffusion import CustomDiffusionWeights, read_custom_diffusion
from cdvideo.formats.sniff import CONCEPT, CONCEPT_KINDS, CUSTOM_DIFFUSION, FileKind, require_kind
from cdvideo.formats.textual_inversion import textual_inversion_concept


@dataclass
class ConceptSource:
    path: str
    kind: FileKind
    # Ready to apply (a cdvideo concept or an embedding) ...
    concept: Concept | None = None
    # ... or full trained weights still to be made relative to the base model.
    weights: CustomDiffusionWeights | None = None
    class_word: str | None = None

    @property
    def needs_base(self) -> bool:
        return self.weights is not None

    @property
    def tokens(self) -> list[str]:
        return list((self.concept or self.weights).tokens)

    @property
    def class_words(self) -> dict[str, str]:
        if self.concept is not None:
            return self.concept.class_words
        return {t: self.class_word for t in self.weights.tokens} if self.class_word else {}

    def resolve(self, unet=None, *, base_model: str = "", embedding_dim: int | None = None) -> Concept:
        """The Concept; Custom Diffusion weights become deltas against `unet`."""
        if self.concept is not None:
            return self.concept
        if unet is None:
            raise ValueError(f"{self.path}: converting Custom Diffusion weights needs the base UNet")
        return self.weights.to_concept(unet, base_model=base_model, class_words=self.class_words,
                                       embedding_dim=embedding_dim)


def open_concept(path: str | os.PathLike, class_word: str | None = None) -> ConceptSource:
    """Read and check a concept-like file or ClassDiffusion output directory; a file of another kind is named."""
    kind = require_kind(path, CONCEPT_KINDS, "a concept")
    source = str(path)
    if kind.kind == CONCEPT:
        concept = load_concept(path)
        if class_word:
            concept.class_words = {t: class_word for t in concept.tokens}
        return ConceptSource(source, kind, concept=concept)
    if kind.kind == CUSTOM_DIFFUSION:
        return ConceptSource(source, kind, weights=read_custom_diffusion(path), class_word=class_word)
    concept = textual_inversion_concept(path)
    if class_word:
        concept.class_words = {t: class_word for t in concept.tokens}
    return ConceptSource(source, kind, concept=concept)


def resolve_concepts(entries: list[tuple], pipeline, base_model: str = "") -> list[tuple[Concept, float, str]]:
    """(Concept | ConceptSource, strength, name) -> (Concept, strength, name), against the pipeline's UNet.

    Call it before anything else changes the UNet (LoRAs): deltas must be taken against base weights.
    """
    embedding_dim = pipeline.text_encoder.get_input_embeddings().weight.shape[1]
    resolved = []
    for item, strength, name in entries:
        if isinstance(item, ConceptSource):
            item = item.resolve(pipeline.unet, base_model=base_model, embedding_dim=embedding_dim)
        resolved.append((item, strength, name))
    return resolved


def source_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a concept file, or of the weight files of an output directory (by name, in order)."""
    import hashlib

    from cdvideo.concept import file_sha256

    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".bin", ".safetensors", ".ckpt")):
        digest.update(file.name.encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def is_native_concept(path: str | os.PathLike) -> bool:
    """A cdvideo concept file (checked from its header, without reading tensors)."""
    from cdvideo.formats.safe_load import SAFETENSORS, container_format, safetensors_metadata

    path = Path(path)
    try:
        return path.is_file() and container_format(path) == SAFETENSORS and (
            safetensors_metadata(path).get("format") == "cdvideo.concept"
        )
    except (OSError, ValueError):
        return False
