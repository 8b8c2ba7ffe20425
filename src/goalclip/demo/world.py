"""A deterministic synthetic long-caption world for the demo and the tests.

Why synthetic: the demo and the tests cannot download real datasets, yet every step of the GOAL
recipe (sentence splitting, region mining, local pairs, TSL, retrieval) must run end to end on data
whose ground truth is known. Each image holds a few flat shapes sitting exactly in grid cells (a
tiny ViT trained from scratch learns shape only when objects sit on the patch grid), and each object
gets one sentence of a long caption. The true object boxes stand in for a detector.

The resolution gap of real data: DOCCI/DCI photos are 1,500-2,000 px and CLIP sees 224 px, so a crop
taken from the original shows detail the global view barely resolves. Here every object carries a
fine marking (stripes one way or the other, or spots) whose period is 3/32 of a cell: clear at the
rendered size and in any crop of it, but 1.5 px at a quarter of the size (the demo renders at 4x
its model's input), where the model's downsampling blurs it to a faint texture. The captions name
the marking; all markings cover the same share of the object, so its mean colour does not tell them
apart.

Splits:

- ``pretrain``: one object per image with a short alt-text caption; several objects under a
  one-object caption would make colour a shortcut and leave shape at chance. Stored as thumbnails
  of ``pretrain_size`` pixels when set (web alt-text images are small; it also keeps pretraining
  cheap); the alt text never names the marking.
- ``train``: independent random scenes with long captions.
- ``test``: small families of scenes sharing every object but one, so retrieval needs the details.

Every image and family draws from its own generator seeded with ``(seed, split, index)``, so
splits never share random streams and growing a split leaves its earlier records unchanged.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from goalclip.core.manifest import atomic_write, write_jsonl, write_manifest

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
# Saturated object colours; backgrounds are pure greys (r == g == b), so no background pixel can
# ever carry an object's colour and colour alone says "object here".
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 90, 225),
    "yellow": (240, 205, 40),
    "purple": (145, 60, 190),
    "orange": (245, 135, 30),
}
# Half the object's side as a fraction of the cell side.
SIZES: dict[str, float] = {"small": 0.25, "large": 0.42}
# Fine markings, each covering about a third of the object so that only their shape tells them apart.
MARKINGS: tuple[str, ...] = ("horizontal stripes", "vertical stripes", "spots")
# The markings' ink: pale but not grey (blue below red and green), so no background pixel has it.
INK: tuple[int, int, int] = (250, 250, 225)
BACKGROUNDS: dict[str, int] = {"white": 240, "light grey": 180, "dark grey": 90, "black": 25}
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "speckled", "gradient")
NOISE_STD = 10.0

ROW_WORDS: dict[int, tuple[str, ...]] = {
    2: ("top", "bottom"),
    3: ("top", "middle", "bottom"),
    4: ("top", "upper", "lower", "bottom"),
    5: ("top", "upper", "middle", "lower", "bottom"),
}
COL_WORDS: dict[int, tuple[str, ...]] = {
    2: ("left", "right"),
    3: ("left", "centre", "right"),
    4: ("left", "centre-left", "centre-right", "right"),
    5: ("left", "centre-left", "centre", "centre-right", "right"),
}

# ``{shape}`` is the shape with its marking in long captions ("circle with spots") and the bare shape
# in pretraining alt text.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "A {size} {colour} {shape} sits in the {position}.",
    "In the {position} there is a {size} {colour} {shape}.",
    "There is a {size} {colour} {shape} in the {position}.",
    "The {position} holds a {size} {colour} {shape}.",
    "A {size} {shape} in the {position} is {colour}.",
    "You can see a {size} {colour} {shape} in the {position}.",
)
SCENE_TEMPLATES: tuple[str, ...] = (
    "The picture shows {count} on {background}.",
    "There {be} {count} on {background}.",
    "The image has {count} on {background}.",
)
BACKGROUND_PHRASES: dict[str, str] = {
    "plain": "a plain {first} background",
    "speckled": "a speckled {first} background",
    "gradient": "a background fading from {first} to {second}",
}
PRETRAIN_TEMPLATE = "a {size} {colour} {shape} in the {position}"

_UNITS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()

# Disjoint random streams: each image (pretrain, train), each test family, and the family sizes.
_SPLIT_CODES: dict[str, int] = {"pretrain": 0, "train": 1, "test": 2, "families": 3}
# Saving is mostly fsync (atomic writes) and zlib, both of which release the GIL, so a few
# threads hide the disk latency; every image draws from its own generator, so the output does
# not depend on scheduling.
_WORKERS = 8


@dataclass
class WorldConfig:
    """Size and randomness of a synthetic world; ``validate`` rejects worlds that cannot be drawn."""

    n_pretrain: int = 3000
    n_train: int = 600
    n_test: int = 200
    image_size: int = 128
    grid: int = 4
    min_objects: int = 3
    max_objects: int = 5
    family_min: int = 2
    family_max: int = 4
    closeup_percent: int = 50
    pretrain_size: int = 0
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad field, before any file is written."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"WorldConfig.{field.name} must be an int, got {value!r}")
        if not 0 <= self.pretrain_size <= self.image_size:
            raise ValueError(
                f"WorldConfig.pretrain_size must be between 0 (full size) and image_size ({self.image_size}), "
                f"got {self.pretrain_size}"
            )
        if self.n_pretrain < 0:
            raise ValueError(f"WorldConfig.n_pretrain must be >= 0, got {self.n_pretrain}")
        if not 0 <= self.closeup_percent <= 100:
            raise ValueError(f"WorldConfig.closeup_percent must be between 0 and 100, got {self.closeup_percent}")
        for name in ("n_train", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.grid not in ROW_WORDS:
            raise ValueError(
                f"WorldConfig.grid must be one of {sorted(ROW_WORDS)} (cells per side with position "
                f"words), got {self.grid}"
            )
        if self.image_size % self.grid:
            raise ValueError(
                f"WorldConfig.image_size ({self.image_size}) must be divisible by grid ({self.grid}) "
                "so objects sit exactly in grid cells"
            )
        if self.image_size // self.grid < 8:
            raise ValueError(
                f"WorldConfig.image_size ({self.image_size}) is too small: each of the {self.grid} "
                "grid cells per side needs at least 8 pixels to draw a recognisable shape"
            )
        if self.min_objects < 1:
            raise ValueError(f"WorldConfig.min_objects must be >= 1, got {self.min_objects}")
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"WorldConfig.min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})"
            )
        if self.max_objects > self.grid * self.grid:
            raise ValueError(
                f"WorldConfig.max_objects ({self.max_objects}) must be <= grid*grid "
                f"({self.grid * self.grid}): each object needs its own cell"
            )
        if not 2 <= self.family_min <= self.family_max:
            raise ValueError(
                "WorldConfig needs 2 <= family_min <= family_max, "
                f"got {self.family_min} and {self.family_max}"
            )
        most = _most_family_members(self)
        if self.family_max > most:
            raise ValueError(
                f"WorldConfig.family_max ({self.family_max}) is too large: with grid {self.grid} and "
                f"max_objects {self.max_objects} a family has at most {most} distinct members "
                "(the base plus one per single-attribute change)"
            )
        if self.seed < 0:
            raise ValueError(f"WorldConfig.seed must be >= 0, got {self.seed}")

    @property
    def cell_size(self) -> int:
        return self.image_size // self.grid


@dataclass(frozen=True)
class World:
    """Where a generated world's files live; ``World.at(folder)`` finds an existing one."""

    root: Path
    images: Path
    pretrain: Path
    train: Path
    test: Path
    train_boxes: Path
    test_boxes: Path
    config: Path
    readme: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> World:
        root = Path(root).resolve()
        return cls(
            root=root,
            images=root / "images",
            pretrain=root / "pretrain.jsonl",
            train=root / "train.jsonl",
            test=root / "test.jsonl",
            train_boxes=root / "train_boxes.jsonl",
            test_boxes=root / "test_boxes.jsonl",
            config=root / "config.json",
            readme=root / "README.txt",
        )


