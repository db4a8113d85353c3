"""Training data: image folders, Custom Diffusion's random-rescale augmentation, and a resumable sampler.

Every random choice draws from one `torch.Generator` that the loop owns and checkpoints, so a
resumed run sees exactly the images, crops and prompts an uninterrupted run would have seen.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cdvideo.errors import InputFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Below this many photos personalization tends to copy the photos rather than learn the subject.
FEW_IMAGES = 3
# Custom Diffusion: shrink to 1/3..1x of the canvas with this probability, else enlarge 1.2..1.4x.
SHRINK_PROBABILITY = 0.66
SMALL_PREFIXES = ("a far away ", "very small ")
LARGE_PREFIXES = ("zoomed in ", "close up ")
# `NAME.mask.png` beside `NAME.png`: the subject's mask (white = subject), as Break-A-Scene's masks.
MASK_SUFFIX = ".mask"


def image_paths(folder: Path) -> list[Path]:
    """The training images in `folder`, sorted by name; `NAME.mask.png` files are subject masks, not images."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.stem.endswith(MASK_SUFFIX))


def load_image_folder(folder: str | Path, what: str = "images") -> list:
    """Every image in `folder` as RGB PIL images, sorted by name; one-line errors for bad folders or files."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"{what} folder not found: {folder}")
    paths = image_paths(folder)
    if not paths:
        raise InputFileError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise InputFileError(f"cannot read image {path}: {error}".splitlines()[0]) from error
    return images


def image_captions(folder: str | Path, default: str) -> list[str]:
    """Each image's caption template, in load_image_folder's order: `NAME.txt` beside `NAME.png` when present
    (the usual layout of captioned training sets), else `default`. A caption names {token} and {class_word}
    as --instance-prompt does (e.g. "a photo of a {token} {class_word} on a beach")."""
    folder = Path(folder)
    paths = image_paths(folder)
    captions = []
    for path in paths:
        text_file = path.with_suffix(".txt")
        if not text_file.is_file():
            captions.append(default)
            continue
        try:
            caption = " ".join(text_file.read_text(encoding="utf-8").split())
        except (OSError, UnicodeDecodeError) as error:
            raise InputFileError(f"cannot read caption {text_file}: {error}".splitlines()[0]) from error
        if "{token}" not in caption:
            raise InputFileError(f"caption {text_file} must name {{token}} (and may name {{class_word}}), "
                                 f"e.g. 'a photo of a {{token}} {{class_word}} on a beach'; got {caption[:60]!r}")
        captions.append(caption)
    return captions


def mask_paths(folder: str | Path) -> list[Path]:
    """`NAME.mask.png` beside each image `NAME.png` of the folder (whether it exists or not)."""
    return [p.with_name(p.stem + MASK_SUFFIX + ".png") for p in image_paths(Path(folder))]


def load_subject_masks(folder: str | Path, images: list) -> list | None:
    """Each image's subject mask, in load_image_folder's order, as a PIL "L" image of the image's size: `NAME.mask.png`
    beside `NAME.png` (white = subject). None when the folder has no masks; an error naming the first image
    without one when only some have them, or a mask of another size."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    paths, found = image_paths(folder), mask_paths(folder)
    if not any(f.is_file() for f in found):
        return None
    masks = []
    for path, mask_path, image in zip(paths, found, images):
        if not mask_path.is_file():
            raise InputFileError(f"{path} has no subject mask {mask_path.name} while other images in {folder} do: "
                                 "give every image a mask (white = subject) or none")
        try:
            with Image.open(mask_path) as mask:
                mask = mask.convert("L")
        except (UnidentifiedImageError, OSError) as error:
            raise InputFileError(f"cannot read subject mask {mask_path}: {error}".splitlines()[0]) from error
        if mask.size != image.size:
            raise InputFileError(f"subject mask {mask_path} is {mask.size[0]}x{mask.size[1]}, its image "
                                 f"{image.size[0]}x{image.size[1]}: masks must match their images")
        masks.append(mask)
    return masks


