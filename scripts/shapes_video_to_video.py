"""The subject from a concept, the motion from a video: video-to-video with a concept, measured on Shapes.

Source clips come from the Shapes world generator ("a red circle moving left on a black background");
each is re-rendered with `--video` as "a <new1> circle moving left on a black background" with the
example concept (examples/shapes-twotone-circle.safetensors: a yellow-over-blue circle) at several
strengths, and the pixel judge reads every clip back:

    motion kept   share of clips whose circle travels the source's way (the concept's shape, any colours)
    concept       share of frames showing the concept (a circle in both its colours)
    background    share of frames with the source's background
    everything    share of frames with concept and background right (0 for a clip with the wrong motion)

The `text` row renders the same prompts without a source (text-to-video, what a concept alone gives);
the `source` row judges the source clips themselves against the same prompts (motion 1, concept 0).
Means come with 95 % bootstrap intervals over clips. Targets (issue 21): motion kept >= 0.9 of clips
and concept >= 0.8 of frames; the chosen strength is the one meeting both with the most `everything`.

    OMP_NUM_THREADS=1 python scripts/shapes_video_to_video.py --sources 8 --seeds 4 --strengths 0.2 0.4 0.6 0.8 1.0
    python scripts/shapes_video_to_video.py --only-sources --sources 4   # just the clips, for `cdvideo render --video`
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shapes-twotone-circle.safetensors"
JUDGED = ["motion", "concept", "background", "everything"]
TARGETS = {"motion": 0.9, "concept": 0.8}
# Source circles and backgrounds: none of the concept's colours (yellow, blue), nor green (the palette
# colour nearest their blend: a soft edge between the halves would read as green).
LOOKS = [("red", "black"), ("white", "black"), ("white", "red"), ("red", "white")]
MOTIONS = ["left", "right", "up", "down"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="preset name (the Shapes model)")
    parser.add_argument("--concept", type=Path, default=EXAMPLE, help="concept file (a two-tone circle)")
    parser.add_argument("--sources", type=int, default=8, help="source clips: each motion on LOOKS in turn")
    parser.add_argument("--seeds", type=int, default=4, help="render seeds per source (0..K-1)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--source-seed", type=int, default=0, help="places the source circles")
    parser.add_argument("--work", type=Path, default=Path("runs/shapes-video-to-video"), help="sources and renders")
    parser.add_argument("--markdown", type=Path, default=None, help="the table (default: WORK/results.md)")
    parser.add_argument("--json", type=Path, default=None, help="every clip's scores (default: WORK/results.json)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only-sources", action="store_true", help="write the source clips (PNG folders) and stop")
    args = parser.parse_args(argv)
    if args.sources < 1 or args.seeds < 1:
        parser.error("--sources and --seeds must be at least 1")
    args.markdown = args.markdown or args.work / "results.md"
    args.json = args.json or args.work / "results.json"
    return args


def make_sources(folder: Path, count: int, seed: int) -> list[tuple[Path, str, str, np.ndarray]]:
    """`count` world clips of one big circle moving each way in turn, written as PNG folders (lossless):
    (folder, the source's caption, the concept prompt it is re-rendered with, frames)."""
    from cdvideo.export import write_video
    from cdvideo.shapes.world import CONCEPT, concept_scene, draw_clip

    rng = np.random.default_rng(seed)
    sources = []
    for index in range(count):
        motion = MOTIONS[index % len(MOTIONS)]
        colour, background = LOOKS[(index // len(MOTIONS)) % len(LOOKS)]
        scene = concept_scene(rng, background, motion, CONCEPT)  # a big circle placed so its path stays inside
        scene.objects[0].colour, scene.objects[0].lower_colour = colour, None
        scene.concept_words, scene.say_motion = {}, True
        frames = draw_clip(scene)
        path = folder / f"source-{index:02d}"
        if not path.exists():
            write_video(frames, path, fps=8)
        prompt = f"a {CONCEPT['token']} circle moving {motion} on a {background} background"
        sources.append((path, scene.caption(), prompt, frames))
    return sources


def bootstrap(values: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval over clips."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def judged(frames: np.ndarray, prompt: str, seed: int) -> dict:
    from cdvideo.shapes.judge import judge_concept_clip

    clip = judge_concept_clip(frames, prompt, seed)
    return {"motion": float(bool(clip.motion)), "concept": clip.concept, "background": clip.background,
            "everything": clip.everything}


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from cdvideo.cli.common import quiet_libraries, warnings_as_lines

    quiet_libraries()
    warnings_as_lines()
    from cdvideo.config import ConceptSpec, RenderSettings
    from cdvideo.files import write_json_atomic
    from cdvideo.models import load_preset
    from cdvideo.render import Renderer, prepare_render
    from cdvideo.shapes.evaluate import markdown_table

    # 1. The source clips and the model.
    args.work.mkdir(parents=True, exist_ok=True)
    sources = make_sources(args.work, args.sources, args.source_seed)
    print("[sources]\n  " + "\n  ".join(f"{p}: {c} -> {t}" for p, c, t, _ in sources), flush=True)
    if args.only_sources:
        return 0
    preset = load_preset(args.model)
    renderer = Renderer(preset, device=args.device)

    # 2. Rows: the sources as they are, text-to-video with the concept, video-to-video at each strength.
    rows = {"source": None, "text": None, **{f"video {s:g}": s for s in args.strengths}}
    results = []
    for row, strength in rows.items():
        t = time.perf_counter()
        for path, _, prompt, frames in sources:
            if row == "source":
                results += [{"row": row, "source": path.name, "seed": 0, **judged(frames, prompt, 0)}]
                continue
            for seed in range(args.seeds):
                settings = RenderSettings(prompt=prompt, seed=seed, model=preset.name, negative_prompt="",
                                          concepts=[ConceptSpec(str(args.concept))], device=renderer.device,
                                          # text: full strength throughout, not the preset's concept schedule
                                          **({"video": str(path), "video_strength": strength} if strength
                                             else {"concept_schedule": "0:1"}))
                request = prepare_render(settings, args.work / "renders" / f"{path.name}-{seed}.mp4", preset)
                frames_out = renderer.render(request.settings, request.concepts, progress=False)
                results.append({"row": row, "source": path.name, "seed": seed, **judged(frames_out, prompt, seed)})
        mine = [r for r in results if r["row"] == row]
        print(f"[render] {row}: {len(mine)} clips in {time.perf_counter() - t:.0f} s; "
              + " ".join(f"{k} {np.mean([r[k] for r in mine]):.3f}" for k in JUDGED), flush=True)

    # 3. Report: the table, the strengths that meet both targets, the chosen one.
    summary = {row: {k: bootstrap(np.array([r[k] for r in results if r["row"] == row])) for k in JUDGED}
               for row in rows}
    meeting = [row for row in rows if rows[row] and all(summary[row][k][0] >= v for k, v in TARGETS.items())]
    chosen = max(meeting, key=lambda row: summary[row]["everything"][0]) if meeting else None

    def cell(stat):
        return f"{stat[0]:.2f} [{stat[1]:.2f}, {stat[2]:.2f}]"

    table = markdown_table(["row", *JUDGED, "meets targets"],
                           [[row, *(cell(summary[row][k]) for k in JUDGED),
                             "-" if not rows[row] else ("yes" if row in meeting else "no")] for row in rows])
    command = shlex.join(["python", *[str(a) for a in (sys.argv if argv is None else ["scripts/shapes_video_to_video.py", *argv])]])
    wall_s = time.perf_counter() - started
    markdown = (
        f"Model `{preset.name}` ({preset.steps} steps, guidance {preset.guidance_scale}), concept "
        f"`{args.concept.name}`; {len(sources)} source clips x {args.seeds} seeds per row. Mean [95 % bootstrap "
        f"interval] over clips. Targets: motion kept >= {TARGETS['motion']}, concept >= {TARGETS['concept']}.\n\n"
        f"{table}\n\nChosen strength: {rows[chosen] if chosen else 'none meets both targets'}.\n\n"
        "Sources: " + "; ".join(f"`{c}`" for _, c, _, _ in sources) + "\n\n"
        f"Command: `{command}` ({wall_s:.0f} s on {renderer.device})\n"
    )
    print("\n" + table + f"\n\nchosen strength: {rows[chosen] if chosen else None}")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown)
    write_json_atomic({"command": command, "summary": summary, "chosen": rows[chosen] if chosen else None,
                       "clips": results, "wall_s": round(wall_s, 1)}, args.json)
    print(f"wrote {args.json} and {args.markdown} ({wall_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
