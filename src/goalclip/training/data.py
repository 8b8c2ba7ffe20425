"""Training data: validated examples, box -> patch masks, and the collate that builds a batch.

Everything the training step needs beyond the pixels and token ids is computed here, once
per example, in DataLoader workers: the sentence's exact token span in the caption and the
patch cells its box touches. The step then pools with batched masks, and an unusable span or
box becomes a False in a validity vector (the TSL term is masked, never faked).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from goalclip.core.images import ImageError, crop_to_box, image_size, load_rgb, pixel_values
from goalclip.core.manifest import ManifestError, SkipReport, captions_of, iter_records
from goalclip.models.clip import ClipBundle
from goalclip.models.embed import crop_geometry
from goalclip.core.text import clean_text, locate_sentence, token_span, usable_span

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
class Example:
    """One validated training example (the caption already cleaned)."""

    id: str
    image: str
    caption: str
    sentence: str | None = None
    box: list[float] | None = None
    sentence_chars: tuple[int, int] | None = None


def load_examples(
    path: str | Path, *, need_local: bool, skip_invalid: bool = False, skipped: SkipReport | None = None
) -> list[Example]:
    """Read and validate a training manifest before any step runs.

    Checks what would otherwise fail deep inside a worker or silently train on garbage:
    unreadable image, empty caption, missing local pair (when the method needs one), local
    sentence not found in the caption, box outside the image or of zero area. Each problem
    names file, line and field; with ``skip_invalid`` it is counted and skipped instead.
    """
    skipped = skipped if skipped is not None else SkipReport()
    examples = []
    for where, record in iter_records(path, skip_invalid=skip_invalid, skipped=skipped):
        try:
            examples.append(_validate_example(record, where, need_local))
        except ManifestError as exc:
            if not skip_invalid:
                raise
            skipped.add(str(exc))
    if not examples:
        raise ManifestError(f"{path}: no usable training examples ({len(skipped)} skipped)")
    return examples


def _validate_example(record: dict[str, Any], where: str, need_local: bool) -> Example:
    try:
        width, height = image_size(record["image"])
    except ImageError as exc:
        raise ManifestError(f"{where}: field 'image': {exc}") from None
    caption = clean_text(captions_of(record)[0])
    example = Example(record["id"], record["image"], caption)
    local = record.get("local")
    if local is None:
        if need_local:
            raise ManifestError(f"{where}: field 'local' is missing (this method needs mined pairs: run goalclip mine)")
        return example
    sentence = clean_text(local["sentence"])
    chars = locate_sentence(caption, sentence)
    if chars is None:
        raise ManifestError(f"{where}: field 'local.sentence' not found in the caption: {sentence!r}")
    x1, y1, x2, y2 = local["box"]
    tolerance = 1.0
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise ManifestError(f"{where}: field 'local.box' {local['box']} lies outside the {width}x{height} image")
    box = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ManifestError(f"{where}: field 'local.box' {local['box']} has zero area inside the image")
    example.sentence, example.box, example.sentence_chars = sentence, box, chars
    return example


class TrainDataset(Dataset):
    """Examples -> tensors for one training sample (decoded and processed in a worker).

    An image that passed validation (its header) but fails to decode gives ``{"failed": reason}``
    instead of raising: raised in a DataLoader worker, the error would reach the user wrapped in
    a torch traceback. The trainer decides whether to stop or to skip and count it.
    """

    def __init__(self, examples: list[Example], bundle: ClipBundle, *, need_local: bool):
        self.examples = examples
        self.tokenizer = bundle.tokenizer
        self.processor = bundle.image_processor
        self.max_len = bundle.max_text_len
        self.patch_size = int(bundle.model.config.vision_config.patch_size)
        self.num_patches = bundle.patch_grid**2
        self.need_local = need_local

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        try:
            return self._item(ex)
        except ImageError as exc:
            return {"failed": f"example {ex.id!r}: {exc}"}

    def _item(self, ex: Example) -> dict[str, Any]:
        image = load_rgb(ex.image)
        # verbose=False: an over-long caption is expected here (cut below, counted once by the trainer)
        enc = self.tokenizer(ex.caption, return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False)
        ids = enc["input_ids"]
        if len(ids) > self.max_len:
            ids = ids[: self.max_len - 1] + [self.tokenizer.eos_token_id]
        item: dict[str, Any] = {"caption_ids": ids}
        if not self.need_local:
            item["pixels"] = pixel_values(self.processor, [image])[0]
            return item
        span = usable_span(
            token_span(enc["offset_mapping"], enc["special_tokens_mask"], ex.sentence_chars), self.max_len
        )
        patch_mask = box_patch_mask(ex.box, image.width, image.height, self.processor, self.patch_size)
        crop = crop_to_box(image, ex.box, ex.image)
        pixels = pixel_values(self.processor, [image, crop])
        sentence_ids = self.tokenizer(ex.sentence, truncation=True, max_length=self.max_len)["input_ids"]
        item.update(
            pixels=pixels[0],
            crop_pixels=pixels[1],
            sentence_ids=sentence_ids,
            span=span,
            patch_mask=patch_mask if patch_mask is not None else torch.zeros(self.num_patches, dtype=torch.bool),
            box_valid=patch_mask is not None,
        )
        return item


def _pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


@dataclass
class Collate:
    """Stack samples into one batch: ``pixel_values`` holds ``[global ; crops]`` for one forward.

    Captions pad to the batch's longest caption and sentences to the batch's longest sentence
    (never to the 248-token context): CLIP's causal text attention makes right padding exact.
    Items that failed to decode are dropped from the batch; their reasons travel in
    ``batch["failed"]`` (present only when some failed, and then possibly the only key).
    """

    pad_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        failed = [it["failed"] for it in items if "failed" in it]
        if failed:
            good = [it for it in items if "failed" not in it]
            return {**(self._stack(good) if good else {}), "failed": failed}
        return self._stack(items)

    def _stack(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        caption_ids, caption_mask = _pad([it["caption_ids"] for it in items], self.pad_id)
        batch = {"caption_ids": caption_ids, "caption_mask": caption_mask}
        pixels = [it["pixels"] for it in items]
        if "crop_pixels" in items[0]:
            pixels += [it["crop_pixels"] for it in items]
            batch["sentence_ids"], batch["sentence_mask"] = _pad([it["sentence_ids"] for it in items], self.pad_id)
            span_mask = torch.zeros_like(caption_ids, dtype=torch.bool)
            for row, it in enumerate(items):
                if it["span"] is not None:
                    span_mask[row, it["span"][0] : it["span"][1]] = True
            batch["span_mask"] = span_mask
            batch["text_tsl_valid"] = torch.tensor([it["span"] is not None for it in items])
            batch["patch_mask"] = torch.stack([it["patch_mask"] for it in items])
            batch["image_tsl_valid"] = torch.tensor([it["box_valid"] for it in items])
        batch["pixel_values"] = torch.stack(pixels)
        return batch
