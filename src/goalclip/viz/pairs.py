"""Mined local pairs as pictures: the box drawn on the image, with the sentence, score and source."""

from __future__ import annotations

import logging
import os
import re
import textwrap
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from goalclip.core.images import load_rgb
from goalclip.core.manifest import atomic_write
from goalclip.core.records import read_manifest
from goalclip.viz.drawing import VizError, label_font

logger = logging.getLogger(__name__)

BOX_COLOUR = (255, 0, 255)
PAIR_IMAGE_SIDE = 512


def draw_pair(record: dict[str, Any], *, side: int = PAIR_IMAGE_SIDE) -> tuple[Image.Image, float]:
    """One mined pair as a picture: the image scaled to ``side`` with the box, text underneath.

    Drawn with PIL rather than matplotlib so the box sits at exactly ``scale * box`` pixels
    in the saved PNG (the image is pasted at the top-left corner); returns the picture and
    that scale.
    """
    image = load_rgb(record["image"])
    local = record["local"]
    w, h = image.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    shown = image.resize(size, resample)
    draw = ImageDraw.Draw(shown)
    x1, y1, x2, y2 = (float(v) * scale for v in local["box"])
    x1, y1 = max(0, round(x1)), max(0, round(y1))
    x2, y2 = min(size[0], round(x2)) - 1, min(size[1], round(y2)) - 1
    if x2 > x1 and y2 > y1:
        draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=(0, 0, 0), width=1)
        draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOUR, width=3)

    font, small = label_font(15), label_font(12)
    width = max(size[0], 420)
    chars = max(20, int(width / (0.55 * 15)))
    header = (
        f"{record['id']}   source: {local.get('source', '?')}   score: {float(local.get('score', float('nan'))):.3f}"
    )
    lines = textwrap.wrap(local["sentence"], width=chars)
    box_text = "box: [" + ", ".join(f"{float(v):.0f}" for v in local["box"]) + f"]   image {w}x{h}"
    height = size[1] + 14 + 20 * (1 + len(lines)) + 22
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(shown, (0, 0))
    text = ImageDraw.Draw(canvas)
    y = size[1] + 8
    text.text((8, y), header, fill=(40, 40, 40), font=small)
    y += 20
    for line in lines:
        text.text((8, y), line, fill=(0, 0, 0), font=font)
        y += 20
    text.text((8, y + 2), box_text, fill=(90, 90, 90), font=small)
    return canvas, scale


def plot_pairs(mined_manifest: str | os.PathLike, out_dir: str | os.PathLike, limit: int = 50) -> list[str]:
    """Write one PNG per mined pair (the first ``limit`` records with a ``local`` pair)."""
    records = [r for r in read_manifest(mined_manifest) if r.get("local")]
    if not records:
        raise VizError(f"{mined_manifest}: no records with a mined 'local' pair")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for n, record in enumerate(records[:limit]):
        canvas, _ = draw_pair(record)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", record["id"])[:80]
        path = folder / f"{n:04d}_{safe}.png"
        with atomic_write(path, "wb") as handle:
            canvas.save(handle, format="PNG")
        files.append(str(path))
    logger.info("pairs: %d of %d mined pairs drawn into %s", len(files), len(records), folder)
    return files

