"""Training data: box -> patch masks, manifest validation, and the collated batch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessor

import goalclip.training.data as data
import goalclip.core.images as images
from goalclip.core.images import crop_to_box, decode_rgb_tensor, load_rgb
from goalclip.models.embed import crop_geometry
from goalclip.training.data import Collate, TrainDataset, box_patch_mask, load_examples
from goalclip.core.manifest import ManifestError, SkipReport
from tests.core.test_images import RESIZE_TOLERANCE, photo

PATCH = 8


@pytest.fixture(scope="module")
def processor() -> CLIPImageProcessor:
    """CLIP's preprocessing at 32 px: shortest edge -> 32, centre crop 32x32 (a 4x4 patch grid)."""
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def grid(*rows: str) -> list[list[int]]:
    return [[int(c == "X") for c in row] for row in rows]


def as_grid(mask: torch.Tensor | None) -> list[list[int]] | None:
    return None if mask is None else mask.view(4, 4).int().tolist()


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((64, 64), (0.5, 0.5, 0.0, 0.0, 32, 32)),
        ((128, 64), (0.5, 0.5, 16.0, 0.0, 32, 32)),  # landscape: 64x32 after resize, crop x 16..48
        ((64, 128), (0.5, 0.5, 0.0, 16.0, 32, 32)),  # portrait: 32x64 after resize, crop y 16..48
        ((96, 48), (2 / 3, 2 / 3, 16.0, 0.0, 32, 32)),
    ],
)
def test_crop_geometry(processor, size, expected) -> None:
    got = crop_geometry(processor, *size)
    assert got == pytest.approx(expected)


def test_crop_geometry_of_a_loaded_processor_and_a_fixed_resize(tiny_bundle) -> None:
    # A processor loaded from a folder keeps its sizes as SizeDict objects.
    assert crop_geometry(tiny_bundle.image_processor, 128, 64) == pytest.approx((0.5, 0.5, 16.0, 0.0, 32, 32))
    squash = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    assert crop_geometry(squash, 64, 128) == pytest.approx((0.5, 0.25, 0.0, 0.0, 32, 32))
    image = Image.new("RGB", (64, 128))
    assert squash(images=[image], return_tensors="pt")["pixel_values"].shape[-2:] == (32, 32)


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        # square 64x64 (scale 0.5): [10, 20, 40, 33] -> [5, 10, 20, 16.5]: cols 0-2, rows 1-2
        ((64, 64), [10, 20, 40, 33], grid("....", "XXX.", "XXX.", "....")),
        # edges exactly on cell borders do not spill into the neighbours
        ((64, 64), [16, 16, 32, 32], grid("....", ".X..", "....", "....")),
        # 98 px: 49 * 32 / 98 = 16 (computed as 15.999999999999998 in floats)
        ((98, 98), [49, 49, 98, 98], grid("....", "....", "..XX", "..XX")),
        # landscape 128x64: x -> x / 2 - 16; [40, 0, 72, 16] -> x 4..20, y 0..8
        ((128, 64), [40, 0, 72, 16], grid("XXX.", "....", "....", "....")),
        # landscape, partly left of the crop: x -16..8 -> clipped to 0..8, y 10..22
        ((128, 64), [0, 20, 48, 44], grid("....", "X...", "X...", "....")),
        # portrait 64x128: y -> y / 2 - 16; [16, 40, 32, 72] -> x 8..16, y 4..20
        ((64, 128), [16, 40, 32, 72], grid(".X..", ".X..", ".X..", "....")),
        # portrait, partly above the crop: y -16..4 -> 0..4, x 0..10
        ((64, 128), [0, 0, 20, 40], grid("XX..", "....", "....", "....")),
        # entirely outside the crop: left strip, right strip, bottom strip
        ((128, 64), [0, 0, 30, 64], None),
        ((128, 64), [100, 0, 128, 64], None),
        ((64, 128), [0, 96, 64, 128], None),
    ],
)
def test_box_patch_mask_hand_computed(processor, size, box, expected) -> None:
    assert as_grid(box_patch_mask(box, *size, processor, PATCH)) == expected


@pytest.mark.parametrize(("size", "box"), [((128, 64), [40, 8, 72, 40]), ((64, 128), [8, 50, 40, 62])])
def test_box_patch_mask_agrees_with_the_processed_pixels(processor, size, box) -> None:
    """Draw the box in red, run the real image processor, and see which patches hold red."""
    image = Image.new("RGB", size, (128, 128, 128))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 0, 0))
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"][0]
    redness = pixels[0] - pixels[1]  # R - G after normalisation: ~0 on grey
    red_cells = redness.view(4, PATCH, 4, PATCH).amax(dim=(1, 3)) > 0.5
    assert red_cells.any()
    assert as_grid(box_patch_mask(box, *size, processor, PATCH)) == red_cells.int().tolist()


