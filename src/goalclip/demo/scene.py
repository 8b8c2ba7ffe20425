"""The scene model of the synthetic world: what a scene holds, drawn at random from a seed.

Each image holds a few flat shapes sitting exactly in grid cells (a tiny ViT trained from scratch
learns shape only when objects sit on the patch grid); each object has a shape, a colour, a size, a
cell and a fine marking. :class:`WorldConfig` sizes the world; every image and test family draws
from its own generator (:func:`scene_rng`), so splits never share random streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

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


# Disjoint random streams: each image (pretrain, train), each test family, and the family sizes.
_SPLIT_CODES: dict[str, int] = {"pretrain": 0, "train": 1, "test": 2, "families": 3}


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
class SceneObject:
    """One shape in its grid cell, with its colour, size and marking."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    marking: str


@dataclass(frozen=True)
class Background:
    """A grey background: plain, speckled (seeded noise) or a gradient between two greys."""

    kind: str
    first: str
    second: str
    vertical: bool
    noise_seed: int


@dataclass(frozen=True)
class Scene:
    """The objects of one image, in row-major cell order, and its background."""

    objects: tuple[SceneObject, ...]
    background: Background


def _most_family_members(config: WorldConfig) -> int:
    """The base plus every distinct one-attribute change of one object in the fullest scene."""
    changes = (len(COLOURS) + len(SHAPES) + len(SIZES) + len(MARKINGS) - 4
               + config.grid * config.grid - config.max_objects)
    return 1 + changes


def pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    """One of ``options``, uniformly (numpy's ``choice`` would turn tuples of tuples into arrays)."""
    return options[int(rng.integers(len(options)))]


def scene_rng(config: WorldConfig, split: str, index: int) -> np.random.Generator:
    """The generator of one image or family, seeded with ``(seed, split, index)``."""
    return np.random.default_rng([config.seed, _SPLIT_CODES[split], index])


def position_phrase(row: int, col: int, grid: int) -> str:
    """The words for a cell, e.g. ``"top left"`` or ``"lower centre-right"``."""
    return f"{ROW_WORDS[grid][row]} {COL_WORDS[grid][col]}"


def _random_object(rng: np.random.Generator, row: int, col: int) -> SceneObject:
    return SceneObject(pick(rng, SHAPES), pick(rng, list(COLOURS)), pick(rng, list(SIZES)), row, col,
                   pick(rng, MARKINGS))


def _random_background(rng: np.random.Generator) -> Background:
    names = list(BACKGROUNDS)
    first, second = (names[int(i)] for i in rng.choice(len(names), size=2, replace=False))
    return Background(
        kind=pick(rng, BACKGROUND_KINDS),
        first=first,
        second=second,
        vertical=bool(rng.integers(2)),
        noise_seed=int(rng.integers(2**31)),
    )


def random_scene(rng: np.random.Generator, config: WorldConfig, n_objects: int) -> Scene:
    cells = sorted(int(c) for c in rng.choice(config.grid * config.grid, size=n_objects, replace=False))
    objects = tuple(_random_object(rng, c // config.grid, c % config.grid) for c in cells)
    return Scene(objects, _random_background(rng))


def variant(
    rng: np.random.Generator, base: Scene, index: int, taken: set[SceneObject], config: WorldConfig
) -> tuple[Scene, SceneObject, str]:
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
    attribute = pick(rng, [k for k, v in options.items() if v])
    changed = pick(rng, options[attribute])
    objects = [*base.objects[:index], changed, *base.objects[index + 1 :]]
    objects.sort(key=lambda o: (o.row, o.col))
    return Scene(tuple(objects), base.background), changed, attribute


def object_box(row: int, col: int, size: str, config: WorldConfig) -> tuple[int, int, int, int]:
    """Pixel box ``(x1, y1, x2, y2)`` (x2, y2 exclusive) centred in the object's grid cell."""
    cell = config.cell_size
    half = min(cell // 2, max(2, round(SIZES[size] * cell)))
    cx, cy = col * cell + cell // 2, row * cell + cell // 2
    return cx - half, cy - half, cx + half, cy + half
