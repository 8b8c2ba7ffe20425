"""Training data: validated examples, box -> patch masks, and the collate that builds a batch.

Everything the training step needs beyond the pixels and token ids is computed here, once
per example, in DataLoader workers: the sentence's exact token span in the caption and the
patch cells its box touches. The step then pools with batched masks, and an unusable span or
box becomes a False in a validity vector (the TSL term is masked, never faked).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from goalclip.core.images import (
    ImageError, TensorPixels, box_window, decode_rgb_tensor, image_size, load_rgb, to_tensor,
)
from goalclip.core.manifest import ManifestError, SkipReport, captions_of, check_box
from goalclip.core.records import iter_records
from goalclip.models.clip import ClipBundle
from goalclip.models.embed import crop_geometry
from goalclip.core.text import clean_text, locate_sentence, token_span, usable_span
from goalclip.models.pixels import ClipPixels
from goalclip.training.device_decode import DeviceViews, ImageBytes, read_for_device

logger = logging.getLogger(__name__)


def box_patch_mask(
    box: list[float], width: int, height: int, processor: Any, patch_size: int
) -> torch.Tensor | None:
    """Boolean mask over the patch grid (row-major) of the cells the box touches, or None.

    The box is scaled through the processor's resize and centre crop and clipped to the crop;
    a box that ends up outside the crop (or with no area) gives None, so its TSL is masked.
    """
    sx, sy, ox, oy, cw, ch = crop_geometry(processor, width, height)
    x1, y1, x2, y2 = box
    x1, x2 = max(x1 * sx - ox, 0.0), min(x2 * sx - ox, float(cw))
    y1, y2 = max(y1 * sy - oy, 0.0), min(y2 * sy - oy, float(ch))
    if x2 <= x1 or y2 <= y1:
        return None
    cols, rows = cw // patch_size, ch // patch_size
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    # A tolerance so an edge that lands on a cell border after float scaling (16 computed as
    # 15.999999999999998) does not touch the neighbouring cell.
    eps = 1e-6
    c1, c2 = int(x1 / patch_size + eps), min(math.ceil(x2 / patch_size - eps), cols)
    r1, r2 = int(y1 / patch_size + eps), min(math.ceil(y2 / patch_size - eps), rows)
    if c2 <= c1 or r2 <= r1:
        return None
    mask[r1:r2, c1:c2] = True
    return mask.flatten()


@dataclass
class LocalPair:
    """One (sentence, box) pair of an example; ``score`` is the mining cosine when recorded."""

    sentence: str
    box: list[float]
    sentence_chars: tuple[int, int]
    score: float | None = None


@dataclass
class Example:
    """One validated training example (the caption already cleaned).

    ``pairs`` holds the local pairs it trains on: the mined ``local`` pair first, then (with
    ``local_pairs`` > 1) the next valid mining candidates; empty for a global-only example, such as
    an image whose sentences all matched the whole image when mining (``"local": null``): it trains
    the global loss and is skipped by the local and TSL terms.
    """

    id: str
    image: str
    caption: str
    pairs: list[LocalPair] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) as displayed, read once when validated

    @property
    def sentence(self) -> str | None:
        return self.pairs[0].sentence if self.pairs else None

    @property
    def box(self) -> list[float] | None:
        return self.pairs[0].box if self.pairs else None

    @property
    def sentence_chars(self) -> tuple[int, int] | None:
        return self.pairs[0].sentence_chars if self.pairs else None


def pair_weights(scores: list[float | None], weighting: str) -> list[float]:
    """Per-pair loss weights of one image, summing to 1 over its pairs.

    ``uniform``: 1/n each. ``similarity``: each pair's mining cosine over the image's sum, with a
    negative cosine counted as 0 (a pair the matcher found dissimilar earns no weight); when no
    pair has a positive score the image falls back to uniform.
    """
    if weighting == "uniform":
        return [1.0 / len(scores)] * len(scores)
    positive = [max(float(s), 0.0) for s in scores]  # type: ignore[arg-type]
    total = sum(positive)
    return [s / total for s in positive] if total > 0 else [1.0 / len(scores)] * len(scores)


def load_examples(
    path: str | Path,
    *,
    need_local: bool,
    skip_invalid: bool = False,
    skipped: SkipReport | None = None,
    local_pairs: int = 1,
    pair_weighting: str = "uniform",
) -> list[Example]:
    """Read and validate a training manifest before any step runs.

    Checks what would otherwise fail deep inside a worker or silently train on garbage:
    unreadable image, empty caption, missing local pair (when the method needs one), local
    sentence not found in the caption, box outside the image or of zero area. Each problem
    names file, line and field; with ``skip_invalid`` it is counted and skipped instead.

    With ``local_pairs`` K > 1 each example keeps its ``local`` pair and then the record's
    ``candidates`` (mining's top-k, best first) up to K pairs in all. Candidates repeating the
    local pair, whole-image candidates (mining's own test for "not a local pair") and invalid
    ones are passed over, counted in one log line; a record with fewer valid candidates trains
    on what it has. ``pair_weighting="similarity"`` needs each pair's ``score``.

    A record with ``"local": null`` (mining found no local pair: every sentence matched the whole
    image) is a global-only example even when the method needs local pairs; it is counted in one
    log line. A record with no ``local`` field at all was never mined and is an error then.
    """
    skipped = skipped if skipped is not None else SkipReport()
    examples = []
    dropped = 0
    for where, record in iter_records(path, skip_invalid=skip_invalid, skipped=skipped):
        try:
            example, passed_over = _validate_example(record, where, need_local, local_pairs, pair_weighting)
        except ManifestError as exc:
            if not skip_invalid:
                raise
            skipped.add(str(exc))
            continue
        examples.append(example)
        dropped += passed_over
    if dropped:
        logger.info("%s: %d invalid mining candidates passed over (the rest train as local pairs)", path, dropped)
    if not examples:
        raise ManifestError(f"{path}: no usable training examples ({len(skipped)} skipped)")
    without = sum(not ex.pairs for ex in examples)
    if need_local and without == len(examples):
        raise ManifestError(f"{path}: no record has a local pair ('local' is null in all {without}): "
                            "this method needs mined pairs")
    if need_local and without:
        logger.info("%s: %d of %d images have no local pair (every sentence matched the whole image when mining): "
                    "they train the global loss only", path, without, len(examples))
    return examples


def _validate_pair(
    entry: Any, caption: str, width: int, height: int, where: str, name: str, need_score: bool
) -> LocalPair:
    """A mined (sentence, box) entry checked against its caption and image."""
    if isinstance(entry, dict) and entry.get("box") is None and "image" in entry:
        raise ManifestError(f"{where}: field '{name}' is a crop file ('image') without a 'box': crop-file pairs "
                            "serve the joint test (eval --joint); training needs the box in the image")
    if not isinstance(entry, dict) or "sentence" not in entry or "box" not in entry:
        raise ManifestError(f"{where}: field '{name}' must be an object with 'sentence' and 'box'")
    sentence = clean_text(entry["sentence"])
    chars = locate_sentence(caption, sentence)
    if chars is None:
        raise ManifestError(f"{where}: field '{name}.sentence' not found in the caption: {sentence!r}")
    x1, y1, x2, y2 = check_box(entry["box"], f"{where}: field '{name}.box'")
    tolerance = 1.0
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise ManifestError(f"{where}: field '{name}.box' {entry['box']} lies outside the {width}x{height} image")
    box = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ManifestError(f"{where}: field '{name}.box' {entry['box']} has zero area inside the image")
    score = entry.get("score")
    if need_score and not isinstance(score, (int, float)):
        raise ManifestError(f"{where}: field '{name}.score' is missing or not a number "
                            "(--pair-weighting similarity weights pairs by their mining score)")
    return LocalPair(sentence, box, chars, None if score is None else float(score))


def _validate_example(
    record: dict[str, Any], where: str, need_local: bool, local_pairs: int = 1, pair_weighting: str = "uniform"
) -> tuple[Example, int]:
    """The example and how many of its mining candidates were passed over as invalid."""
    try:
        width, height = image_size(record["image"])
    except ImageError as exc:
        raise ManifestError(f"{where}: field 'image': {exc}") from None
    caption = clean_text(captions_of(record)[0])
    example = Example(record["id"], record["image"], caption, size=(width, height))
    local = record.get("local") if need_local else None  # a global-only method reads no pair
    if local is None:
        if need_local and "local" not in record:
            raise ManifestError(f"{where}: field 'local' is missing (this method needs mined pairs: run goalclip mine)")
        return example, 0
    need_score = local_pairs > 1 and pair_weighting == "similarity"
    example.pairs.append(_validate_pair(local, caption, width, height, where, "local", need_score))
    passed_over = 0
    seen = {(local["sentence"], tuple(local["box"]))}
    for index, entry in enumerate(record.get("candidates") or []):
        if len(example.pairs) >= local_pairs:
            break
        key = (entry.get("sentence"), tuple(entry.get("box") or ())) if isinstance(entry, dict) else None
        if key in seen or (isinstance(entry, dict) and entry.get("source") == "whole"):
            continue
        try:
            example.pairs.append(
                _validate_pair(entry, caption, width, height, where, f"candidates[{index}]", need_score)
            )
        except (ManifestError, TypeError, ValueError):
            passed_over += 1
            continue
        seen.add(key)
    return example, passed_over


class TrainDataset(Dataset):
    """Examples -> tensors for one training sample (decoded and processed in a worker).

    A sample holds the caption ids, the global pixels and, when the method needs local pairs,
    ``pairs``: per local pair its crop pixels, sentence ids, caption token span, patch mask and
    loss weight (``pair_weighting`` over the example's pairs, see :func:`pair_weights`).

    An image that passed validation (its header) but fails to decode gives ``{"failed": reason}``
    instead of raising: raised in a DataLoader worker, the error would reach the user wrapped in
    a torch traceback. The trainer decides whether to stop or to skip and count it.
    """

    def __init__(
        self, examples: list[Example], bundle: ClipBundle, *, need_local: bool, pair_weighting: str = "uniform",
        draft_decode: bool = False, decode_on: str = "workers",
    ):
        self.examples = examples
        self.tokenizer = bundle.tokenizer
        self.processor = bundle.image_processor
        self.pixels = ClipPixels(bundle.image_processor)  # the processor's pixels without its conversions
        self.tensor_pixels = tensor_pixels(self.pixels)
        # samples carry uint8 pixels, normalised where the model runs (to_device); float only from a processor
        # ClipPixels cannot take apart
        self.normalise = self.pixels.normalise if self.pixels.fast else None
        self.max_len = bundle.max_text_len
        self.patch_size = int(bundle.model.config.vision_config.patch_size)
        self.num_patches = bundle.patch_grid**2
        self.need_local = need_local
        self.pair_weighting = pair_weighting
        self.draft_decode = draft_decode
        self.decode_on = decode_on
        if decode_on == "device" and self.tensor_pixels is None:
            raise ValueError("--decode-on device needs an image processor that resizes the shortest edge "
                             "bicubically and centre-crops (CLIP's); this model's processor is "
                             f"{type(bundle.image_processor).__name__} with other settings: use --decode-on workers")

    def __len__(self) -> int:
        return len(self.examples)

    def to_device(self, batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
        """A collated batch moved to ``device``, its uint8 pixels normalised there (on a GPU that costs no
        CPU, and a quarter of the bytes crossed from the workers and to the device); with ``--decode-on
        device`` its images are decoded and resized there first (:mod:`~goalclip.training.device_decode`),
        and an image that fails leaves the batch, its reason joining ``failed`` as a worker's would (then
        ``failed`` is the only key when no image is left, as :class:`Collate` does)."""
        failed = list(batch.get("failed", []))
        if "pixel_values" not in batch:  # every image failed in the workers
            return {"failed": failed}
        views = batch["pixel_values"]
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()
                 if key not in ("pixel_values", "failed")}
        if isinstance(views, DeviceViews):
            pixels, lost = views.pixels(self.tensor_pixels, device)
            if len(lost) == len(views.images):
                return {"failed": failed + list(lost.values())}
            if lost:
                batch = drop_images(batch, set(lost))
                failed += list(lost.values())
        else:
            pixels = views.to(device, non_blocking=True)
        batch["pixel_values"] = self.normalise(pixels) if pixels.dtype == torch.uint8 else pixels
        return {**batch, "failed": failed} if failed else batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        try:
            return self._item(ex)
        except ImageError as exc:
            return {"failed": f"example {ex.id!r}: {exc}"}

    def _item(self, ex: Example) -> dict[str, Any]:
        # verbose=False: an over-long caption is expected here (cut below, counted once by the trainer)
        enc = self.tokenizer(ex.caption, return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False)
        ids = enc["input_ids"]
        if len(ids) > self.max_len:
            ids = ids[: self.max_len - 1] + [self.tokenizer.eos_token_id]
        item: dict[str, Any] = {"caption_ids": ids}
        if not self.need_local or not ex.pairs:  # global only: a method without local terms, or no pair
            item["pixels"] = self._pixels(ex, [])[1][0]
            if self.need_local:
                item["pairs"] = []
            return item
        size, pixels = self._pixels(ex, [pair.box for pair in ex.pairs])
        weights = pair_weights([pair.score for pair in ex.pairs], self.pair_weighting)
        item["pixels"] = pixels[0]
        item["pairs"] = []
        for pair, crop_pixels, weight in zip(ex.pairs, pixels[1:], weights):
            span = usable_span(
                token_span(enc["offset_mapping"], enc["special_tokens_mask"], pair.sentence_chars), self.max_len
            )
            patch_mask = box_patch_mask(pair.box, *size, self.processor, self.patch_size)
            item["pairs"].append({
                "crop_pixels": crop_pixels,
                "sentence_ids": self.tokenizer(pair.sentence, truncation=True, max_length=self.max_len)["input_ids"],
                "span": span,
                "patch_mask": patch_mask if patch_mask is not None else torch.zeros(self.num_patches, dtype=torch.bool),
                "box_valid": patch_mask is not None,
                "weight": weight,
            })
        return item

    def _pixels(self, ex: Example, boxes: list[list[float]]) -> tuple[tuple[int, int], torch.Tensor | list]:
        """The image's (full-resolution) size and ``[global view ; one crop per box]`` uint8 pixels, from one
        decode.

        With the tensor path, the crops are slices of the full-resolution decode (torchcodec's JPEG decoder:
        the same pixels as PIL's, measured, at three quarters of its CPU; the header is not read again) and
        everything is resized on uint8 tensors; with ``draft_decode``, an image whose only view is the global
        one is decoded in draft mode (reduced-scale JPEG decode, :func:`~goalclip.core.images.load_rgb`): off
        by default, so that a global-only sample sees the pixels a local sample's global view sees. Otherwise
        the processor's own pixels (:class:`~goalclip.models.pixels.ClipPixels`; float when it cannot be
        taken apart). With ``decode_on="device"``: ``[image bytes, one window per box]`` instead."""
        path = ex.image
        if self.decode_on == "device":  # the bytes and the crop windows; the device decodes and resizes
            windows = [box_window(ex.size, box, path) for box in boxes]
            return ex.size, [read_for_device(ex.id, path, ex.size), *windows]
        if self.tensor_pixels is None:
            image = load_rgb(path)
            views = [image, *(image.crop(box_window(image.size, b, path)) for b in boxes)]
            return image.size, self.pixels.window(views) if self.pixels.fast else self.pixels(views)
        if boxes or not self.draft_decode:
            image = decode_rgb_tensor(path, size=ex.size)
        else:
            image = to_tensor(load_rgb(path, draft_short=self.tensor_pixels.short))
        size = (image.shape[2], image.shape[1])
        crops = []
        for box in boxes:
            left, top, right, bottom = box_window(size, box, path)
            crops.append(image[:, top:bottom, left:right])
        return size, self.tensor_pixels.window([image, *crops])


def tensor_pixels(pixels: ClipPixels) -> TensorPixels | None:
    """The tensor path of a processor :class:`ClipPixels` computes exactly, when it resizes bicubically
    (the only kernel the tensor path has); None otherwise."""
    if not pixels.fast or pixels.resample != Image.Resampling.BICUBIC:
        return None
    return TensorPixels(pixels.short, pixels.crop, pixels.normalise)


def _pad(sequences: list[list[int]], pad_id: int, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max([len(s) for s in sequences] + [pad_to or 0])
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


@dataclass
class Collate:
    """Stack samples into one batch: ``pixel_values`` holds ``[globals ; crops]`` for one forward (uint8,
    normalised by :meth:`TrainDataset.to_device`; with ``--decode-on device`` the undecoded
    :class:`~goalclip.training.device_decode.DeviceViews` it decodes).

    Captions pad to the batch's longest caption and sentences to the batch's longest sentence
    (never to the 248-token context): CLIP's causal text attention makes right padding exact.
    With ``pad_to`` (SigLIP, whose text tower attends to its pads and pools the last position) both
    pad to that length, the context, as SigLIP was trained.
    Items that failed to decode are dropped from the batch; their reasons travel in
    ``batch["failed"]`` (present only when some failed, and then possibly the only key).

    Local pairs are packed, image after image: row p of the crops, ``sentence_ids``,
    ``span_mask`` (over its own image's caption), ``patch_mask`` and the two TSL validity vectors
    is pair p. Packing rather than padding each image to K pairs spends no forward on empty
    slots. With ``weighted`` (top-k training) the batch also carries ``pair_owner`` [P] (the image
    of each pair) and ``pair_weight`` [P]; without it there is at most one pair per image, in image
    order: ``pair_owner`` is then present only when some image has no pair (it trains the global
    loss only), and P may be 0.
    """

    pad_id: int
    weighted: bool = False
    pad_to: int | None = None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        failed = [it["failed"] for it in items if "failed" in it]
        if failed:
            good = [it for it in items if "failed" not in it]
            return {**(self._stack(good) if good else {}), "failed": failed}
        return self._stack(items)

    def _stack(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        caption_ids, caption_mask = _pad([it["caption_ids"] for it in items], self.pad_id, self.pad_to)
        batch = {"caption_ids": caption_ids, "caption_mask": caption_mask}
        owners, pairs = [], []
        if "pairs" in items[0]:
            owners = [row for row, it in enumerate(items) for _ in it["pairs"]]
            pairs = [pair for it in items for pair in it["pairs"]]
            sentences = [pair["sentence_ids"] for pair in pairs]
            batch["sentence_ids"], batch["sentence_mask"] = _pad(sentences, self.pad_id, self.pad_to)
            span_mask = torch.zeros((len(pairs), caption_ids.shape[1]), dtype=torch.bool)
            for row, pair in enumerate(pairs):
                if pair["span"] is not None:
                    span_mask[row, pair["span"][0] : pair["span"][1]] = True
            batch["span_mask"] = span_mask
            batch["text_tsl_valid"] = torch.tensor([pair["span"] is not None for pair in pairs])
            # no pair in the batch: zero rows (nothing is pooled then)
            batch["patch_mask"] = torch.stack([pair["patch_mask"] for pair in pairs]) if pairs else torch.zeros(
                (0, 0), dtype=torch.bool)
            batch["image_tsl_valid"] = torch.tensor([pair["box_valid"] for pair in pairs])
            if self.weighted or owners != list(range(len(items))):
                batch["pair_owner"] = torch.tensor(owners, dtype=torch.long)
            if self.weighted:
                batch["pair_weight"] = torch.tensor([pair["weight"] for pair in pairs], dtype=torch.float32)
            elif len(set(owners)) != len(owners):
                raise ValueError("examples with several local pairs need Collate(weighted=True)")
        images, crops = [it["pixels"] for it in items], [pair["crop_pixels"] for pair in pairs]
        batch["pixel_values"] = (DeviceViews(images, list(zip(owners, crops))) if isinstance(images[0], ImageBytes)
                                 else torch.stack(images + crops))
        return batch


def drop_images(batch: dict[str, torch.Tensor], rows: set[int]) -> dict[str, torch.Tensor]:
    """A collated batch (its pixels aside) without the images at ``rows``: their captions, and their pairs
    with every per-pair row; the other pairs' owners renumbered. Padding stays (right padding is exact, see
    :class:`Collate`), so the step gives the loss of the batch collated without them."""
    device = batch["caption_ids"].device  # every tensor of the batch is on it (to_device moved them together)
    keep = torch.tensor([row not in rows for row in range(batch["caption_ids"].shape[0])], device=device)
    out = {key: batch[key][keep] for key in ("caption_ids", "caption_mask")}
    if "sentence_ids" not in batch:  # a method without local pairs
        return out
    pairs = batch["sentence_ids"].shape[0]
    owners = batch["pair_owner"] if "pair_owner" in batch else torch.arange(pairs, device=device)
    kept_pairs = keep[owners]
    for key in ("sentence_ids", "sentence_mask", "span_mask", "text_tsl_valid", "image_tsl_valid", "pair_weight"):
        if key in batch:
            out[key] = batch[key][kept_pairs]
    out["patch_mask"] = batch["patch_mask"][kept_pairs] if pairs else batch["patch_mask"]
    renumbered = (torch.cumsum(keep.long(), 0) - 1)[owners[kept_pairs]]
    if "pair_weight" in batch or not torch.equal(renumbered, torch.arange(int(keep.sum()), device=device)):
        out["pair_owner"] = renumbered
    return out


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches for one epoch; the order depends only on (seed, epoch).

    Global batches of ``batch_size * world`` (the incomplete last one dropped, so every process
    has the same batch size for the gathered contrastive loss); process ``rank`` takes its slice
    of each. A resumed run rebuilds the same list and skips the batches already done.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    per_step = batch_size * world
    return [
        order[start + rank * batch_size : start + (rank + 1) * batch_size]
        for start in range(0, n - per_step + 1, per_step)
    ]
