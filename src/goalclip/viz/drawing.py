"""What every figure shares: its error type, image inputs, model labels, fonts, the model's crop, saving.

Figures are drawn with matplotlib's object API (``Figure`` + Agg on save, never pyplot), so
importing a figure module changes no global backend and leaks no figures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib import font_manager
from PIL import Image, ImageFont

from goalclip.core.images import load_rgb, to_rgb
from goalclip.core.manifest import IMAGE_SUFFIXES, atomic_write
from goalclip.models.embed import model_view_box

ImageLike = Image.Image | str | os.PathLike


class VizError(ValueError):
    """A figure cannot be drawn from the given inputs; the message says why."""


def as_images(images: Sequence[ImageLike]) -> list[Image.Image]:
    """RGB images from PIL images or files."""
    return [to_rgb(im) if isinstance(im, Image.Image) else load_rgb(str(im)) for im in images]


def expand_images(items: Sequence[str], limit: int) -> list[str]:
    """Image files given directly, or the images of given folders (sorted), at most ``limit``."""
    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            paths.extend(str(p) for p in sorted(Path(item).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    if not paths:
        raise VizError(f"no images found in {', '.join(items)}")
    return paths[:limit]


def model_labels(models: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    """The given labels, or each model's folder name (numbered where two share a name)."""
    if labels is not None:
        if len(labels) != len(models):
            raise VizError(f"{len(labels)} labels for {len(models)} models")
        return list(labels)
    names = [Path(m.rstrip("/\\")).name or m for m in models]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at ``size`` (matplotlib ships it), else PIL's default font: labels drawn on PIL images."""
    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default(size)


def model_view(image: Image.Image, processor: Any, side: int) -> Image.Image:
    """The model's view of an image (its crop region), resized to ``side`` x ``side`` for display."""
    box = model_view_box(image.size, processor)
    return image.resize((side, side), Image.Resampling.BICUBIC, box=box)


def upsample(maps: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinearly upsample ``[N, g, g]`` maps to ``[N, side, side]`` for an overlay."""
    return F.interpolate(maps[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]


def bare_axes(ax: Any) -> None:
    """No ticks: the axes show a picture."""
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: Any, out: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically (a killed run leaves no half-written file)."""
    out = Path(out)
    with atomic_write(out, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    return out