# ----------------------------------------------------------------------------- load_examples


def _png(path: Path, size: tuple[int, int] = (64, 48)) -> str:
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path.name


CAPTION = "A red square is drawn here. Nothing else is in it."
GOOD = {"id": "good", "image": "good.png", "caption": CAPTION,
        "local": {"sentence": "A red square is drawn here.", "box": [4, 4, 20, 20], "score": 0.5, "source": "grid"}}


def _bad_records(folder: Path) -> dict[str, tuple[object, str]]:
    """name -> (record or raw line, what the error message must name)."""
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    local = GOOD["local"]
    return {
        "missing image": ({**GOOD, "id": "a", "image": "nowhere.png"}, "field 'image'"),
        "corrupt image": ({**GOOD, "id": "b", "image": "corrupt.png"}, "field 'image'"),
        "empty caption": ({**GOOD, "id": "c", "caption": "   "}, "field 'caption'"),
        "sentence not in caption": (
            {**GOOD, "id": "d", "local": {**local, "sentence": "A blue circle."}}, "field 'local.sentence'"),
        "box outside image": ({**GOOD, "id": "e", "local": {**local, "box": [10, 10, 90, 40]}}, "outside the 64x48"),
        "zero-area box": ({**GOOD, "id": "f", "local": {**local, "box": [10, 10, 10, 30]}}, "zero"),
        "malformed JSON": ('{"id": "g", "image": "good.png", "caption": "A red', "malformed JSON"),
        "missing local": ({k: v for k, v in GOOD.items() if k != "local"} | {"id": "h"}, "field 'local'"),
    }


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "case",
    ["missing image", "corrupt image", "empty caption", "sentence not in caption", "box outside image",
     "zero-area box", "malformed JSON", "missing local"],
)
def test_load_examples_errors_name_file_line_and_field(tmp_path, case: str) -> None:
    _png(tmp_path / "good.png")
    bad, needle = _bad_records(tmp_path)[case]
    path = _write(tmp_path / "train.jsonl", [GOOD, bad])
    with pytest.raises(ManifestError) as info:
        load_examples(path, need_local=True)
    message = str(info.value)
    assert f"{path}:2" in message
    assert needle in message


def test_load_examples_skip_invalid_counts(tmp_path) -> None:
    _png(tmp_path / "good.png")
    bad = [record for record, _ in _bad_records(tmp_path).values()]
    good2 = {**GOOD, "id": "good2", "local": {**GOOD["local"], "box": [-0.5, 0, 64.5, 48]}}  # within 1 px
    path = _write(tmp_path / "train.jsonl", [GOOD, *bad, good2])
    skipped = SkipReport()
    examples = load_examples(path, need_local=True, skip_invalid=True, skipped=skipped)
    assert [e.id for e in examples] == ["good", "good2"]
    assert len(skipped) == len(bad) == 8
    assert examples[1].box == [0.0, 0.0, 64.0, 48.0]
    assert examples[0].sentence_chars == (0, 27) and examples[0].caption[0:27] == "A red square is drawn here."
    assert examples[0].image == str(tmp_path / "good.png")
    # A record without a local pair is fine for a global-only method.
    no_local = {k: v for k, v in GOOD.items() if k != "local"}
    assert [e.id for e in load_examples(_write(tmp_path / "g.jsonl", [no_local]), need_local=False)] == ["good"]
    with pytest.raises(ManifestError, match="no usable training examples"):
        load_examples(_write(tmp_path / "bad.jsonl", bad[:2]), need_local=True, skip_invalid=True)


# ----------------------------------------------------------------------------- dataset + collate


@pytest.fixture(scope="module")
def batch_examples(tiny_world, tmp_path_factory):
    """Three examples over the tiny world's images (context 16), one sentence past the context."""
    folder = tmp_path_factory.mktemp("collate")
    images = tiny_world.root / "images"
    records = [
        {"id": "a", "image": str(images / "img4.png"),  # 48x48 -> scale 2/3
         "caption": "A red circle is drawn here. Nothing else.",
         "local": {"sentence": "A red circle is drawn here.", "box": [12, 12, 36, 24]}},
        {"id": "b", "image": str(images / "img1.png"),  # 64x48: the second sentence ends past token 15
         "caption": "The picture has a plain white background. A blue circle is drawn here. Nothing else is in it.",
         "local": {"sentence": "A blue circle is drawn here.", "box": [0, 0, 6, 48]}},  # left of the crop
        {"id": "c", "image": str(images / "img2.png"),  # 48x64 portrait: y -> 2y/3 - 5.33
         "caption": "A green square.",
         "local": {"sentence": "A green square.", "box": [0, 20, 24, 44]}},
    ]
    path = _write(folder / "train.jsonl", records)
    return load_examples(path, need_local=True)