# A background colour that this share of a subject's pixels lies near (within NEAR in RGB) would hide that part of
# the subject: the photo is not recoloured with it (a yellow-and-blue subject is never put on yellow or on blue).
NEAR, HIDDEN_SHARE = 80.0, 0.1


def recolour_backgrounds(images: list, captions: list[str], subjects: list, colours: dict[str, tuple[int, int, int]],
                         names: list[str] | None = None) -> tuple[list, list[str], list]:
    """Photos in several contexts made from the given ones: each photo once per colour of `colours`, its background
    (outside its subject mask, blended by the mask's softness) painted that colour and its caption template's
    `{background}` filled with the colour's name. A colour near a tenth or more of the subject's own pixels is
    skipped for that photo (it would hide part of the subject). Returns (images, captions, subjects), the photos in
    their order, each followed by its colours in `colours`' order; `names` name the photos in errors."""
    from PIL import Image

    palette = {name: np.array(rgb, dtype=np.float32) for name, rgb in colours.items()}
    out_images, out_captions, out_subjects = [], [], []
    for k, (image, caption, subject) in enumerate(zip(images, captions, subjects)):
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        weight = np.asarray(subject, dtype=np.float32)[..., None] / 255.0
        inside = pixels[weight[..., 0] > 0.5]
        kept = [name for name, rgb in palette.items()
                if inside.size == 0 or (np.linalg.norm(inside - rgb, axis=1) < NEAR).mean() < HIDDEN_SHARE]
        if not kept:
            label = names[k] if names else f"photo {k + 1}"
            raise InputFileError(f"every background colour would hide part of the subject of {label}: "
                                 f"give --backgrounds colours unlike the subject's")
        for name in kept:
            painted = weight * pixels + (1 - weight) * palette[name]
            out_images.append(Image.fromarray(painted.round().astype(np.uint8)))
            out_captions.append(caption.replace("{background}", name))
            out_subjects.append(subject)
    return out_images, out_captions, out_subjects


def read_composites(path: str | Path) -> list[tuple[str, str]]:
    """The composite scenes file: one `SCENE PROMPT | CAPTION` per line (blank lines and `#` comments skipped).
    The base model renders each scene; the subject is pasted in; the caption ({token} and {class_word} filled in)
    names both, e.g. `a cat on a sofa | a photo of a {token} {class_word} and a cat on a sofa`."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"composites file not found: {path}")
    scenes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        scene, bar, caption = (part.strip() for part in line.partition("|"))
        if not bar or not scene or "{token}" not in caption:
            raise InputFileError(f"{path}:{number}: write 'SCENE PROMPT | CAPTION' with {{token}} in the caption, "
                                 f"e.g. 'a cat on a sofa | a photo of a {{token}} {{class_word}} and a cat on a sofa'; "
                                 f"got {line[:60]!r}")
        scenes.append((scene, caption))
    if not scenes:
        raise InputFileError(f"composites file {path} holds no scenes")
    return scenes


def paste_subject(scene, image, subject, grid: int = 5):
    """`image`'s subject (where its mask `subject` is white) pasted onto `scene` (resized to the image) where the scene
    is plainest, so that it hides as little of what the scene shows (and its caption names) as it can: of a
    `grid` x `grid` set of places, the one where the scene's pixels under the mask vary least.
    Returns the composite (PIL RGB) and the subject's mask there (PIL "L")."""
    from PIL import Image

    canvas = np.asarray(scene.convert("RGB").resize(image.size, resample=Image.BILINEAR), dtype=np.float32)
    pixels, mask = np.asarray(image, dtype=np.float32), np.asarray(subject, dtype=np.float32) / 255.0
    rows, cols = np.nonzero(mask > 0.5)
    if rows.size == 0:
        return Image.fromarray(canvas.astype(np.uint8)), subject
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    piece, weight = pixels[top:bottom, left:right], mask[top:bottom, left:right, None]
    h, w = bottom - top, right - left
    best = None
    for y in np.linspace(0, canvas.shape[0] - h, grid).round().astype(int):
        for x in np.linspace(0, canvas.shape[1] - w, grid).round().astype(int):
            under = canvas[y : y + h, x : x + w][weight[..., 0] > 0.5]  # (k, 3) scene pixels the subject would hide
            spread = float(under.std(axis=0).sum())
            if best is None or spread < best[0]:
                best = (spread, y, x)
    _, y, x = best
    out, moved = canvas.copy(), np.zeros(mask.shape, dtype=np.float32)
    out[y : y + h, x : x + w] = weight * piece + (1 - weight) * out[y : y + h, x : x + w]
    moved[y : y + h, x : x + w] = weight[..., 0]
    return (Image.fromarray(out.round().astype(np.uint8)), Image.fromarray((moved * 255).round().astype(np.uint8)))


