"""The resolution-gap probe: can a model read the fine markings, in a crop and in the whole image?

Every object of the demo world carries a marking (stripes or spots) that the full-size image shows
and the model's downsampled input barely does. For each test object the probe scores the true
sentence against the same sentence with each other marking, two ways:

- ``marking_crop``: against the object's crop taken from the full-size image (what a local pair
  shows the model);
- ``marking_global``: against the whole image, with the object's sentence swapped inside the
  long caption (what global retrieval must do); one object per image (its first), which keeps
  the long captions to encode, the probe's main cost, to three per image.

Each is the percentage of objects whose true marking scores highest (chance: one in the number of
markings). GOAL's hypothesis is that local pairs teach detail the global view loses: it predicts a
higher ``marking_crop`` for methods with local pairs, and asks whether any of it reaches
``marking_global``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from goalclip.core.images import crop_to_box, load_rgb, pixel_values
from goalclip.core.records import read_manifest
from goalclip.demo.scene import MARKINGS
from goalclip.models.clip import load_clip, prepare_text_positions
from goalclip.models.embed import embed_pixels, embed_text_strings

PROBE_METRICS: tuple[str, ...] = ("marking_crop", "marking_global")


def _swapped(text: str, obj: dict[str, Any], marking: str) -> str:
    """``text`` with the object's marking phrase replaced by ``marking``."""
    old = f"{obj['shape']} with {obj['marking']}"
    if old not in text:
        raise ValueError(f"the sentence {obj['sentence']!r} does not name its marking as {old!r}")
    return text.replace(old, f"{obj['shape']} with {marking}")


def marking_probe(
    models: Sequence[str], test_manifest: str, *, context: int, keep_positions: int
) -> list[dict[str, float]]:
    """Score each model on every object of the test manifest; returns percentages per probe metric.

    Images and crops are decoded once for all models. A model with a shorter text context is
    stretched to ``context`` first, as evaluation does.
    """
    crops, images, sentences, captions, crop_truth, image_truth = [], [], [], [], [], []
    for record in read_manifest(test_manifest):
        image = load_rgb(record["image"])
        images.append(image)
        for obj in record["objects"]:
            crops.append(crop_to_box(image, obj["box"], record["image"]))
            sentences += [_swapped(obj["sentence"], obj, m) for m in MARKINGS]
            crop_truth.append(MARKINGS.index(obj["marking"]))
        first = record["objects"][0]
        captions += [record["caption"].replace(first["sentence"], _swapped(first["sentence"], first, m))
                     for m in MARKINGS]
        image_truth.append(MARKINGS.index(first["marking"]))
    scores = []
    for model in models:
        bundle = load_clip(model)
        prepare_text_positions(bundle, context, keep_positions)
        bundle.model.eval()
        with torch.no_grad():
            crop_emb, image_emb = (
                torch.cat([embed_pixels(bundle.model, pixel_values(bundle.image_processor, batch[i : i + 64]))
                           for i in range(0, len(batch), 64)])
                for batch in (crops, images)
            )
            sentence_emb = embed_text_strings(bundle, sentences, batch_size=256).view(len(crops), len(MARKINGS), -1)
            caption_emb = embed_text_strings(bundle, captions, batch_size=256).view(len(images), len(MARKINGS), -1)
        crop_pick = torch.einsum("nd,nmd->nm", crop_emb, sentence_emb).argmax(dim=1)
        image_pick = torch.einsum("nd,nmd->nm", image_emb, caption_emb).argmax(dim=1)
        scores.append({
            "marking_crop": 100.0 * float((crop_pick == torch.tensor(crop_truth)).float().mean()),
            "marking_global": 100.0 * float((image_pick == torch.tensor(image_truth)).float().mean()),
        })
    return scores
