"""`cdvideo concept ...`: look inside concept files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  cdvideo concept inspect examples/tiny-dog.safetensors
  cdvideo concept inspect dog.safetensors --model sd15-animatediff-v2   # also checks it fits that model
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
