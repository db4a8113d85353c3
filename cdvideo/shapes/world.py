"""The Shapes world: seeded scenes of flat shapes that move, their captions, and their frames.

A scene is one or two objects (circle, square, triangle; six colours; small or big) on a plain
background, all moving the same way (left, right, up, down, or staying still) at a fixed speed.
Everything is drawn with hard edges from the scene's numbers, so the judge (`judge.py`) can read
any frame back exactly. No data files: a seed and `sample_scene` make the whole data set.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np

SIZE = 32  # frame side in pixels
NUM_FRAMES = 8  # frames per clip: 7 steps of SPEED pixels keep a big object inside the frame
SPEED = 2.0  # pixels per frame

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 8.0, "big": 12.0}  # side of the object's bounding box in pixels
MOTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
OPPOSITE_MOTION = {"left": "right", "right": "left", "up": "down", "down": "up"}

# Every word a caption can use: the shapes tokenizer gives each its own token.
WORDS = tuple(
    ["a", "and", "on", "background", "moving", "staying", "with", "photo", "video", "of"]
    + list(COLOURS) + list(SHAPES) + list(SIZES) + [m for m in MOTIONS]
)


@dataclass
class WorldObject:
    shape: str
    colour: str
    size: str  # "small" or "big"
    x: float  # centre at frame 0, in pixels
    y: float
    # A second colour for the lower half: the base world never has one (concepts do).
    lower_colour: str | None = None

    @property
    def extent(self) -> float:
        return SIZES[self.size]


@dataclass
class Scene:
    background: str
    objects: list[WorldObject]
    motion: str = "still"
    # Which words the caption states: a caption may leave out sizes or the motion.
    say_size: bool = True
    say_motion: bool = True
    concept_words: dict[int, str] = field(default_factory=dict)  # object index -> word for its colour slot

    def caption(self) -> str:
        parts = []
        for i, obj in enumerate(self.objects):
            words = ["a"]
            if self.say_size:
                words.append(obj.size)
            words.append(self.concept_words.get(i, obj.colour))
            words.append(obj.shape)
            parts.append(" ".join(words))
        text = " and ".join(parts)
        if self.say_motion:
            text += " " + motion_phrase(self.motion)
        return f"{text} on a {self.background} background"


def held_out(colour: str, shape: str, background: str) -> bool:
    """One in ten (colour, shape, background) triples is never shown in training: the test prompts."""
    return zlib.crc32(f"{colour} {shape} {background}".encode()) % 10 == 0


def _place(rng: np.random.Generator, extent: float, motion: str, lo: float, hi: float, axis: int) -> float:
    """A start coordinate along `axis` (0 = x) inside [lo, hi] such that the whole path stays inside."""
    dx, dy = MOTIONS[motion]
    travel = SPEED * (NUM_FRAMES - 1) * (dx if axis == 0 else dy)
    low = lo + extent / 2 - min(travel, 0.0)
    high = hi - extent / 2 - max(travel, 0.0)
    return float(rng.uniform(low, high))


def sample_scene(rng: np.random.Generator, *, split: str = "train", max_objects: int = 2) -> Scene:
    """A random scene. split="train" never uses a held-out triple for any object; "test" uses only them."""
    while True:
        background = str(rng.choice(list(COLOURS)))
        motion = str(rng.choice(list(MOTIONS)))
        count = 1 if max_objects == 1 or rng.random() < 0.7 else 2
        objects = []
        for _ in range(count):
            colour = str(rng.choice([c for c in COLOURS if c != background]))
            objects.append(WorldObject(str(rng.choice(SHAPES)), colour, str(rng.choice(list(SIZES))), 0.0, 0.0))
        triples = [held_out(o.colour, o.shape, background) for o in objects]
        if (split == "train" and not any(triples)) or (split == "test" and all(triples)) or split == "any":
            break
    # Two objects sit side by side across the motion: each gets half the frame.
    horizontal = MOTIONS[motion][0] != 0 or (motion == "still" and rng.random() < 0.5)
    for i, obj in enumerate(objects):
        if count == 1:
            x_range = y_range = (0.0, float(SIZE))
        elif horizontal:  # stacked: top and bottom halves
            x_range, y_range = (0.0, float(SIZE)), (i * SIZE / 2, (i + 1) * SIZE / 2)
        else:  # left and right halves
            x_range, y_range = (i * SIZE / 2, (i + 1) * SIZE / 2), (0.0, float(SIZE))
        obj.x = _place(rng, obj.extent, motion, *x_range, axis=0)
        obj.y = _place(rng, obj.extent, motion, *y_range, axis=1)
    return Scene(background, objects, motion, say_size=bool(rng.random() < 0.5), say_motion=bool(rng.random() < 0.8))


def shape_mask(shape: str, cx: float, cy: float, extent: float, size: int = SIZE) -> np.ndarray:
    """Which pixels (by their centres) the shape covers: hard edges, no anti-aliasing."""
    xs = np.arange(size, dtype=np.float32)[None, :] + 0.5
    ys = np.arange(size, dtype=np.float32)[:, None] + 0.5
    r = extent / 2
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
    if shape == "triangle":  # apex up; half-width grows linearly from 0 at the top to r at the bottom
        t = (ys - (cy - r)) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(xs - cx) <= r * t)
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def draw_frame(scene: Scene, index: int) -> np.ndarray:
    """Frame `index` of the scene as (SIZE, SIZE, 3) uint8."""
    frame = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    frame[:] = COLOURS[scene.background]
    dx, dy = MOTIONS[scene.motion]
    for obj in scene.objects:
        cx, cy = obj.x + SPEED * index * dx, obj.y + SPEED * index * dy
        mask = shape_mask(obj.shape, cx, cy, obj.extent)
        frame[mask] = COLOURS[obj.colour]
        if obj.lower_colour:
            lower = mask & (np.arange(SIZE)[:, None] + 0.5 > cy)
            frame[lower] = COLOURS[obj.lower_colour]
    return frame


def draw_clip(scene: Scene, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """The scene's clip as (num_frames, SIZE, SIZE, 3) uint8."""
    return np.stack([draw_frame(scene, i) for i in range(num_frames)])