def warn_if_few(images: list, folder: str) -> None:
    if len(images) < FEW_IMAGES:
        warnings.warn(
            f"{folder} holds only {len(images)} image(s); {FEW_IMAGES} or more (ideally 4-6) learn the subject "
            "rather than copying the photos",
            stacklevel=2,
        )


# How far (per RGB channel) a border pixel may lie from the border's median, and two photos' backdrops from each
# other, and still count as one plain colour: JPEG noise and soft shadows stay inside it.
BACKDROP_TOLERANCE = 12


def plain_backdrop(image, ring: float = 1 / 16, tolerance: int = BACKDROP_TOLERANCE, share: float = 0.9) -> tuple[int, int, int] | None:
    """The photo's backdrop colour when its border is one plain colour (>= `share` of the outer `ring` of its side
    within `tolerance` of the ring's median colour, per channel), else None. A subject touching the border is
    allowed for: only most of the ring must agree."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    width = max(1, round(min(pixels.shape[:2]) * ring))
    border = np.concatenate([pixels[:width].reshape(-1, 3), pixels[-width:].reshape(-1, 3),
                             pixels[:, :width].reshape(-1, 3), pixels[:, -width:].reshape(-1, 3)])
    median = np.median(border, axis=0)
    if (np.abs(border - median).max(axis=1) <= tolerance).mean() < share:
        return None
    return tuple(int(c) for c in median.round())


def warn_if_one_backdrop(images: list, folder: str, has_masks: bool, tolerance: int = BACKDROP_TOLERANCE) -> None:
    """Warn when every photo shows its subject on the same plain backdrop. Measured on Shapes (docs/personalization.md,
    sessions 9-14), a concept learned on one background is drawn poorly or not at all on others, while photos in
    several contexts, or the same photos painted on several backgrounds, open them."""
    if len(images) < 2:
        return
    backdrops = [plain_backdrop(image, tolerance=tolerance) for image in images]
    if any(b is None for b in backdrops) or np.ptp(np.array(backdrops), axis=0).max() > tolerance:
        return
    colour = "#%02x%02x%02x" % backdrops[0]
    remedy = ("or train each on several with --backgrounds 'NAME=#RRGGBB, ...'" if has_masks else
              "or give each a subject mask (NAME.mask.png) and train them on several with --backgrounds")
    warnings.warn(
        f"{folder}: all {len(images)} photos show the subject on the same plain background ({colour}); a concept "
        f"learned on one background is often not drawn on others: add photos in other contexts, {remedy}",
        stacklevel=2,
    )


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high), as numpy's randint, from the run's generator."""
    return int(torch.randint(low, high, (1,), generator=generator))


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def to_tensor(image) -> torch.Tensor:
    """PIL RGB -> (3, h, w) float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (h, w, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def random_rescale(image, prompt: str, size: int, generator: torch.Generator, augment: bool = True,
                   hflip: bool = True, latent_factor: int = 8, subject=None
                   ) -> tuple[torch.Tensor, torch.Tensor, str, torch.Tensor | None]:
    """Implements Custom Diffusion's training augmentation (Kumari et al., 2023): random rescale, mask, prompt prefix.

    Returns the image (3, size, size) in [-1, 1], the valid-region mask (1, size/8, size/8) in
    latent resolution, the prompt with a size prefix when the subject became small or large, and the
    subject mask (`subject`, a PIL "L" image or None) moved exactly as the image, (1, size, size) in [0, 1].
    A shrunken image sits on a black canvas; its mask leaves out a one-latent-pixel border so the
    loss never sees the canvas edge.
    """
    from PIL import Image

    if hflip and _uniform(generator) < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        subject = None if subject is None else subject.transpose(Image.FLIP_LEFT_RIGHT)
    scale = size
    if augment:
        if _uniform(generator) < SHRINK_PROBABILITY:
            scale = _randint(generator, size // 3, size + 1)
        else:
            scale = _randint(generator, int(1.2 * size), int(1.4 * size))
    scale += scale % 2
    if scale < 0.6 * size:
        prompt = SMALL_PREFIXES[_randint(generator, 0, 2)] + prompt
    elif scale > size:
        prompt = LARGE_PREFIXES[_randint(generator, 0, 2)] + prompt

    resized = to_tensor(image.resize((scale, scale), resample=Image.BILINEAR))  # (3, scale, scale)
    subject_resized = None if subject is None else \
        torch.from_numpy(np.asarray(subject.resize((scale, scale), resample=Image.BILINEAR), dtype=np.float32) / 255.0)[None]
    subject_out = None
    latent = size // latent_factor
    if scale > size:
        top, left = _randint(generator, 0, scale - size + 1), _randint(generator, 0, scale - size + 1)
        pixels = resized[:, top : top + size, left : left + size]
        if subject_resized is not None:
            subject_out = subject_resized[:, top : top + size, left : left + size]
        mask = torch.ones(1, latent, latent)
    else:
        top, left = _randint(generator, 0, size - scale + 1), _randint(generator, 0, size - scale + 1)
        pixels = torch.zeros(3, size, size)
        pixels[:, top : top + scale, left : left + scale] = resized
        if subject_resized is not None:
            subject_out = torch.zeros(1, size, size)
            subject_out[:, top : top + scale, left : left + scale] = subject_resized
        mask = torch.zeros(1, latent, latent)
        if scale == size:
            mask[:] = 1.0
        else:
            f = latent_factor
            mask[:, top // f + 1 : (top + scale) // f - 1, left // f + 1 : (left + scale) // f - 1] = 1.0
    return pixels, mask, prompt, subject_out


@dataclass
class Example:
    """One training image with what it teaches: the prompt that names it and its concept's index."""

    image: object  # PIL RGB
    prompt: str
    concept: int
    subject: object = None  # PIL "L": the subject's mask (white = subject), when the folder has masks


