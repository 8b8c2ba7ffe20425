"""The synthetic world: deterministic, geometrically exact, captions that match the pixels."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pysbd
import pytest
from PIL import Image

from goalclip.core.manifest import read_boxes

from goalclip.core.records import read_manifest
from goalclip.demo.scene import COLOURS, INK, MARKINGS, WorldConfig
from goalclip.demo.world import OBJECT_TEMPLATES, PRETRAIN_TEMPLATE, generate_world, vocabulary

SMALL = WorldConfig(n_pretrain=24, n_train=20, n_test=30, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("world"), SMALL)


@pytest.fixture(scope="module")
def records(world):
    splits = ("pretrain", "train", "test")
    return {name: read_manifest(getattr(world, name), check_images=True) for name in splits}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _objects(record: dict) -> set[tuple]:
    return {(o["shape"], o["colour"], o["size"], o["marking"], tuple(o["cell"])) for o in record["objects"]}


def _painted(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Where an object of ``colour`` is: its colour or the marking's ink."""
    return (pixels == colour).all(axis=2) | (pixels == INK).all(axis=2)


def test_same_config_gives_identical_files_and_another_seed_differs(tmp_path):
    config = WorldConfig(n_pretrain=6, n_train=5, n_test=7, image_size=64, seed=11)
    first = _files(generate_world(tmp_path / "a", config).root)
    second = _files(generate_world(tmp_path / "b", config).root)
    assert first == second
    assert {"pretrain.jsonl", "train.jsonl", "test.jsonl", "train_boxes.jsonl", "test_boxes.jsonl",
            "README.txt", "config.json", "images/test-000006.png"} <= set(first)

    other = _files(generate_world(tmp_path / "c", WorldConfig(**{**vars(config), "seed": 12})).root)
    assert other.keys() == first.keys()
    for name in ("pretrain.jsonl", "train.jsonl", "test.jsonl", "images/train-000000.png"):
        assert other[name] != first[name]


def test_growing_a_split_keeps_its_earlier_records(tmp_path):
    small = generate_world(tmp_path / "small", WorldConfig(n_pretrain=3, n_train=3, n_test=2, image_size=64))
    large = generate_world(tmp_path / "large", WorldConfig(n_pretrain=5, n_train=6, n_test=2, image_size=64))
    for name in ("pretrain", "train"):
        head = read_manifest(getattr(large, name))[:3]
        assert [r["caption"] for r in head] == [r["caption"] for r in read_manifest(getattr(small, name))]
    image = "train-000002.png"
    assert (small.images / image).read_bytes() == (large.images / image).read_bytes()