def test_collate_local_batch(tiny_bundle, batch_examples) -> None:
    tokenizer = tiny_bundle.tokenizer
    dataset = TrainDataset(batch_examples, tiny_bundle, need_local=True)
    items = [dataset[i] for i in range(3)]
    batch = dataset.to_device(Collate(pad_id=tokenizer.pad_token_id)(items), "cpu")
    b = 3
    assert batch["pixel_values"].shape == (2 * b, 3, 32, 32)

    # Pixels: globals first, then the crops of the boxes, each as the processor makes them (the uint8 tensor
    # resize within RESIZE_TOLERANCE levels, tests/core/test_images.py).
    proc = tiny_bundle.image_processor
    levels = torch.tensor(proc.image_std)[:, None, None] / proc.rescale_factor
    for row, ex in enumerate(batch_examples):
        image = Image.open(ex.image).convert("RGB")
        whole = proc(images=[image], return_tensors="pt")["pixel_values"][0]
        crop = proc(images=[image.crop(tuple(int(v) for v in ex.box))], return_tensors="pt")["pixel_values"][0]
        assert float(((batch["pixel_values"][row] - whole).abs() * levels).max()) <= RESIZE_TOLERANCE + 1e-3
        assert float(((batch["pixel_values"][b + row] - crop).abs() * levels).max()) <= RESIZE_TOLERANCE + 1e-3

    # Captions: padded to the longest in the batch (b's is cut to the 16-token context, EOS last).
    full = [tokenizer(ex.caption)["input_ids"] for ex in batch_examples]
    assert len(full[1]) > 16
    assert batch["caption_ids"].shape == (b, 16)
    assert batch["caption_ids"][1].tolist() == full[1][:15] + [tokenizer.eos_token_id]
    for row in (0, 2):
        n = len(full[row])
        assert batch["caption_ids"][row, :n].tolist() == full[row]
        assert batch["caption_mask"][row].tolist() == [1] * n + [0] * (16 - n)

    # Sentences: padded to their own longest, shorter than the captions.
    sentences = [tokenizer(ex.sentence)["input_ids"] for ex in batch_examples]
    longest = max(len(s) for s in sentences)
    assert batch["sentence_ids"].shape == (b, longest) and longest < 16
    for row, ids in enumerate(sentences):
        assert batch["sentence_ids"][row, : len(ids)].tolist() == ids
        assert batch["sentence_mask"][row].sum() == len(ids)

    # Spans: the masked caption tokens are the sentence's own tokens; b's sentence is past the context.
    assert batch["span_mask"].shape == batch["caption_ids"].shape
    assert batch["text_tsl_valid"].tolist() == [True, False, True]
    assert not batch["span_mask"][1].any()
    for row in (0, 2):
        assert batch["caption_ids"][row][batch["span_mask"][row]].tolist() == sentences[row][1:-1]
    assert batch["span_mask"][0].nonzero().flatten().tolist() == list(range(1, 8))

    # Boxes: a: [12, 12, 36, 24] * 2/3 = [8, 8, 24, 16]; b: left of the crop; c: [0, 8, 16, 24].
    assert batch["image_tsl_valid"].tolist() == [True, False, True]
    assert batch["patch_mask"].shape == (b, 16)
    assert batch["patch_mask"][0].view(4, 4).int().tolist() == grid("....", ".XX.", "....", "....")
    assert not batch["patch_mask"][1].any()
    assert batch["patch_mask"][2].view(4, 4).int().tolist() == grid("....", "XX..", "XX..", "....")


