"""A deterministic synthetic long-caption world for the demo and the tests: captions, records, files.

Why synthetic: the demo and the tests cannot download real datasets, yet every step of the GOAL
recipe (sentence splitting, region mining, local pairs, TSL, retrieval) must run end to end on data
whose ground truth is known. Scenes (:mod:`goalclip.demo.scene`) are drawn (:mod:`goalclip.demo.render`)
and each object gets one sentence of a long caption, naming its fine marking; the true object boxes
stand in for a detector.

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
import itertools
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from goalclip.core.manifest import atomic_write, write_jsonl, write_manifest
from goalclip.demo.render import closeup, marking_period, render, save_png
from goalclip.demo.scene import (
    BACKGROUNDS,
    COL_WORDS,
    COLOURS,
    MARKINGS,
    ROW_WORDS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    WorldConfig,
    object_box,
    pick,
    position_phrase,
    random_scene,
    scene_rng,
    variant,
)

logger = logging.getLogger(__name__)

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
# Saving is mostly fsync (atomic writes) and zlib, both of which release the GIL, so a few
# threads hide the disk latency; every image draws from its own generator, so the output does
# not depend on scheduling.
_WORKERS = 8


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


def _count_words(n: int) -> str:
    """English words for 1..29 (a 5x5 grid holds at most 25): the tiny tokenizer sees words, not digits."""
    return _UNITS[n - 1] if n <= 20 else f"twenty-{_UNITS[n - 21]}"


def _words(obj: SceneObject, grid: int, marking: bool) -> dict[str, str]:
    """The template fields of one object; with ``marking`` the shape is named with its marking."""
    position = position_phrase(obj.row, obj.col, grid)
    shape = f"{obj.shape} with {obj.marking}" if marking else obj.shape
    return {"size": obj.size, "colour": obj.colour, "shape": shape, "position": position}


def _object_sentence(rng: np.random.Generator, obj: SceneObject, config: WorldConfig) -> str:
    return pick(rng, OBJECT_TEMPLATES).format(**_words(obj, config.grid, marking=True))


def _scene_sentence(rng: np.random.Generator, scene: Scene) -> str:
    n = len(scene.objects)
    background = BACKGROUND_PHRASES[scene.background.kind].format(
        first=scene.background.first, second=scene.background.second
    )
    count = f"{_count_words(n)} {'shape' if n == 1 else 'shapes'}"
    be = "is" if n == 1 else "are"
    return pick(rng, SCENE_TEMPLATES).format(count=count, be=be, background=background)


def _object_record(obj: SceneObject, sentence: str, config: WorldConfig) -> dict[str, Any]:
    return {
        "shape": obj.shape,
        "colour": obj.colour,
        "size": obj.size,
        "marking": obj.marking,
        "position": position_phrase(obj.row, obj.col, config.grid),
        "cell": [obj.row, obj.col],
        "box": list(object_box(obj.row, obj.col, obj.size, config)),
        "sentence": sentence,
    }


def _long_record(
    rng: np.random.Generator, rid: str, scene: Scene, images: Path, config: WorldConfig
) -> dict[str, Any]:
    """Render a scene and describe it with one sentence per object plus a scene sentence, shuffled."""
    image_path = images / f"{rid}.png"
    save_png(render(scene, config), image_path)
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


def _pretrain_record(index: int, images: Path, config: WorldConfig) -> dict[str, Any]:
    rng = scene_rng(config, "pretrain", index)
    rid = f"pretrain-{index:06d}"
    scene = random_scene(rng, config, 1)
    obj = scene.objects[0]
    zoomed_in = bool(rng.integers(100) < config.closeup_percent)
    zoom = float(rng.uniform(1.1, 2.5))
    # Alt text comes in many phrasings; a tiny CLIP that saw only one template would not
    # understand the long captions' sentences, so the object-sentence templates appear too. A
    # close-up keeps its scene's caption (position included), as a zoomed photo's alt text does.
    caption = pick(rng, (PRETRAIN_TEMPLATE, *OBJECT_TEMPLATES)).format(**_words(obj, config.grid, marking=False))
    image = render(scene, config)
    record_obj = _object_record(obj, caption, config)
    if zoomed_in:
        image, record_obj["box"] = closeup(image, object_box(obj.row, obj.col, obj.size, config), zoom)
    if config.pretrain_size and config.pretrain_size != config.image_size:
        # bicubic with antialiasing, as CLIP's processor downsamples: the marking fades to a texture
        scale = config.pretrain_size / config.image_size
        image = image.resize((config.pretrain_size, config.pretrain_size), Image.Resampling.BICUBIC)
        x1, y1, x2, y2 = record_obj["box"]
        record_obj["box"] = [math.floor(x1 * scale), math.floor(y1 * scale), math.ceil(x2 * scale),
                             math.ceil(y2 * scale)]
    image_path = images / f"{rid}.png"
    save_png(image, image_path)
    return {"id": rid, "image": str(image_path), "caption": caption, "closeup": zoomed_in, "objects": [record_obj]}


def _train_record(index: int, images: Path, config: WorldConfig) -> dict[str, Any]:
    rng = scene_rng(config, "train", index)
    scene = random_scene(rng, config, int(rng.integers(config.min_objects, config.max_objects + 1)))
    return _long_record(rng, f"train-{index:06d}", scene, images, config)


def _family_sizes(config: WorldConfig) -> list[int]:
    """Test family sizes summing to ``n_test``; the last family may be cut short."""
    rng = scene_rng(config, "families", 0)
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
    rng = scene_rng(config, "test", family)
    base = random_scene(rng, config, int(rng.integers(config.min_objects, config.max_objects + 1)))
    index = int(rng.integers(len(base.objects)))
    taken = {base.objects[index]}
    members: list[tuple[Scene, str]] = [(base, "base")]
    for _ in range(size - 1):
        scene, changed, attribute = variant(rng, base, index, taken, config)
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