def _check_geometry(record: dict, config: WorldConfig) -> None:
    """Boxes sit in their own cell; each object's colour fills its box exactly; the rest is grey."""
    cell = config.image_size // config.grid
    cells = [tuple(o["cell"]) for o in record["objects"]]
    assert len(set(cells)) == len(cells), "two objects share a cell"
    pixels = np.asarray(Image.open(record["image"]).convert("RGB")).astype(int)
    assert pixels.shape == (config.image_size, config.image_size, 3)
    outside = np.ones(pixels.shape[:2], dtype=bool)
    for obj in record["objects"]:
        row, col = obj["cell"]
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= row < config.grid and 0 <= col < config.grid
        assert col * cell <= x1 < x2 <= (col + 1) * cell, f"{record['id']}: box outside its cell"
        assert row * cell <= y1 < y2 <= (row + 1) * cell, f"{record['id']}: box outside its cell"
        outside[y1:y2, x1:x2] = False
        colour = COLOURS[obj["colour"]]
        assert tuple(pixels[(y1 + y2) // 2, (x1 + x2) // 2]) in (colour, INK), f"{record['id']}: {obj['sentence']}"
        in_cell = pixels[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
        assert (in_cell == colour).all(axis=2).any(), f"{record['id']}: {obj['sentence']}"
        ys, xs = np.nonzero(_painted(in_cell, colour))
        x0, y0 = col * cell, row * cell
        tight = [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1]
        assert tight == [x1, y1, x2, y2], f"{record['id']}: {obj['sentence']}"
    background = pixels[outside]
    assert (background[:, 0] == background[:, 1]).all() and (background[:, 1] == background[:, 2]).all()


def _check_closeup(record: dict, config: WorldConfig) -> None:
    """A close-up shows its one object zoomed in: the box holds the object and is tight to +-1 px."""
    (obj,) = record["objects"]
    pixels = np.asarray(Image.open(record["image"]).convert("RGB")).astype(int)
    assert pixels.shape == (config.image_size, config.image_size, 3)
    x1, y1, x2, y2 = obj["box"]
    colour = COLOURS[obj["colour"]]
    assert tuple(pixels[(y1 + y2) // 2, (x1 + x2) // 2]) in (colour, INK)
    ys, xs = np.nonzero(_painted(pixels, colour))
    tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert max(abs(a - b) for a, b in zip(tight, obj["box"])) <= 1, (record["id"], tight, obj["box"])
    assert (x2 - x1) >= config.image_size / 2.5 - 2, "a close-up spans at least 1/2.5 of the image (the widest zoom)"


def test_pixels_and_boxes_match_the_records(records):
    for record in itertools.chain(*records.values()):
        (_check_closeup if record.get("closeup") else _check_geometry)(record, SMALL)
    assert any(r["closeup"] for r in records["pretrain"]) and not all(r["closeup"] for r in records["pretrain"])


@pytest.mark.parametrize(("grid", "image_size"), [(2, 16), (3, 27), (5, 40)])
def test_other_grids_draw_exactly_too(tmp_path, grid, image_size):
    config = WorldConfig(
        n_pretrain=4, n_train=4, n_test=4, grid=grid, image_size=image_size, min_objects=1, max_objects=3
    )
    world = generate_world(tmp_path, config)
    for split in (world.pretrain, world.train, world.test):
        for record in read_manifest(split):
            (_check_closeup if record.get("closeup") else _check_geometry)(record, config)


def test_long_captions_are_the_object_sentences_plus_the_scene_sentence(records):
    segmenter = pysbd.Segmenter(language="en", clean=False)
    first_sentences = set()
    for record in records["train"] + records["test"]:
        caption = record["caption"]
        sentences = [s.strip() for s in segmenter.segment(caption)]
        expected = [o["sentence"] for o in record["objects"]] + [record["scene_sentence"]]
        assert sorted(sentences) == sorted(expected), record["id"]
        assert len(set(sentences)) == len(sentences)
        assert caption == " ".join(sentences)
        assert all(s.endswith(".") and s[0].isupper() for s in sentences)
        for obj in record["objects"]:
            assert all(obj[k] in obj["sentence"] for k in ("shape", "colour", "size", "position", "marking"))
        first_sentences.add(sentences[0] == record["scene_sentence"])
    assert first_sentences == {True, False}, "sentence order is never shuffled"
    openings = {" ".join(o["sentence"].split()[:2]) for r in records["train"] for o in r["objects"]}
    assert len(openings) > 3, "object sentences use a single template"


def test_test_families_share_all_objects_but_one(records):
    families = defaultdict(list)
    for record in records["test"]:
        families[record["family"]].append(record)
    sizes = [len(families[f]) for f in sorted(families)]
    assert all(SMALL.family_min <= s <= SMALL.family_max for s in sizes[:-1])
    assert sum(sizes) == SMALL.n_test
    for members in families.values():
        assert members[0]["changed"] == "base"
        backgrounds = {r["scene_sentence"].split(" on ", 1)[1] for r in members}
        assert len(backgrounds) == 1
        for a, b in itertools.combinations(members, 2):
            assert len(_objects(a) - _objects(b)) == 1 and len(_objects(b) - _objects(a)) == 1
            assert a["caption"] != b["caption"]
        base = members[0]
        for variant in members[1:]:
            (old,) = _objects(base) - _objects(variant)
            (new,) = _objects(variant) - _objects(base)
            fields = ("shape", "colour", "size", "marking", "position")
            differs = [name for name, x, y in zip(fields, old, new, strict=True) if x != y]
            assert differs == [variant["changed"]]


def test_pretraining_images_hold_one_object_with_a_short_caption(records):
    for record in records["pretrain"]:
        (obj,) = record["objects"]
        words = {k: obj[k] for k in ("size", "colour", "shape", "position")}
        assert record["caption"] in {t.format(**words) for t in (PRETRAIN_TEMPLATE, *OBJECT_TEMPLATES)}
        assert obj["sentence"] == record["caption"]
        assert obj["marking"] in MARKINGS and obj["marking"] not in record["caption"]  # alt text is short


def test_pretraining_thumbnails_are_downsampled_whole_renders(tmp_path):
    config = WorldConfig(n_pretrain=6, n_train=1, n_test=2, image_size=128, pretrain_size=32, seed=5)
    world = generate_world(tmp_path, config)
    for record in read_manifest(world.pretrain):
        pixels = np.asarray(Image.open(record["image"]).convert("RGB")).astype(int)
        assert pixels.shape == (32, 32, 3)
        (obj,) = record["objects"]
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32
        inside = pixels[y1:y2, x1:x2]
        assert (np.ptp(inside, axis=2) > 30).any(), record["id"]  # the object's saturated colour survives
        outside = np.ones((32, 32), dtype=bool)
        outside[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = False
        background = pixels[outside]
        assert (np.ptp(background, axis=1) <= 1).all(), record["id"]  # grey, up to bicubic rounding
    train = read_manifest(world.train)[0]
    assert Image.open(train["image"]).size == (128, 128)


def _marking_contrast(pixels_a: np.ndarray, pixels_b: np.ndarray, box: list[int], factor: int) -> float:
    """Mean absolute difference over a box after downsampling both images by ``factor`` as CLIP's
    processor does (bicubic with antialiasing); 1 keeps the full resolution."""
    def shrink(pixels: np.ndarray) -> np.ndarray:
        image = Image.fromarray(pixels.astype(np.uint8))
        size = image.width // factor
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC)).astype(float)

    x1, y1, x2, y2 = (v // factor for v in box)
    return float(np.abs(shrink(pixels_a) - shrink(pixels_b))[y1:y2, x1:x2].mean())


def test_markings_are_clear_at_full_resolution_and_fade_at_a_quarter(tmp_path):
    """The resolution gap: a family member that changes only an object's marking differs strongly at
    the rendered size (what a crop of the object shows), but little at a quarter of the size (the
    demo's model input), and the object's mean colour is about the same for every marking."""
    config = WorldConfig(n_pretrain=0, n_train=1, n_test=60, image_size=256, seed=1)
    records = read_manifest(generate_world(tmp_path, config).test)
    pairs = [(b, v) for b in records for v in records if b["changed"] == "base" and v["family"] == b["family"]
             and v["changed"] == "marking"]
    assert pairs, "no marking-only variant in this world"
    for base, variant in pairs:
        (old,) = [o for o in base["objects"] if (o["shape"], o["marking"]) not in
                  {(p["shape"], p["marking"]) for p in variant["objects"] if p["cell"] == o["cell"]}]
        a, b = (np.asarray(Image.open(r["image"]).convert("RGB")).astype(int) for r in (base, variant))
        full, quarter = _marking_contrast(a, b, old["box"], 1), _marking_contrast(a, b, old["box"], 4)
        assert full > 20 and quarter < full / 3, (base["id"], full, quarter)
        x1, y1, x2, y2 = old["box"]
        means = [p[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0) for p in (a, b)]
        assert np.abs(means[0] - means[1]).max() < 12, "markings differ in mean colour"


def test_manifests_and_boxes_read_back(world, records):
    counts = [len(records[n]) for n in ("pretrain", "train", "test")]
    assert counts == [SMALL.n_pretrain, SMALL.n_train, SMALL.n_test]
    assert records["train"][12]["id"] == "train-000012"
    assert Path(records["train"][0]["image"]).parent == world.images
    assert '"image": "images/train-000000.png"' in world.train.read_text()
    for split in ("train", "test"):
        boxes = read_boxes(getattr(world, f"{split}_boxes"))
        assert list(boxes) == [r["id"] for r in records[split]]
        for record in records[split]:
            assert boxes[record["id"]] == [[float(v) for v in o["box"]] for o in record["objects"]]
    readme = world.readme.read_text()
    for name in ("pretrain.jsonl", "train.jsonl", "test.jsonl", "train_boxes.jsonl", "test_boxes.jsonl"):
        assert name in readme


def test_vocabulary_covers_every_caption(world):
    words = set(vocabulary(SMALL))
    texts = [r["caption"] for path in (world.pretrain, world.train, world.test) for r in read_manifest(path)]
    assert len(texts) == SMALL.n_pretrain + SMALL.n_train + SMALL.n_test
    used = {w for text in texts for w in re.findall(r"[a-z]+", text.lower())}
    assert used <= words
    assert {"circle", "purple", "large", "centre", "speckled", "five", "stripes", "spots"} <= words


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_train": 0}, r"n_train must be >= 1"),
        ({"n_test": -2}, r"n_test must be >= 1"),
        ({"n_pretrain": -1}, r"n_pretrain must be >= 0"),
        ({"n_train": 2.5}, r"n_train must be an int"),
        ({"max_objects": 17}, r"max_objects \(17\) must be <= grid\*grid \(16\)"),
        ({"min_objects": 0}, r"min_objects must be >= 1"),
        ({"min_objects": 4, "max_objects": 3}, r"min_objects \(4\) must be <= max_objects \(3\)"),
        ({"image_size": 130}, r"image_size \(130\) must be divisible by grid \(4\)"),
        ({"image_size": 16}, r"image_size \(16\) is too small"),
        ({"grid": 7}, r"grid must be one of \[2, 3, 4, 5\]"),
        ({"family_min": 1}, r"2 <= family_min <= family_max"),
        ({"family_max": 40}, r"family_max \(40\) is too large"),
        ({"seed": -1}, r"seed must be >= 0"),
        ({"pretrain_size": 300}, r"pretrain_size must be between 0 \(full size\) and image_size \(128\)"),
    ],
)
def test_bad_configs_raise_before_writing(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        generate_world(tmp_path / "out", WorldConfig(**{**vars(SMALL), **overrides}))
    assert not (tmp_path / "out").exists()
