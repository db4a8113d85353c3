"""Read Shapes-world frames back into what they show, and score a video against its caption.

Pixel analysis only: each pixel goes to the nearest world colour, the background is the commonest
colour on the border, objects are the connected regions of other colours, and a region's shape
comes from how much of its bounding box it fills (square ~1.0, circle ~0.79, triangle ~0.5) and
where its centroid sits (an upright triangle's is low).
On the generator's own frames this recovers the scene exactly; on generated frames it is the
referee of `docs/shapes-world.md`. A clip is judged as a whole (`judge_clip`: per-frame shares of
background and objects right) or, for a concept prompt ("a <new1> circle and a red square on a green
background"), with the concept and the rest of the composition apart (`judge_concept_clip`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import cv2
import numpy as np

from cdvideo.shapes.world import COLOURS, CONCEPT, SIZES, Request, parse_caption

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)
MIN_AREA = 12  # pixels: a small triangle covers ~32, so smaller regions are specks, not objects
STILL_BELOW = 4.0  # pixels of travel over the clip under which an object counts as still


@dataclass
class SeenObject:
    shape: str
    colour: str  # the commonest colour in the region
    colours: dict[str, float]  # every colour covering >= 20 % of the region, with its share
    size: str
    x: float  # centroid
    y: float
    area: int
    fill: float  # area / bounding-box area


@dataclass
class SeenFrame:
    background: str
    objects: list[SeenObject]


def quantize(frame: np.ndarray) -> np.ndarray:
    """(H, W) indices into the world palette: each pixel's nearest colour."""
    pixels = frame.reshape(-1, 3).astype(np.float32)
    distances = ((pixels[:, None, :] - _PALETTE[None]) ** 2).sum(-1)
    return distances.argmin(1).reshape(frame.shape[:2])


def _shape_of(fill: float, drop: float) -> str:
    """A region's shape from its fill of the bounding box and how far its centroid sits below the
    box's middle (as a share of the height): ~0.14 for an upright triangle, ~0 for the others.
    The drop survives blur better than the fill does, so it decides triangles first."""
    if drop >= 0.085 or fill < 0.6:
        return "triangle"
    return "square" if fill >= 0.92 else "circle"  # exact circles reach 0.89 (small, off-grid)


def judge_frame(frame: np.ndarray) -> SeenFrame:
    """What one (H, W, 3) uint8 frame shows."""
    labels = quantize(frame)
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    background = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    mask = (labels != background).astype(np.uint8)
    count, regions, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=4)
    objects = []
    for k in range(1, count):
        x0, y0, w, h, area = (int(v) for v in stats[k])
        if area < MIN_AREA:
            continue
        shares = np.bincount(labels[regions == k], minlength=len(_NAMES)) / area
        fill = area / float(w * h)
        drop = (float(centroids[k][1]) - (y0 + (h - 1) / 2)) / h
        extent = max(w, h)
        size = min(SIZES, key=lambda s: abs(SIZES[s] - extent))
        objects.append(
            SeenObject(
                shape=_shape_of(fill, drop),
                colour=_NAMES[int(shares.argmax())],
                colours={_NAMES[i]: round(float(s), 3) for i, s in enumerate(shares) if s >= 0.2},
                size=size,
                x=float(centroids[k][0]),
                y=float(centroids[k][1]),
                area=area,
                fill=round(fill, 3),
            )
        )
    objects.sort(key=lambda o: -o.area)
    return SeenFrame(_NAMES[background], objects)


def judge_video(frames: np.ndarray) -> list[SeenFrame]:
    return [judge_frame(np.asarray(f)) for f in frames]


