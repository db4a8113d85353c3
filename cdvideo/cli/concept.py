"""`cdvideo concept ...`: look inside concept files, convert files from other tools into them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  cdvideo concept inspect examples/tiny-dog.safetensors
  cdvideo concept inspect dog.safetensors --model sd15-animatediff-v2   # also checks it fits that model
  cdvideo concept convert classdiffusion-output/ --base sd15-animatediff-v2 --out dog.safetensors --class-word dog
  cdvideo concept convert delta.bin --base sd15-animatediff-v2 --out dog.safetensors   # Custom Diffusion repo
  cdvideo concept convert learned_embeds.safetensors --base tiny --out style.safetensors   # textual inversion
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "concept", help="inspect concept files", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="concept_command", metavar="ACTION")
    inspect = actions.add_parser(
        "inspect", help="tokens, class words, base model, modules, sizes, fingerprint",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--model", default=None,
                         help="also load this model and check the concept fits it (fingerprint, shapes, tokens)")
    inspect.add_argument("--device", default="auto")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(run=run_inspect)
    convert = actions.add_parser(
        "convert", help="ClassDiffusion / Custom Diffusion outputs or embeddings -> a concept file",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("source", type=Path,
                         help="ClassDiffusion output directory, pytorch_custom_diffusion_weights.*, delta.bin/.ckpt, "
                              "or a textual inversion embedding")
    convert.add_argument("--base", required=True,
                         help="the base model the weights were trained on (preset, YAML or diffusers directory): "
                              "deltas are taken against it")
    convert.add_argument("--out", type=Path, required=True, help="concept file to write (.safetensors)")
    convert.add_argument("--class-word", default=None, help="the class word of the token(s), e.g. dog")
    convert.set_defaults(run=run_convert)
    parser.set_defaults(run=lambda args: parser.print_help() or 1)


def describe(path: Path) -> dict:
    """What a user wants to know about a concept file, as plain data."""
    from cdvideo.concept import load_concept

    concept = load_concept(path)
    modules: dict[str, list[str]] = {}
    values = 0
    for param, value in sorted(concept.deltas.items()):
        module, _, projection = param.partition(".attn2.")
        modules.setdefault(module + ".attn2", []).append(projection.removesuffix(".weight"))
        values += value[0].numel() + value[1].numel() if isinstance(value, tuple) else value.numel()
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "tokens": {
            token: {"vectors": int(e.shape[0]), "dim": int(e.shape[1]), "class_word": concept.class_words.get(token),
                    "norm": round(float(e.float().norm(dim=1).mean()), 4)}
            for token, e in concept.tokens.items()
        },
        "base_model": concept.base_model,
        "base_fingerprint": concept.base_fingerprint,
        "method": concept.method,
        "training": concept.training,
        "modules": len(modules),
        "changed_parameters": len(concept.deltas),
        "low_rank": sum(isinstance(v, tuple) for v in concept.deltas.values()),
        "delta_values": values,
        "projections": sorted({p for projections in modules.values() for p in projections}),
    }


def run_inspect(args) -> int:
    info = describe(args.file)
    if args.model:
        info["model_check"] = _check_against_model(args.file, args.model, args.device)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['file']} ({info['file_bytes'] / 1e6:.2f} MB)")
    for token, t in info["tokens"].items():
        vectors = f"{t['vectors']} vector{'s' if t['vectors'] > 1 else ''} of {t['dim']}"
        print(f"  token {token}: class word {t['class_word']!r}, {vectors}, mean norm {t['norm']}")
    print(f"  base model: {info['base_model'] or '(not recorded)'}, fingerprint {info['base_fingerprint'] or '(none)'}")
    print(f"  method: {info['method']}")
    print(
        f"  changes {info['changed_parameters']} parameters in {info['modules']} cross-attention modules "
        f"({', '.join(info['projections']) or 'none'}; {info['delta_values']:,} values"
        f"{', ' + str(info['low_rank']) + ' low-rank' if info['low_rank'] else ''})"
    )
    if info["training"]:
        print(f"  training: {json.dumps(info['training'])}")
    if "model_check" in info:
        check = info["model_check"]
        verdict = "matches" if check["fingerprint_match"] else "differs from"
        print(f"  model {args.model}: fits; its fingerprint {check['model_fingerprint']} {verdict} the concept's")
    return 0


def _check_against_model(path: Path, model: str, device: str) -> dict:
    from cdvideo.cli.common import quiet_libraries
    from cdvideo.concept import fingerprint_unet, load_concept
    from cdvideo.inject import ConceptInjector
    from cdvideo.models import load_pipeline, load_preset, resolve_device, resolve_dtype

    quiet_libraries()
    device = resolve_device(device)
    pipeline = load_pipeline(load_preset(model), device=device, dtype=resolve_dtype("auto", device))
    concept = load_concept(path)
    ConceptInjector(pipeline).check(concept, str(path))  # raises with the first misfit
    fingerprint = fingerprint_unet(pipeline.unet)
    return {"model_fingerprint": fingerprint, "fingerprint_match": fingerprint == concept.base_fingerprint}


def run_convert(args) -> int:
    """Read the foreign file first (cheap, fails fast), then load the base UNet and take deltas."""
    import torch

    from cdvideo.cli.common import quiet_libraries
    from cdvideo.concept import save_concept
    from cdvideo.formats.concepts import open_concept
    from cdvideo.models import load_preset, load_training_components

    if args.out.suffix != ".safetensors":
        from cdvideo.errors import ConfigError

        raise ConfigError(f"--out {args.out}: a concept file is a .safetensors file")
    source = open_concept(args.source, class_word=args.class_word)
    preset = load_preset(args.base)
    unet = embedding_dim = None
    if source.needs_base or source.tokens:
        quiet_libraries()
        parts = load_training_components(preset, device="cpu", dtype=torch.float32)
        unet = parts["unet"]
        embedding_dim = parts["text_encoder"].get_input_embeddings().weight.shape[1]
    concept = source.resolve(unet, base_model=preset.base, embedding_dim=embedding_dim)
    concept.base_model = concept.base_model or preset.base
    if embedding_dim is not None:
        for token, embedding in concept.tokens.items():
            if embedding.shape[1] != embedding_dim:
                from cdvideo.errors import InjectionError

                raise InjectionError(
                    f"{args.source}: token {token} has embedding size {embedding.shape[1]}, the text encoder of "
                    f"{args.base} expects {embedding_dim}: made for another base model"
                )
    save_concept(concept, args.out)
    print(
        f"wrote {args.out} from {args.source} ({source.kind}): tokens {', '.join(concept.tokens) or 'none'}, "
        f"{len(concept.deltas)} changed parameters, base {preset.base} (fingerprint {concept.base_fingerprint or 'n/a'})"
    )
    return 0