@dataclass(frozen=True)
class _Object:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    marking: str


@dataclass(frozen=True)
class _Background:
    kind: str
    first: str
    second: str
    vertical: bool
    noise_seed: int


@dataclass(frozen=True)
class _Scene:
    objects: tuple[_Object, ...]
    background: _Background


def _most_family_members(config: WorldConfig) -> int:
    """The base plus every distinct one-attribute change of one object in the fullest scene."""
    changes = (len(COLOURS) + len(SHAPES) + len(SIZES) + len(MARKINGS) - 4
               + config.grid * config.grid - config.max_objects)
    return 1 + changes


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


def _rng(config: WorldConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, _SPLIT_CODES[split], index])


def _count_words(n: int) -> str:
    """English words for 1..29 (a 5x5 grid holds at most 25): the tiny tokenizer sees words, not digits."""
    return _UNITS[n - 1] if n <= 20 else f"twenty-{_UNITS[n - 21]}"


def position_phrase(row: int, col: int, grid: int) -> str:
    """The words for a cell, e.g. ``"top left"`` or ``"lower centre-right"``."""
    return f"{ROW_WORDS[grid][row]} {COL_WORDS[grid][col]}"


def _random_object(rng: np.random.Generator, row: int, col: int) -> _Object:
    return _Object(_pick(rng, SHAPES), _pick(rng, list(COLOURS)), _pick(rng, list(SIZES)), row, col,
                   _pick(rng, MARKINGS))