def motion_of(frames: list[SeenFrame], shape: str | None = None, colour: str | None = None) -> str | None:
    """The direction the matching object travelled from first to last frame it was seen, or None."""
    track = []
    for seen in frames:
        for obj in seen.objects:
            if (shape is None or obj.shape == shape) and (colour is None or colour in obj.colours):
                track.append((obj.x, obj.y))
                break
    if len(track) < max(2, len(frames) // 2):
        return None
    dx, dy = track[-1][0] - track[0][0], track[-1][1] - track[0][1]
    if max(abs(dx), abs(dy)) < STILL_BELOW:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def object_matches(obj: SeenObject, wanted: dict, concept: tuple[str, str] | None = None) -> bool:
    """`wanted` is one object of a Request. A concept token's colour slot matches `concept`
    (the concept's two colours, upper then lower, or {token: colours} for several concepts) when
    both cover >= 20 % of the region."""
    if obj.shape != wanted["shape"]:
        return False
    colour = wanted["colour"]
    if colour.startswith("<"):
        colours = concept.get(colour) if isinstance(concept, dict) else concept
        return colours is not None and all(c in obj.colours for c in colours)
    return obj.colour == colour


@dataclass
class VideoScore:
    background: float  # share of frames whose background is the asked one (1.0 if not asked)
    objects: float  # share of frames showing every asked object (shape and colour)
    motion: bool | None  # the first object travelled the asked way (None: caption says no motion)
    extra_objects: float  # share of frames with more objects than asked

    def to_dict(self) -> dict:
        return asdict(self)


def score_video(frames: np.ndarray, caption: str | Request, concept: tuple[str, str] | None = None) -> VideoScore:
    """How well a clip shows what its caption asks for."""
    request = parse_caption(caption) if isinstance(caption, str) else caption
    seen = judge_video(frames)
    n = len(seen)
    background = sum(s.background == request.background for s in seen) / n if request.background else 1.0
    objects_ok = 0
    for s in seen:
        remaining = list(s.objects)
        ok = True
        for wanted in request.objects:
            match = next((o for o in remaining if object_matches(o, wanted, concept)), None)
            if match is None:
                ok = False
                break
            remaining.remove(match)
        objects_ok += ok
    motion = None
    if request.motion:
        first = request.objects[0]
        colour = None if first["colour"].startswith("<") else first["colour"]
        motion = motion_of(seen, first["shape"], colour) == request.motion
    extra = sum(len(s.objects) > len(request.objects) for s in seen) / n
    return VideoScore(background, objects_ok / n, motion, extra)


CONCEPT_COLOURS = (CONCEPT["upper"], CONCEPT["lower"])


@dataclass
class JudgedClip:
    """One rendered clip and how well it shows its prompt (shares are over its frames)."""

    prompt: str
    seed: int
    background: float  # frames whose background is the asked colour
    objects: float  # frames showing every asked object (shape and colour)
    both: float  # frames with background and objects both right
    motion: bool | None  # the first object went the asked way; None when the prompt asks no motion
    extra_objects: float  # frames with more objects than asked
    guidance_scale: float | None = None
    frames: np.ndarray | None = field(default=None, repr=False)  # (f, h, w, 3) uint8, when asked for

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "frames"}


def judge_clip(frames: np.ndarray, prompt: str, seed: int = 0, concept: tuple[str, str] | None = CONCEPT_COLOURS,
               keep_frames: bool = False) -> JudgedClip:
    """Score (f, h, w, 3) uint8 frames against `prompt`; a concept token's colours are `concept` (upper, lower)."""
    request = parse_caption(prompt)
    score = score_video(frames, request, concept)
    # score_video gives the two shares separately; a one-frame clip per frame gives their overlap.
    per_frame = [score_video(frame[None], request, concept) for frame in frames]
    both = float(np.mean([s.background == 1.0 and s.objects == 1.0 for s in per_frame]))
    return JudgedClip(prompt, seed, score.background, score.objects, both, score.motion, score.extra_objects,
                      frames=frames if keep_frames else None)


def all_present(objects: list[SeenObject], wanted: list[dict], concept) -> bool:
    """Every wanted object matched by a different seen object (as score_video matches them)."""
    remaining = list(objects)
    for w in wanted:
        match = next((o for o in remaining if object_matches(o, w, concept)), None)
        if match is None:
            return False
        remaining.remove(match)
    return True


@dataclass
class ConceptClip:
    """A concept prompt's clip judged in parts: is the concept there, and is the rest of the prompt (shares of frames)."""

    prompt: str  # the prompt judged against, with the concept token
    seed: int
    concept: float  # frames showing the concept (its shape in both concept colours)
    background: float  # frames with the asked background
    others: float | None  # frames showing every asked non-concept object; None when none is asked
    motion: bool | None  # the concept's shape went the asked way; None when no motion is asked
    # Frames with the background and every non-concept object right; 0 when an asked motion is wrong.
    composition: float
    # Frames where the whole prompt is right (concept too); 0 when an asked motion is wrong.
    everything: float
    extra_objects: float

    def to_dict(self) -> dict:
        return asdict(self)


def judge_concept_clip(frames: np.ndarray, prompt: str, seed: int = 0,
                       concept: tuple[str, str] | dict[str, tuple[str, str]] = CONCEPT_COLOURS) -> ConceptClip:
    """Judge (f, h, w, 3) uint8 frames against a prompt naming a concept token (any renderer's frames: base model too)."""
    request = parse_caption(prompt)
    tokens = [w for w in request.objects if w["colour"].startswith("<")]
    others = [w for w in request.objects if not w["colour"].startswith("<")]
    if not tokens:
        raise ValueError(f"prompt {prompt!r} names no concept token; write e.g. 'a <new1> circle on a white background'")
    score = score_video(frames, request, concept)
    seen = judge_video(frames)
    background = [request.background is None or s.background == request.background for s in seen]
    has_concept = [all_present(s.objects, tokens, concept) for s in seen]
    has_others = [all_present(s.objects, others, concept) for s in seen]
    has_all = [all_present(s.objects, request.objects, concept) for s in seen]
    motion_ok = score.motion is not False
    return ConceptClip(
        prompt=prompt,
        seed=seed,
        concept=float(np.mean(has_concept)),
        background=float(np.mean(background)),
        others=float(np.mean(has_others)) if others else None,
        motion=score.motion,
        composition=float(np.mean([b and o for b, o in zip(background, has_others)])) * motion_ok,
        everything=float(np.mean([b and a for b, a in zip(background, has_all)])) * motion_ok,
        extra_objects=score.extra_objects,
    )