def test_collate_global_batch(tiny_bundle, batch_examples) -> None:
    dataset = TrainDataset(batch_examples, tiny_bundle, need_local=False)
    batch = Collate(pad_id=tiny_bundle.tokenizer.pad_token_id)([dataset[0], dataset[2]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert set(batch) == {"caption_ids", "caption_mask", "pixel_values"}
    n = len(tiny_bundle.tokenizer(batch_examples[0].caption)["input_ids"])
    assert batch["caption_ids"].shape == (2, n)  # the longer of the two, below the context


def test_collate_drops_items_whose_image_failed_to_decode(tiny_bundle, batch_examples, tmp_path) -> None:
    """A decode failure in a worker becomes a reason string, not an exception; the rest still batch."""
    truncated = tmp_path / "truncated.png"
    data = Path(batch_examples[1].image).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    examples = [batch_examples[0], replace(batch_examples[1], image=str(truncated)), batch_examples[2]]
    dataset = TrainDataset(examples, tiny_bundle, need_local=True)
    collate = Collate(pad_id=tiny_bundle.tokenizer.pad_token_id)
    batch = collate([dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)  # 2 globals + 2 crops
    assert batch["caption_ids"].shape[0] == 2 and batch["patch_mask"].shape[0] == 2
    [reason] = batch["failed"]
    assert reason.startswith("example 'b':") and str(truncated) in reason
    assert collate([dataset[1]]) == {"failed": [reason]}


# ----------------------------------------------------------------------------- the tensor pixel path

DRAFT_TOLERANCE = (16.0, 1.5)
"""Largest and mean difference in levels (of 255) allowed between a draft-decoded global view and the
processor's (full decode + resize): libjpeg's reduced-scale decode scales in the DCT domain, so single edge
pixels move by several levels while the mean barely does (measured 6 and 0.45, printed)."""


@pytest.fixture(scope="module")
def large_examples(tmp_path_factory):
    """A 640x480 JPEG (20x the 32 px model input), with a local pair and without one."""
    folder = tmp_path_factory.mktemp("large")
    path = folder / "big.jpg"
    photo(640, 480).save(path, quality=92)
    caption = "A photo with shapes. Round shapes on the left."
    records = [{"id": "local", "image": str(path), "caption": caption,
                "local": {"sentence": "Round shapes on the left.", "box": [10.5, 40, 330, 420.2]}},
               {"id": "global", "image": str(path), "caption": caption, "local": None}]
    return path, load_examples(_write(folder / "train.jsonl", records), need_local=True)


def test_samples_decode_once_and_match_the_processor(tiny_bundle, large_examples, monkeypatch) -> None:
    """A local sample's global view and crop come from one full-resolution decode, resized on uint8 tensors
    (the processor's pixels within RESIZE_TOLERANCE); with draft_decode, a global-only sample decodes in draft
    mode, within DRAFT_TOLERANCE."""
    path, examples = large_examples
    decodes = []

    def counting(image_path, draft_short=None):
        decodes.append(draft_short)
        return load_rgb(image_path, draft_short)

    def counting_tensor(image_path, size=None):
        decodes.append("full")
        return decode_rgb_tensor(image_path, size=size)

    monkeypatch.setattr(data, "load_rgb", counting)
    monkeypatch.setattr(data, "decode_rgb_tensor", counting_tensor)
    dataset = TrainDataset(examples, tiny_bundle, need_local=True, draft_decode=True)
    local, global_only = dataset[0], dataset[1]
    short = tiny_bundle.image_processor.size["shortest_edge"]
    assert decodes == ["full", short]  # one decode each; the global-only one in draft mode
    processor = tiny_bundle.image_processor
    full = load_rgb(str(path))
    expected = processor(images=[full, crop_to_box(full, examples[0].box)], return_tensors="pt")["pixel_values"]
    std = torch.tensor(processor.image_std)[:, None, None] / processor.rescale_factor
    crop_levels = float(((dataset.normalise(local["pairs"][0]["crop_pixels"]) - expected[1]).abs() * std).max())
    global_levels = float(((dataset.normalise(local["pixels"]) - expected[0]).abs() * std).max())
    draft = (dataset.normalise(global_only["pixels"]) - expected[0]).abs() * std
    print(f"largest difference: global {global_levels:.2f}, crop {crop_levels:.2f}, draft global "
          f"{float(draft.max()):.2f} (mean {float(draft.mean()):.2f}) levels")
    assert global_levels <= RESIZE_TOLERANCE + 1e-3 and crop_levels <= RESIZE_TOLERANCE + 1e-3
    assert float(draft.max()) <= DRAFT_TOLERANCE[0] and float(draft.mean()) <= DRAFT_TOLERANCE[1]


def test_global_only_samples_see_the_same_pixels_as_a_local_samples_global_view_by_default(
        tiny_bundle, large_examples) -> None:
    """Without --draft-decode, a global-only sample (every sample of --method global, and a goal run's images
    without a pair) decodes at full resolution like a local one: the ablations train on the same global pixels."""
    _, examples = large_examples
    dataset = TrainDataset(examples, tiny_bundle, need_local=True)
    assert torch.equal(dataset[1]["pixels"], dataset[0]["pixels"])


def test_batches_carry_uint8_pixels_that_the_device_normalises_as_the_processor_does(tiny_bundle,
                                                                                    large_examples) -> None:
    """Workers ship resized uint8 pixels (a quarter of float32's bytes through shared memory, no normalise in the
    worker); ``to_device`` normalises them where the model runs, with the processor's own arithmetic."""
    path, examples = large_examples
    dataset = TrainDataset(examples, tiny_bundle, need_local=True)
    batch = Collate(pad_id=tiny_bundle.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert batch["pixel_values"].dtype == torch.uint8
    moved = dataset.to_device(dict(batch), torch.device("cpu"))
    processor = tiny_bundle.image_processor
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    expected = ((batch["pixel_values"].double() * processor.rescale_factor).float() - mean) / std
    assert moved["pixel_values"].dtype == torch.float32 and torch.equal(moved["pixel_values"], expected)
    full = load_rgb(str(path))
    theirs = processor(images=[full, full, crop_to_box(full, examples[0].box)], return_tensors="pt")["pixel_values"]
    worst = float(((moved["pixel_values"] - theirs).abs() * std / processor.rescale_factor).max())
    assert worst <= RESIZE_TOLERANCE + 1e-3


def test_a_sample_reads_no_image_header_in_the_worker(tiny_bundle, large_examples, monkeypatch) -> None:
    """The header (size, EXIF orientation) was read once when the examples were validated: a worker decodes
    the JPEG's bytes without opening the file with PIL again."""
    _, examples = large_examples
    dataset = TrainDataset(examples, tiny_bundle, need_local=True)

    def no_header(*_args, **_kwargs):
        raise AssertionError("the image header was read again")

    monkeypatch.setattr(images, "_open", no_header)
    assert dataset[0]["pairs"] and dataset[1]["pixels"].shape[0] == 3


@pytest.mark.parametrize("method,local_pairs", [("goal", 1), ("goal", 2), ("global", 1)])
def test_dropping_images_from_a_batch_gives_the_loss_of_the_batch_collated_without_them(
        tiny_world, tiny_bundle, tmp_path, method, local_pairs) -> None:
    """drop_images (how a batch goes on without images the device could not decode): the step's loss equals
    the loss of the batch collated from the other samples alone, with one pair per image, with uneven top-k
    pairs (pair owners renumbered, weights kept) and without pairs."""
    from goalclip.training.config import LossWeights
    from goalclip.training.data import drop_images
    from goalclip.training.step import training_step

    records = [json.loads(line) for line in tiny_world.mined.read_text().splitlines()][:6]
    for i, record in enumerate(records):
        record["image"] = str(tiny_world.root / record["image"])
        record["local"]["score"] = 0.9
        if i % 2 == 0:  # a second pair on every other image
            record["candidates"] = [{"sentence": record["local"]["sentence"], "box": [0, 0, 24, 24], "score": 0.3}]
    need_local = method != "global"
    examples = load_examples(_write(tmp_path / "topk.jsonl", records), need_local=need_local,
                             local_pairs=local_pairs, pair_weighting="similarity")
    dataset = TrainDataset(examples, tiny_bundle, need_local=need_local, pair_weighting="similarity")
    collate = Collate(pad_id=tiny_bundle.tokenizer.pad_token_id, weighted=local_pairs > 1)
    items = [dataset[i] for i in range(len(examples))]
    full = dataset.to_device(collate(items), "cpu")
    pixels = full.pop("pixel_values")
    dropped = drop_images(full, {0, 3})
    survivors = dataset.to_device(collate([item for i, item in enumerate(items) if i not in (0, 3)]), "cpu")
    images = [row for row in range(6) if row not in (0, 3)]
    pair_rows = ([p for p, owner in enumerate(full.get("pair_owner", torch.arange(6)).tolist()) if owner in images]
                 if need_local else [])
    dropped["pixel_values"] = pixels[images + [6 + p for p in pair_rows]]
    assert set(dropped) == set(survivors)
    with torch.no_grad():
        ours, _ = training_step(tiny_bundle.model, dropped, method, LossWeights())
        theirs, _ = training_step(tiny_bundle.model, survivors, method, LossWeights())
    assert torch.allclose(ours, theirs, atol=1e-6), (float(ours), float(theirs))
