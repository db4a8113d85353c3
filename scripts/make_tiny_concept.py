"""Make examples/tiny-dog.safetensors: a concept for the `tiny` model, reproducibly.

The tiny model is random, so this concept is too: a learned-token embedding for `<new1>` (class
word "dog") and key/value changes for every spatial cross-attention of the tiny UNet, drawn from
a seeded generator at a tenth of the base weights' spread. It exists so that the quickstart has a
concept to inject; it was not trained.

    python scripts/make_tiny_concept.py [--out examples/tiny-dog.safetensors] [--seed 1]
"""

import argparse

import torch

from cdvideo.concept import ALLOWED_PARAM, Concept, fingerprint_unet, save_concept
from cdvideo.models.tiny import build_tiny_components


def make_tiny_concept(seed: int) -> Concept:
    components = build_tiny_components()
    unet, text_encoder = components["unet"], components["text_encoder"]
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, param in unet.named_parameters():
        if ALLOWED_PARAM.match(name) and name.endswith((".to_k.weight", ".to_v.weight")):
            deltas[name] = 0.1 * param.detach().std() * torch.randn(param.shape, generator=generator)
    table = text_encoder.get_input_embeddings().weight.detach()
    # A new row with the spread of the existing ones, as a trained token's embedding would have.
    embedding = table.mean(0) + table.std(0) * torch.randn(table.shape[1], generator=generator)
    return Concept(
        tokens={"<new1>": embedding[None]},
        class_words={"<new1>": "dog"},
        deltas=deltas,
        base_model="builtin:tiny",
        base_fingerprint=fingerprint_unet(unet),
        method="random (example for the tiny model, not trained)",
        training={"seed": seed, "script": "scripts/make_tiny_concept.py"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/tiny-dog.safetensors")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    path = save_concept(make_tiny_concept(args.seed), args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
