"""The resolution-gap probe: can a model read the fine markings, in a crop and in the whole image?

Every object of the demo world carries a marking (stripes or spots) that the full-size image shows
and the model's downsampled input barely does. For each test object the probe scores the true
sentence against the same sentence with each other marking, two ways:

- ``marking_crop``: against the object's crop taken from the full-size image (what a local pair
  shows the model);
- ``marking_global``: against the whole image, with the object's sentence swapped inside the
  long caption (what global retrieval must do).

Each is the percentage of objects whose true marking scores highest (chance: one in the number of
markings). GOAL's hypothesis is that local pairs teach detail the global view loses: it predicts a
higher ``marking_crop`` for methods with local pairs, and asks whether any of it reaches
``marking_global``.
"""

from __future__ import annotations

from typing import Any

import torch

from goalclip.core.images import crop_to_box, load_rgb, pixel_values
from goalclip.core.manifest import read_manifest
from goalclip.demo.world import MARKINGS
from goalclip.models.clip import load_clip
from goalclip.models.embed import embed_images, encode_texts
from goalclip.training.trainer import prepare_text_positions

PROBE_METRICS: tuple[str, ...] = ("marking_crop", "marking_global")


def _swapped(text: str, obj: dict[str, Any], marking: str) -> str:
    """``text`` with the object's marking phrase replaced by ``marking``."""
    old = f"{obj['shape']} with {obj['marking']}"
    if old not in text:
        raise ValueError(f"the sentence {obj['sentence']!r} does not name its marking as {old!r}")
    return text.replace(old, f"{obj['shape']} with {marking}")


def marking_probe(model: str, test_manifest: str, *, context: int, keep_positions: int) -> dict[str, float]:
    """Score one model on every object of the test manifest; returns percentages per probe metric.

    A model with a shorter text context is stretched to ``context`` first, as evaluation does.
    """
    bundle = load_clip(model)
    prepare_text_positions(bundle, context, keep_positions)
    bundle.model.eval()
    crops, images, sentences, captions, truth = [], [], [], [], []
    records = read_manifest(test_manifest)
    for index, record in enumerate(records):
        image = load_rgb(record["image"])
        images.append(image)
        for obj in record["objects"]:
            crops.append(crop_to_box(image, obj["box"], record["image"]))
            sentences.append([_swapped(obj["sentence"], obj, m) for m in MARKINGS])
            captions.append((index, [record["caption"].replace(obj["sentence"], s) for s in sentences[-1]]))
            truth.append(MARKINGS.index(obj["marking"]))
    with torch.no_grad():
        crop_emb = torch.cat([embed_images(bundle.model, pixel_values(bundle.image_processor, crops[i : i + 64]))
                              for i in range(0, len(crops), 64)])
        image_emb = torch.cat([embed_images(bundle.model, pixel_values(bundle.image_processor, images[i : i + 64]))
                               for i in range(0, len(images), 64)])
        sentence_emb = encode_texts(bundle, [s for options in sentences for s in options]).view(len(crops), len(MARKINGS), -1)
        caption_emb = encode_texts(bundle, [c for _, options in captions for c in options]).view(len(crops), len(MARKINGS), -1)
    truth_t = torch.tensor(truth)
    crop_pick = torch.einsum("nd,nmd->nm", crop_emb, sentence_emb).argmax(dim=1)
    owners = torch.tensor([index for index, _ in captions])
    global_pick = torch.einsum("nd,nmd->nm", image_emb[owners], caption_emb).argmax(dim=1)
    return {
        "marking_crop": 100.0 * float((crop_pick == truth_t).float().mean()),
        "marking_global": 100.0 * float((global_pick == truth_t).float().mean()),
    }
