"""Error analysis behind ``goalclip viz errors`` (FAST-GOAL's Fig. 7): where image-to-text retrieval fails.

For every readable image of a captioned manifest, the top-1 caption is retrieved among all
captions. A failure is an image whose top caption belongs to another record; its margin is the
retrieved caption's score minus the best score among the image's own captions. The failures
with the largest margins are the model's most confident mistakes: each is drawn as the image with
the ground-truth and the retrieved caption underneath, the words that differ between the two
marked, so what the model missed (a colour, a count, a position) is visible at a glance.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageOps

from goalclip.core.images import load_rgb
from goalclip.core.manifest import atomic_write, captions_of
from goalclip.core.records import read_manifest
from goalclip.evaluation.metrics import top_k_retrieval
from goalclip.viz.drawing import VizError, label_font
from goalclip.models.clip import load_clip
from goalclip.models.embed import embed_image_files, embed_text_strings

logger = logging.getLogger(__name__)

DIFF_COLOUR = (200, 30, 30)
DIFF_BACKGROUND = (255, 225, 160)
TEXT_COLOUR = (20, 20, 20)


@dataclass
class Failure:
    """One image-to-text mistake: the image, its own best caption, the caption retrieved instead."""

    id: str
    image: str
    truth: str
    retrieved: str
    retrieved_id: str
    truth_score: float
    retrieved_score: float

    @property
    def margin(self) -> float:
        return self.retrieved_score - self.truth_score


def word_diff(truth: str, retrieved: str) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Both texts as ``(word, differs)`` lists: a word differs when it is not part of a run both texts share."""
    a, b = truth.split(), retrieved.split()
    matcher = difflib.SequenceMatcher(a=[w.lower().strip(".,;:!?\"'") for w in a],
                                      b=[w.lower().strip(".,;:!?\"'") for w in b], autojunk=False)
    same_a, same_b = [False] * len(a), [False] * len(b)
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            same_a[block.a + offset] = True
            same_b[block.b + offset] = True
    return [(w, not s) for w, s in zip(a, same_a)], [(w, not s) for w, s in zip(b, same_b)]


def find_failures(
    model: str, data: str | os.PathLike, *, base: str | None = None, device: str = "cpu", batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[Failure], int]:
    """All image-to-text top-1 failures, largest margin first, and how many images were queried."""
    records = read_manifest(data)
    if not records:
        raise VizError(f"{data}: no records")
    bundle = load_clip(model, base=base, device=device)
    bundle.model.eval()
    images, readable, _ = embed_image_files(bundle, [r["image"] for r in records], batch_size=batch_size,
                                            progress=progress)
    if not readable:
        raise VizError(f"{data}: none of the images could be read")
    texts = [c for r in records for c in captions_of(r)]
    owner = torch.tensor([i for i, r in enumerate(records) for _ in captions_of(r)])
    texts_embedded = embed_text_strings(bundle, texts, batch_size=batch_size, desc="captions", warn_truncated=True)
    scores = images @ texts_embedded.cpu().T
    # the top caption in goalclip eval's order: on a tie with its own caption, another image's caption ranks first
    first = top_k_retrieval(scores, torch.tensor(readable), owner, 1, "i2t")
    failures = []
    for row, index, top, hit in zip(scores, readable, first.indices[:, 0].tolist(), first.hits[:, 0].tolist()):
        if hit:
            continue
        own = owner == index
        best_own = int(torch.where(own, row, torch.tensor(float("-inf"))).argmax())
        failures.append(Failure(
            id=records[index]["id"], image=records[index]["image"], truth=texts[best_own], retrieved=texts[top],
            retrieved_id=records[int(owner[top])]["id"], truth_score=float(row[best_own]),
            retrieved_score=float(row[top]),
        ))
    failures.sort(key=lambda f: f.margin, reverse=True)
    return failures, len(readable)


def _draw_words(draw: ImageDraw.ImageDraw, words: list[tuple[str, bool]], x0: int, y: int, width: int,
                font: Any, line_height: int) -> int:
    """Wrap ``words`` into ``width`` pixels from ``(x0, y)``, differing words highlighted; returns the next y."""
    x = x0
    space = draw.textlength(" ", font=font)
    for word, differs in words:
        w = draw.textlength(word, font=font)
        if x > x0 and x + w > x0 + width:
            x, y = x0, y + line_height
        if differs:
            draw.rectangle((x - 1, y, x + w + 1, y + line_height - 3), fill=DIFF_BACKGROUND)
        draw.text((x, y), word, fill=DIFF_COLOUR if differs else TEXT_COLOUR, font=font)
        x += w + space
    return y + line_height


def draw_failure(failure: Failure, rank: int, side: int = 256, text_width: int = 620) -> Image.Image:
    """One failure as a picture: the image on the left, the two captions with the differing words marked."""
    image = ImageOps.contain(load_rgb(failure.image), (side, side))
    font, small = label_font(14), label_font(12)
    truth, retrieved = word_diff(failure.truth, failure.retrieved)
    line = 19
    # draw the text onto a tall scratch canvas first: its final height is known only afterwards
    scratch = Image.new("RGB", (text_width + 20, 4000), (255, 255, 255))
    scratch_draw = ImageDraw.Draw(scratch)
    y = 6
    for label, words in ((f"#{rank} {failure.id}: ground truth ({failure.truth_score:.3f})", truth),
                         (f"retrieved from {failure.retrieved_id} ({failure.retrieved_score:.3f}, "
                          f"margin {failure.margin:+.3f})", retrieved)):
        scratch_draw.text((8, y), label, fill=(90, 90, 90), font=small)
        y = _draw_words(scratch_draw, words, 8, y + 17, text_width, font, line) + 8
    height = max(image.height, y) + 8
    canvas = Image.new("RGB", (image.width + text_width + 36, height), (255, 255, 255))
    canvas.paste(image, (4, 4))
    canvas.paste(scratch.crop((0, 0, text_width + 20, height)), (image.width + 12, 0))
    return canvas


def plot_errors(
    model: str, data: str | os.PathLike, out: str | os.PathLike, *, limit: int = 8, base: str | None = None,
    device: str = "cpu", batch_size: int = 64, progress: bool = False,
) -> dict[str, Any]:
    """Draw the ``limit`` largest-margin image-to-text failures into one PNG; the list goes to ``out``'s .json."""
    failures, queried = find_failures(model, data, base=base, device=device, batch_size=batch_size,
                                      progress=progress)
    shown = failures[:limit]
    result: dict[str, Any] = {"model": model, "images": queried, "failures": len(failures), "out": str(out),
                              "shown": [{**vars(f), "margin": f.margin} for f in shown]}
    panels = [draw_failure(f, rank) for rank, f in enumerate(shown, start=1)]
    if not panels:
        message = Image.new("RGB", (640, 60), (255, 255, 255))
        ImageDraw.Draw(message).text((10, 20), f"no image-to-text failures among {queried} images",
                                     fill=TEXT_COLOUR, font=label_font(14))
        panels = [message]
    sheet = Image.new("RGB", (max(p.width for p in panels), sum(p.height + 6 for p in panels)), (235, 235, 235))
    y = 0
    for panel in panels:
        sheet.paste(panel, (0, y))
        y += panel.height + 6
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as handle:
        sheet.save(handle, format="PNG")
    with atomic_write(Path(out).with_suffix(".json")) as handle:
        json.dump(result, handle, indent=1)
    logger.info("errors: %d of %d images fail image-to-text; %d drawn -> %s", len(failures), queried, len(shown), out)
    return result