class EpochSampler:
    """Draws batches from a list in random epoch order; its state (order, cursor) is checkpointed."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size = size
        self.generator = generator
        self.order = torch.randperm(size, generator=generator)
        self.cursor = 0

    def next_indices(self, count: int) -> list[int]:
        indices = []
        for _ in range(count):
            if self.cursor == self.size:
                self.order = torch.randperm(self.size, generator=self.generator)
                self.cursor = 0
            indices.append(int(self.order[self.cursor]))
            self.cursor += 1
        return indices

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"order": self.order.clone(), "cursor": torch.tensor(self.cursor)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.order = state["order"].clone()
        self.cursor = int(state["cursor"])


# The ways a moving clip goes (x, y per frame); "still" keeps the photo as it is. Drawn uniformly, as the Shapes world
# draws its scenes' motions.
MOVES: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}


def moving_clip(image: torch.Tensor, subject: torch.Tensor, move: str, step: int, frames: int,
                generator: torch.Generator) -> torch.Tensor:
    """`image` (3, s, s) as a clip (3, frames, s, s) whose subject (`subject`, (1, s, s) in [0, 1]) travels `step`
    pixels a frame the way `move` says, over the photo's background with the subject's own place filled by the
    background's median colour (exact for a plain backdrop or a --backgrounds colour). The start is drawn so that the
    whole path stays inside the frame where it can (else the path is centred on the photo's place)."""
    dx, dy = MOVES[move]
    if move == "still" or step == 0:
        return image.unsqueeze(1).expand(-1, frames, -1, -1).clone()
    size = image.shape[-1]
    inside = subject[0] > 0.5
    background = image[:, ~inside]
    fill = background.median(dim=1).values[:, None, None] if background.numel() else torch.zeros(3, 1, 1)
    plate = subject * fill + (1 - subject) * image
    rows, cols = torch.nonzero(inside, as_tuple=True)
    travel = step * (frames - 1)
    direction = dx or dy
    low_edge, high_edge = (cols.min(), cols.max() + 1) if dx else (rows.min(), rows.max() + 1)
    # Offsets o + direction * step * i, i = 0..frames-1, keep [low_edge, high_edge) inside [0, size).
    first = -int(low_edge) + (travel if direction < 0 else 0)
    last = size - int(high_edge) - (travel if direction > 0 else 0)
    start = _randint(generator, first, last + 1) if first <= last else (first + last) // 2
    clip = []
    for i in range(frames):
        shift = start + direction * step * i
        shifts = (0, shift) if dx else (shift, 0)
        moved_image, moved_subject = _shifted(image, shifts), _shifted(subject, shifts)
        clip.append(moved_subject * moved_image + (1 - moved_subject) * plate)
    return torch.stack(clip, dim=1)


def _shifted(tensor: torch.Tensor, shifts: tuple[int, int]) -> torch.Tensor:
    """(c, h, w) moved by (rows, cols) pixels; what comes in from outside is zero (no subject there)."""
    out = torch.zeros_like(tensor)
    h, w = tensor.shape[-2:]
    dy, dx = shifts
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
        tensor[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out


def make_batch(examples: list[Example], indices: list[int], size: int, generator: torch.Generator,
               augment: bool, hflip: bool, latent_factor: int = 8, moving: tuple[int, int] | None = None) -> dict:
    """Augment the chosen examples: pixels (b, 3, s, s), masks (b, 1, s/f, s/f) for the VAE's factor f, prompts,
    concepts, and subjects (b, 1, s, s) when every example has a subject mask (else None). `moving` (pixels a frame,
    frames): each example a moving clip instead, pixels (b, 3, frames, s, s), its caption's {motion} filled."""
    pixels, masks, prompts, subjects = [], [], [], []
    for index in indices:
        example = examples[index]
        image, mask, prompt, subject = random_rescale(example.image, example.prompt, size, generator, augment, hflip,
                                                      latent_factor, example.subject)
        if moving is not None:
            move = list(MOVES)[_randint(generator, 0, len(MOVES))]
            image = moving_clip(image, subject, move, moving[0], moving[1], generator)
            prompt = " ".join(prompt.replace("{motion}", "" if move == "still" else f"moving {move}").split())
        pixels.append(image)
        masks.append(mask)
        prompts.append(prompt)
        subjects.append(subject)
    return {
        "pixels": torch.stack(pixels),
        "masks": torch.stack(masks),
        "prompts": prompts,
        "concepts": [examples[i].concept for i in indices],
        "subjects": None if moving is not None or any(s is None for s in subjects) else torch.stack(subjects),
    }


def plain_batch(images: list, prompts: list[str], size: int, latent_factor: int = 8) -> dict:
    """Images resized to the training size without augmentation (held-out scoring, class images)."""
    from PIL import Image

    pixels = torch.stack([to_tensor(im.resize((size, size), resample=Image.BILINEAR)) for im in images])
    latent = size // latent_factor
    return {"pixels": pixels, "masks": torch.ones(len(images), 1, latent, latent), "prompts": list(prompts)}
