"""A picture to look at after a batch: `contact_sheet.png` and a static `index.html` gallery.

The contact sheet shows the first, middle and last frame of every finished item with a caption;
the page plays the videos with their prompts, seeds and, once `cdvideo eval` has written
`scores.jsonl` beside the manifest, their metrics. Both are written atomically and rebuilt from
the manifest on every run, so they always show the whole batch, resumed parts included.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from cdvideo.errors import CdVideoError
from cdvideo.files import atomic_path

CONTACT_SHEET = "contact_sheet.png"
INDEX_HTML = "index.html"
SCORES_NAME = "scores.jsonl"  # written by `cdvideo eval` beside a batch manifest
THUMB = 128  # longest side of a frame on the sheet, in pixels
CAPTION_HEIGHT = 30


def finished(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["status"] in ("done", "skipped")]


def _thumbnail(frame: np.ndarray):
    from PIL import Image

    image = Image.fromarray(frame)
    scale = THUMB / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def write_contact_sheet(out_dir: Path, records: list[dict[str, Any]]) -> Path | None:
    """One row per finished item: first, middle and last frame, and a caption (index, seed, prompt)."""
    from PIL import Image, ImageDraw

    from cdvideo.export import read_video

    rows = []
    for record in finished(records):
        try:
            frames, _ = read_video(out_dir / record["video"])
        except (CdVideoError, OSError):
            continue  # a video removed by hand: leave it off the sheet
        picks = [frames[0], frames[len(frames) // 2], frames[-1]]
        rows.append((record, [_thumbnail(f) for f in picks]))
    if not rows:
        return None
    cell_w = max(t.width for _, thumbs in rows for t in thumbs)
    cell_h = max(t.height for _, thumbs in rows for t in thumbs)
    width = max(3 * cell_w, 3 * THUMB)
    sheet = Image.new("RGB", (width, len(rows) * (cell_h + CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (record, thumbs) in enumerate(rows):
        top = row * (cell_h + CAPTION_HEIGHT)
        for column, thumb in enumerate(thumbs):
            sheet.paste(thumb, (column * cell_w, top))
        caption = f"#{record['index']} seed {record['seed']}"
        draw.text((2, top + cell_h + 2), caption, fill="black")
        draw.text((2, top + cell_h + 15), _fit(record["prompt"], width), fill="dimgray")
    path = out_dir / CONTACT_SHEET
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def _fit(text: str, width: int) -> str:
    limit = max(8, width // 6)  # the default bitmap font is about 6 pixels per character
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_scores(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Metrics per video from `scores.jsonl`, when `cdvideo eval` has scored this folder."""
    scores: dict[str, dict[str, Any]] = {}
    try:
        lines = (out_dir / SCORES_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return scores
    for line in lines:
        try:
            record = json.loads(line)
            scores[record["video"]] = {k: v for k, v in (record.get("scores") or {}).items() if v is not None}
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return scores


def _media(video: str) -> str:
    src = html.escape(video, quote=True)
    if video.endswith((".mp4", ".webm")):
        return f'<video src="{src}" controls autoplay loop muted playsinline preload="auto"></video>'
    if video.endswith((".gif", ".webp")):
        return f'<img src="{src}" alt="">'
    return f'<img src="{src}/0000.png" alt="">'  # a folder of PNG frames: its first frame


def write_index_html(out_dir: Path, records: list[dict[str, Any]]) -> Path:
    """A static page: every finished video playing, with prompt, seed, concepts, metrics; failures listed."""
    scores = read_scores(out_dir)
    cards = []
    for record in finished(records):
        details = [f"<dt>seed</dt><dd>{record['seed']}</dd>"]
        if record.get("negative_prompt"):
            details.append(f"<dt>negative</dt><dd>{html.escape(record['negative_prompt'])}</dd>")
        for concept in record.get("concepts", []):
            details.append(f"<dt>concept</dt><dd>{html.escape(Path(concept['path']).name)} "
                           f"x{concept['strength']:g}</dd>")
        for name, value in scores.get(record["video"], {}).items():
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else html.escape(str(value))
            details.append(f"<dt>{html.escape(name)}</dt><dd>{shown}</dd>")
        cards.append(
            f'<figure class="item" data-index="{record["index"]}">{_media(record["video"])}'
            f'<figcaption><p class="prompt">{html.escape(record["prompt"])}</p>'
            f'<dl>{"".join(details)}</dl><a href="{html.escape(record["sidecar"], quote=True)}">settings</a>'
            f"</figcaption></figure>"
        )
    failures = [
        f"<li>#{r['index']} {html.escape(r['prompt'])}: {r['status']}"
        f"{': ' + html.escape(r['error']) if r.get('error') else ''}</li>"
        for r in records if r["status"] not in ("done", "skipped")
    ]
    page = PAGE.format(
        count=len(cards),
        cards="\n".join(cards),
        failures=f"<h2>Not rendered</h2><ul>{''.join(failures)}</ul>" if failures else "",
    )
    path = out_dir / INDEX_HTML
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


# The small script marks each video once it can play (tests read that mark in headless Chromium).
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cdvideo batch: {count} videos</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; }}
main {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure.item {{ margin: 0; width: 260px; background: white; padding: .5em; border: 1px solid #ddd; }}
figure.item video, figure.item img {{ width: 100%; image-rendering: pixelated; }}
.prompt {{ font-weight: bold; margin: .3em 0; }}
dl {{ display: grid; grid-template-columns: auto 1fr; gap: 0 .5em; font-size: 90%; margin: .3em 0; }}
dt {{ color: #666; }} dd {{ margin: 0; }}
</style></head>
<body><h1>cdvideo batch: {count} videos</h1>
<p><a href="contact_sheet.png">contact sheet</a> · <a href="manifest.jsonl">manifest</a></p>
<main>
{cards}
</main>
{failures}
<script>
for (const video of document.querySelectorAll("video")) {{
  const mark = () => video.closest("figure").dataset.playable = "yes";
  if (video.readyState >= 2) mark(); else video.addEventListener("loadeddata", mark);
  video.addEventListener("error", () => video.closest("figure").dataset.playable = "error");
}}
</script>
</body></html>
"""
