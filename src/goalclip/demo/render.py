"""Drawing a scene's pixels, and the close-ups that pretraining images need.

The resolution gap of real data: DOCCI/DCI photos are 1,500-2,000 px and CLIP sees 224 px, so a crop
taken from the original shows detail the global view barely resolves. Here every object carries a
fine marking (stripes one way or the other, or spots) whose period is 3/32 of a cell: clear at the
rendered size and in any crop of it, but 1.5 px at a quarter of the size (the demo renders at 4x
its model's input), where the model's downsampling blurs it to a faint texture. All markings cover
the same share of the object, so its mean colour does not tell them apart.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from goalclip.core.manifest import atomic_write
from goalclip.demo.scene import BACKGROUNDS, COLOURS, INK, NOISE_STD, Background, Scene, WorldConfig, object_box


def _paint_background(background: Background, size: int) -> Image.Image:
    """A grey background; speckles are 2x2 pixels, which keeps PNG encoding (the slow part) fast."""
    level = BACKGROUNDS[background.first]
    if background.kind == "plain":
        return Image.new("RGB", (size, size), (level, level, level))
    if background.kind == "gradient":
        ramp = np.linspace(level, BACKGROUNDS[background.second], size)
        grey = np.broadcast_to(ramp[:, None] if background.vertical else ramp[None, :], (size, size))
    else:
        half = (size + 1) // 2
        noise = np.random.default_rng(background.noise_seed).normal(0.0, NOISE_STD, (half, half))
        grey = level + noise.repeat(2, axis=0).repeat(2, axis=1)[:size, :size]
    pixels = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L").convert("RGB")


def _shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean [height, width] mask of a shape filling a width x height box."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    # PIL coordinates are inclusive: draw on [0, width - 1].
    right, bottom = width - 1, height - 1
    mid_x, mid_y = right / 2, bottom / 2
    if shape == "circle":
        draw.ellipse((0, 0, right, bottom), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, right, bottom), fill=255)
    elif shape == "triangle":
        draw.polygon([(mid_x, 0), (right, bottom), (0, bottom)], fill=255)
    elif shape == "diamond":
        draw.polygon([(mid_x, 0), (right, mid_y), (mid_x, bottom), (0, mid_y)], fill=255)
    elif shape == "cross":
        arm = max(1, round(width / 6))
        cx, cy = width // 2, height // 2
        draw.rectangle((0, cy - arm, right, cy + arm - 1), fill=255)
        draw.rectangle((cx - arm, 0, cx + arm - 1, bottom), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(mask) > 0


def marking_period(config: WorldConfig) -> int:
    """Pixels per repeat of a marking: 3/32 of a cell (6 px in a 64 px cell), at least 3.

    At a quarter of the size that is 1.5 px, past what the model's input can resolve: bicubic
    downsampling keeps about a quarter of the difference between two markings.
    """
    return max(3, round(config.cell_size * 3 / 32))


def _marking_mask(marking: str, width: int, height: int, period: int) -> np.ndarray:
    """Boolean [height, width] mask of a marking's ink, anchored at the box's corner, ~1/3 ink."""
    ys, xs = np.mgrid[0:height, 0:width]
    line = max(1, round(period / 3))
    if marking == "horizontal stripes":
        return ys % period >= period - line
    if marking == "vertical stripes":
        return xs % period >= period - line
    if marking == "spots":  # (2/3 x 1/2 of the period) per period squared = 1/3
        return (ys % period < max(1, round(period / 2))) & (xs % period < max(1, round(period * 2 / 3)))
    raise ValueError(f"unknown marking {marking!r}")


def render(scene: Scene, config: WorldConfig) -> Image.Image:
    """Draw a scene without anti-aliasing, so object pixels carry their exact named colour or the ink."""
    pixels = np.array(_paint_background(scene.background, config.image_size))
    period = marking_period(config)
    for obj in scene.objects:
        x1, y1, x2, y2 = object_box(obj.row, obj.col, obj.size, config)
        shape = _shape_mask(obj.shape, x2 - x1, y2 - y1)
        ink = _marking_mask(obj.marking, x2 - x1, y2 - y1, period)
        box = pixels[y1:y2, x1:x2]
        box[shape & ~ink] = COLOURS[obj.colour]
        box[shape & ink] = INK
    return Image.fromarray(pixels, "RGB")


def save_png(image: Image.Image, path: Path) -> None:
    """Atomically, with fast compression: saving dominates generating a world."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    with atomic_write(path, "wb", fsync=False) as handle:
        handle.write(buffer.getvalue())


def closeup(image: Image.Image, box: tuple[int, int, int, int], zoom: float) -> tuple[Image.Image, list[int]]:
    """Zoom in on one object: a square crop ``zoom`` times the box's size, scaled to full size.

    Web images show objects at every scale; without close-ups a tiny CLIP pretrained only on
    small objects cannot match the zoomed-in crops that pair mining embeds. Nearest-neighbour
    scaling keeps the object's exact colour. Returns the image and the object's new box.
    """
    size = image.width
    side = min(size, max(4, round((box[2] - box[0]) * zoom)))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    left = min(max(0, round(cx - side / 2)), size - side)
    top = min(max(0, round(cy - side / 2)), size - side)
    scale = size / side
    zoomed = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.NEAREST)
    new_box = [round((box[0] - left) * scale), round((box[1] - top) * scale),
               round((box[2] - left) * scale), round((box[3] - top) * scale)]
    return zoomed, [max(0, min(size, v)) for v in new_box]