# --- captions back into what they ask for -------------------------------------------------------

_COLOUR = "|".join(COLOURS)
_OBJECT = rf"an? (?:(?P<size{{i}}>small|big) )?(?P<colour{{i}}>{_COLOUR}|<[^>\s]+>) (?P<shape{{i}}>{'|'.join(SHAPES)})"
_CAPTION = re.compile(
    "^(?:a (?:photo|video) of )?"
    + _OBJECT.format(i=0)
    + "(?: and " + _OBJECT.format(i=1) + ")?"
    + rf"(?: (?:moving (?P<motion>left|right|up|down)|(?P<still>staying still)))?"
    + rf"(?: on a (?P<background>{_COLOUR}) background)?$"
)


@dataclass
class Request:
    """What a caption asks for; None where it does not say."""

    objects: list[dict]  # each: shape, colour (a colour name or a concept token), size or None
    motion: str | None
    background: str | None


def parse_caption(text: str) -> Request:
    """Read a world caption ("a big red circle moving left on a blue background") into a Request."""
    match = _CAPTION.match(" ".join(text.lower().split()))
    if not match:
        raise ValueError(
            f"not a Shapes-world caption: {text!r}; write e.g. 'a red circle moving left on a blue background'"
        )
    objects = []
    for i in (0, 1):
        if match.group(f"shape{i}"):
            objects.append(dict(shape=match.group(f"shape{i}"), colour=match.group(f"colour{i}"),
                                size=match.group(f"size{i}")))
    motion = match.group("motion") or ("still" if match.group("still") else None)
    return Request(objects, motion, match.group("background"))


# --- the example concept: something the base world never shows ----------------------------------

# A two-tone circle: yellow above, blue below. Its class word is "circle"; `<new1> circle` should
# keep composing like "circle" does (other backgrounds, a second object, a motion).
CONCEPT = dict(token="<new1>", class_word="circle", upper="yellow", lower="blue")
# A second concept nothing was tuned on (issue 16): a two-tone square, red above, white below.
SECOND_CONCEPT = dict(token="<new2>", class_word="square", upper="red", lower="white")
CONCEPTS = {"circle": CONCEPT, "square": SECOND_CONCEPT}


def concept_scene(rng: np.random.Generator, background: str = "black", motion: str = "still",
                  concept: dict = CONCEPT) -> Scene:
    """One big two-tone `concept` (its class word is its shape), placed at random, on `background`:
    a concept's training images."""
    obj = WorldObject(concept["class_word"], concept["upper"], "big", 0.0, 0.0, lower_colour=concept["lower"])
    obj.x = _place(rng, obj.extent, motion, 0.0, float(SIZE), axis=0)
    obj.y = _place(rng, obj.extent, motion, 0.0, float(SIZE), axis=1)
    return Scene(background, [obj], motion, say_size=False, say_motion=False, concept_words={0: concept["token"]})


def motion_phrase(motion: str) -> str:
    return "staying still" if motion == "still" else f"moving {motion}"


def with_motion(caption: str, motion: str) -> str | None:
    """The caption with its motion phrase said for `motion` instead; None if it states no motion."""
    match = re.search(r"\b(moving (?:left|right|up|down)|staying still)\b", caption)
    if match is None:
        return None
    return caption[:match.start()] + motion_phrase(motion) + caption[match.end():]


def with_opposite_motion(caption: str) -> str | None:
    """The caption with its motion reversed ("moving left" -> "moving right"); None if it states none or stays still."""
    request_motion = re.search(r"\bmoving (left|right|up|down)\b", caption)
    return with_motion(caption, OPPOSITE_MOTION[request_motion.group(1)]) if request_motion else None