def _random_background(rng: np.random.Generator) -> _Background:
    names = list(BACKGROUNDS)
    first, second = (names[int(i)] for i in rng.choice(len(names), size=2, replace=False))
    return _Background(
        kind=_pick(rng, BACKGROUND_KINDS),
        first=first,
        second=second,
        vertical=bool(rng.integers(2)),
        noise_seed=int(rng.integers(2**31)),
    )


def _random_scene(rng: np.random.Generator, config: WorldConfig, n_objects: int) -> _Scene:
    cells = sorted(int(c) for c in rng.choice(config.grid * config.grid, size=n_objects, replace=False))
    objects = tuple(_random_object(rng, c // config.grid, c % config.grid) for c in cells)
    return _Scene(objects, _random_background(rng))


def _variant(
    rng: np.random.Generator, base: _Scene, index: int, taken: set[_Object], config: WorldConfig
) -> tuple[_Scene, _Object, str]:
    """Change one attribute of ``base.objects[index]`` to a value no family member has used yet."""
    obj = base.objects[index]
    occupied = {(o.row, o.col) for o in base.objects}
    free = [
        (r, c) for r in range(config.grid) for c in range(config.grid) if (r, c) not in occupied
    ]
    options = {
        "colour": [dataclasses.replace(obj, colour=c) for c in COLOURS if c != obj.colour],
        "shape": [dataclasses.replace(obj, shape=s) for s in SHAPES if s != obj.shape],
        "size": [dataclasses.replace(obj, size=s) for s in SIZES if s != obj.size],
        "marking": [dataclasses.replace(obj, marking=m) for m in MARKINGS if m != obj.marking],
        "position": [dataclasses.replace(obj, row=r, col=c) for r, c in free],
    }
    options = {k: [o for o in v if o not in taken] for k, v in options.items()}
    attribute = _pick(rng, [k for k, v in options.items() if v])
    changed = _pick(rng, options[attribute])
    objects = [*base.objects[:index], changed, *base.objects[index + 1 :]]
    objects.sort(key=lambda o: (o.row, o.col))
    return _Scene(tuple(objects), base.background), changed, attribute


def _object_box(row: int, col: int, size: str, config: WorldConfig) -> tuple[int, int, int, int]:
    """Pixel box ``(x1, y1, x2, y2)`` (x2, y2 exclusive) centred in the object's grid cell."""
    cell = config.cell_size
    half = min(cell // 2, max(2, round(SIZES[size] * cell)))
    cx, cy = col * cell + cell // 2, row * cell + cell // 2
    return cx - half, cy - half, cx + half, cy + half


def _background(background: _Background, size: int) -> Image.Image:
    """A grey background; speckles are 2x2 pixels, which keeps PNG encoding (the slow part) fast."""
    level = BACKGROUNDS[background.first]
    if background.kind == "plain":
        return Image.new("RGB", (size, size), (level, level, level))
    if background.kind == "gradient":
        ramp = np.linspace(level, BACKGROUNDS[background.second], size)
        grey = np.broadcast_to(ramp[:, None] if background.vertical else ramp[None, :], (size, size))
    else:
        half = (size + 1) // 2
        noise = np.random.default_rng(background.noise_seed).normal(0.0, NOISE_STD, (half, half))
        grey = level + noise.repeat(2, axis=0).repeat(2, axis=1)[:size, :size]
    pixels = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L").convert("RGB")


def _shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean [height, width] mask of a shape filling a width x height box."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    # PIL coordinates are inclusive: draw on [0, width - 1].
    right, bottom = width - 1, height - 1
    mid_x, mid_y = right / 2, bottom / 2
    if shape == "circle":
        draw.ellipse((0, 0, right, bottom), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, right, bottom), fill=255)
    elif shape == "triangle":
        draw.polygon([(mid_x, 0), (right, bottom), (0, bottom)], fill=255)
    elif shape == "diamond":
        draw.polygon([(mid_x, 0), (right, mid_y), (mid_x, bottom), (0, mid_y)], fill=255)
    elif shape == "cross":
        arm = max(1, round(width / 6))
        cx, cy = width // 2, height // 2
        draw.rectangle((0, cy - arm, right, cy + arm - 1), fill=255)
        draw.rectangle((cx - arm, 0, cx + arm - 1, bottom), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(mask) > 0


def marking_period(config: WorldConfig) -> int:
    """Pixels per repeat of a marking: 3/32 of a cell (6 px in a 64 px cell), at least 3.

    At a quarter of the size that is 1.5 px, past what the model's input can resolve: bicubic
    downsampling keeps about a quarter of the difference between two markings.
    """
    return max(3, round(config.cell_size * 3 / 32))


def _marking_mask(marking: str, width: int, height: int, period: int) -> np.ndarray:
    """Boolean [height, width] mask of a marking's ink, anchored at the box's corner, ~1/3 ink."""
    ys, xs = np.mgrid[0:height, 0:width]
    line = max(1, round(period / 3))
    if marking == "horizontal stripes":
        return ys % period >= period - line
    if marking == "vertical stripes":
        return xs % period >= period - line
    if marking == "spots":  # (2/3 x 1/2 of the period) per period squared = 1/3
        return (ys % period < max(1, round(period / 2))) & (xs % period < max(1, round(period * 2 / 3)))
    raise ValueError(f"unknown marking {marking!r}")


def _render(scene: _Scene, config: WorldConfig) -> Image.Image:
    """Draw a scene without anti-aliasing, so object pixels carry their exact named colour or the ink."""
    pixels = np.array(_background(scene.background, config.image_size))
    period = marking_period(config)
    for obj in scene.objects:
        x1, y1, x2, y2 = _object_box(obj.row, obj.col, obj.size, config)
        shape = _shape_mask(obj.shape, x2 - x1, y2 - y1)
        ink = _marking_mask(obj.marking, x2 - x1, y2 - y1, period)
        box = pixels[y1:y2, x1:x2]
        box[shape & ~ink] = COLOURS[obj.colour]
        box[shape & ink] = INK
    return Image.fromarray(pixels, "RGB")


def _save_png(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    with atomic_write(path, "wb", fsync=False) as handle:
        handle.write(buffer.getvalue())


def _words(obj: _Object, grid: int, marking: bool) -> dict[str, str]:
    """The template fields of one object; with ``marking`` the shape is named with its marking."""
    position = position_phrase(obj.row, obj.col, grid)
    shape = f"{obj.shape} with {obj.marking}" if marking else obj.shape
    return {"size": obj.size, "colour": obj.colour, "shape": shape, "position": position}


def _object_sentence(rng: np.random.Generator, obj: _Object, config: WorldConfig) -> str:
    return _pick(rng, OBJECT_TEMPLATES).format(**_words(obj, config.grid, marking=True))


def _scene_sentence(rng: np.random.Generator, scene: _Scene) -> str:
    n = len(scene.objects)
    background = BACKGROUND_PHRASES[scene.background.kind].format(
        first=scene.background.first, second=scene.background.second
    )
    count = f"{_count_words(n)} {'shape' if n == 1 else 'shapes'}"
    be = "is" if n == 1 else "are"
    return _pick(rng, SCENE_TEMPLATES).format(count=count, be=be, background=background)


def _object_record(obj: _Object, sentence: str, config: WorldConfig) -> dict[str, Any]:
    return {
        "shape": obj.shape,
        "colour": obj.colour,
        "size": obj.size,
        "marking": obj.marking,
        "position": position_phrase(obj.row, obj.col, config.grid),
        "cell": [obj.row, obj.col],
        "box": list(_object_box(obj.row, obj.col, obj.size, config)),
        "sentence": sentence,
    }


def _long_record(
    rng: np.random.Generator, rid: str, scene: _Scene, images: Path, config: WorldConfig
) -> dict[str, Any]:
    """Render a scene and describe it with one sentence per object plus a scene sentence, shuffled."""
    image_path = images / f"{rid}.png"
    _save_png(_render(scene, config), image_path)
    sentences = [_object_sentence(rng, obj, config) for obj in scene.objects]
    scene_sentence = _scene_sentence(rng, scene)
    ordered = [*sentences, scene_sentence]
    caption = " ".join(ordered[int(i)] for i in rng.permutation(len(ordered)))
    return {
        "id": rid,
        "image": str(image_path),
        "caption": caption,
        "scene_sentence": scene_sentence,
        "objects": [_object_record(o, s, config) for o, s in zip(scene.objects, sentences, strict=True)],
    }


def _closeup(image: Image.Image, box: tuple[int, int, int, int], zoom: float) -> tuple[Image.Image, list[int]]:
    """Zoom in on one object: a square crop ``zoom`` times the box's size, scaled to full size.

    Web images show objects at every scale; without close-ups a tiny CLIP pretrained only on
    small objects cannot match the zoomed-in crops that pair mining embeds. Nearest-neighbour
    scaling keeps the object's exact colour. Returns the image and the object's new box.
    """
    size = image.width
    side = min(size, max(4, round((box[2] - box[0]) * zoom)))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    left = min(max(0, round(cx - side / 2)), size - side)
    top = min(max(0, round(cy - side / 2)), size - side)
    scale = size / side
    zoomed = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.NEAREST)
    new_box = [round((box[0] - left) * scale), round((box[1] - top) * scale),
               round((box[2] - left) * scale), round((box[3] - top) * scale)]
    return zoomed, [max(0, min(size, v)) for v in new_box]


def _pretrain_record(index: int, images: Path, config: WorldConfig) -> dict[str, Any]:
    rng = _rng(config, "pretrain", index)
    rid = f"pretrain-{index:06d}"
    scene = _random_scene(rng, config, 1)
    obj = scene.objects[0]
    closeup = bool(rng.integers(100) < config.closeup_percent)
    zoom = float(rng.uniform(1.1, 2.5))
    # Alt text comes in many phrasings; a tiny CLIP that saw only one template would not
    # understand the long captions' sentences, so the object-sentence templates appear too. A
    # close-up keeps its scene's caption (position included), as a zoomed photo's alt text does.
    caption = _pick(rng, (PRETRAIN_TEMPLATE, *OBJECT_TEMPLATES)).format(**_words(obj, config.grid, marking=False))
    image = _render(scene, config)
    record_obj = _object_record(obj, caption, config)
    if closeup:
        image, record_obj["box"] = _closeup(image, _object_box(obj.row, obj.col, obj.size, config), zoom)
    if config.pretrain_size and config.pretrain_size != config.image_size:
        # bicubic with antialiasing, as CLIP's processor downsamples: the marking fades to a texture
        scale = config.pretrain_size / config.image_size
        image = image.resize((config.pretrain_size, config.pretrain_size), Image.Resampling.BICUBIC)
        x1, y1, x2, y2 = record_obj["box"]
        record_obj["box"] = [math.floor(x1 * scale), math.floor(y1 * scale), math.ceil(x2 * scale),
                             math.ceil(y2 * scale)]
    image_path = images / f"{rid}.png"
    _save_png(image, image_path)
    return {"id": rid, "image": str(image_path), "caption": caption, "closeup": closeup, "objects": [record_obj]}


def _train_record(index: int, images: Path, config: WorldConfig) -> dict[str, Any]:
    rng = _rng(config, "train", index)
    scene = _random_scene(rng, config, int(rng.integers(config.min_objects, config.max_objects + 1)))
    return _long_record(rng, f"train-{index:06d}", scene, images, config)


def _family_sizes(config: WorldConfig) -> list[int]:
    """Test family sizes summing to ``n_test``; the last family may be cut short."""
    rng = _rng(config, "families", 0)
    sizes: list[int] = []
    remaining = config.n_test
    while remaining > 0:
        sizes.append(min(int(rng.integers(config.family_min, config.family_max + 1)), remaining))
        remaining -= sizes[-1]
    return sizes


def _test_family(
    family: int, start: int, size: int, images: Path, config: WorldConfig
) -> list[dict[str, Any]]:
    """A base scene and variants that each change one attribute of the same object.

    Every pair of members then differs in exactly one object, so only the sentence about that
    object tells their captions apart.
    """
    rng = _rng(config, "test", family)
    base = _random_scene(rng, config, int(rng.integers(config.min_objects, config.max_objects + 1)))
    index = int(rng.integers(len(base.objects)))
    taken = {base.objects[index]}
    members: list[tuple[_Scene, str]] = [(base, "base")]
    for _ in range(size - 1):
        scene, changed, attribute = _variant(rng, base, index, taken, config)
        taken.add(changed)
        members.append((scene, attribute))
    records = []
    for offset, (scene, attribute) in enumerate(members):
        record = _long_record(rng, f"test-{start + offset:06d}", scene, images, config)
        record["family"] = family
        record["changed"] = attribute
        records.append(record)
    return records


def _boxes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": r["id"], "boxes": [o["box"] for o in r["objects"]]} for r in records]


def _readme(config: WorldConfig) -> str:
    small = config.pretrain_size and config.pretrain_size != config.image_size
    pretrain_note = f"{config.pretrain_size} px thumbnails" if small else "full size"
    return f"""Synthetic long-caption world made by goalclip.demo.world (seed {config.seed}).

Each image is {config.image_size}x{config.image_size} pixels on a {config.grid}x{config.grid} grid;
every object sits centred in its own cell and carries a fine marking (stripes or spots, period
{marking_period(config)} px) that the captions name. Image paths are relative to this folder.

images/            PNG images, named by record id.
pretrain.jsonl     {config.n_pretrain} one-object images with a short alt-text caption
                   ("a small green triangle in the top right"), for pretraining a tiny CLIP
                   ({pretrain_note}).
train.jsonl        {config.n_train} scenes of {config.min_objects}-{config.max_objects} objects with a long caption:
                   one sentence per object plus one scene sentence, in random order.
test.jsonl         {config.n_test} scenes in families of {config.family_min}-{config.family_max} ("family") that
                   share every object but one; "changed" names the attribute the variant changed.
train_boxes.jsonl  true object boxes per train image ({{"id", "boxes"}}): stand-in for a detector.
test_boxes.jsonl   the same for the test images.
config.json        the WorldConfig that made this folder; the same config gives identical files.

Every train/test record also has "scene_sentence" and "objects": shape, colour, size, marking,
position words, grid cell [row, col], box [x1, y1, x2, y2] in pixels (x2, y2 exclusive) and
the object's sentence exactly as it appears in the caption.
"""


def generate_world(
    out_dir: str | os.PathLike, config: WorldConfig | None = None, progress: bool = False
) -> World:
    """Write a complete synthetic world to ``out_dir`` and return where its files are.

    Files of the same names are overwritten; images that no manifest names any more are left.
    """
    config = config or WorldConfig()
    config.validate()
    world = World.at(out_dir)
    images = world.images
    images.mkdir(parents=True, exist_ok=True)
    sizes = _family_sizes(config)
    starts = [0, *itertools.accumulate(sizes)][:-1]
    total = config.n_pretrain + config.n_train + config.n_test
    # Shut down with cancel_futures so a failure (say, a full disk) stops the remaining images.
    pool = ThreadPoolExecutor(max_workers=_WORKERS)
    try:
        with tqdm(total=total, desc="synthetic world", unit="img", disable=not progress) as bar:
            pretrain = []
            for record in pool.map(lambda i: _pretrain_record(i, images, config), range(config.n_pretrain)):
                pretrain.append(record)
                bar.update()
            train = []
            for record in pool.map(lambda i: _train_record(i, images, config), range(config.n_train)):
                train.append(record)
                bar.update()
            test: list[dict[str, Any]] = []
            for members in pool.map(
                lambda f: _test_family(f, starts[f], sizes[f], images, config), range(len(sizes))
            ):
                test.extend(members)
                bar.update(len(members))
    finally:
        pool.shutdown(cancel_futures=True)
    write_manifest(world.pretrain, pretrain)
    write_manifest(world.train, train)
    write_manifest(world.test, test)
    write_jsonl(world.train_boxes, _boxes(train))
    write_jsonl(world.test_boxes, _boxes(test))
    with atomic_write(world.config) as handle:
        handle.write(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True) + "\n")
    with atomic_write(world.readme) as handle:
        handle.write(_readme(config))
    logger.info(
        "synthetic world: %d pretrain, %d train, %d test images (%d families) in %s",
        len(pretrain), len(train), len(test), len(sizes), world.root,
    )
    return world


def vocabulary(config: WorldConfig | None = None) -> list[str]:
    """Every lower-case word the generator can write for ``config``, sorted.

    Built from the templates and attribute names rather than from generated captions, so a
    tokenizer made from it also covers words a small sample happened not to use.
    """
    config = config or WorldConfig()
    config.validate()
    pieces = [
        *OBJECT_TEMPLATES, *SCENE_TEMPLATES, *BACKGROUND_PHRASES.values(), PRETRAIN_TEMPLATE,
        *SHAPES, *COLOURS, *SIZES, *MARKINGS, "with", *BACKGROUNDS, *ROW_WORDS[config.grid], *COL_WORDS[config.grid],
        *(_count_words(n) for n in range(1, config.max_objects + 1)), "shape shapes is are",
    ]
    text = re.sub(r"\{[a-z]+\}", " ", " ".join(pieces).lower())
    return sorted(set(re.findall(r"[a-z]+", text)))
