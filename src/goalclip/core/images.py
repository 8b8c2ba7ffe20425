"""Image decoding shared by mining, training, evaluation and search.

Decoding happens in DataLoader workers so the model never waits on PIL; an unreadable file
is reported by index (the caller decides: skip and count, or stop) instead of crashing a
worker with a traceback from deep inside PIL.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class ImageError(ValueError):
    """An image file is missing or cannot be decoded."""


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB, raising ImageError that names the file on any failure."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({exc})") from None


def crop_to_box(image: Image.Image, box: Sequence[float], path: str = "image") -> Image.Image:
    """Crop to a box in original pixel coordinates, widened to whole pixels and clipped to the image.

    A box with no area inside the image is an ImageError, so the item is excluded like an
    unreadable file instead of feeding the model an empty or padded crop.
    """
    width, height = image.size
    left, top = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    right, bottom = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    if right <= left or bottom <= top:
        raise ImageError(f"{path}: box {list(box)} lies outside the {width}x{height} image")
    return image.crop((left, top, right, bottom))


def pixel_values(processor: Callable, images: Sequence[Image.Image]) -> torch.Tensor:
    """Run a transformers image processor over PIL images and return the pixel tensor."""
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


class PixelDataset(Dataset):
    """Image paths (optionally crop boxes) -> pixel tensors; a failure yields ``None`` and its error."""

    def __init__(
        self, paths: Sequence[str], processor: Callable, boxes: Sequence[Sequence[float] | None] | None = None
    ):
        self.paths = list(paths)
        self.processor = processor
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        path, box = self.paths[index], self.boxes[index]
        try:
            image = load_rgb(path)
            if box is not None:
                image = crop_to_box(image, box, path)
        except ImageError as exc:
            return index, None, str(exc)
        return index, pixel_values(self.processor, [image])[0], None


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]):
    good = [(i, px) for i, px, _ in items if px is not None]
    bad = [(i, err) for i, _, err in items if err is not None]
    indices = torch.tensor([i for i, _ in good], dtype=torch.long)
    pixels = torch.stack([px for _, px in good]) if good else None
    return indices, pixels, bad


@dataclass
class PixelBatches:
    """Iterate ``(indices, pixels)`` over image paths (or their crops); failures collect in ``failed``."""

    paths: Sequence[str]
    processor: Callable
    boxes: Sequence[Sequence[float] | None] | None = None
    batch_size: int = 64
    num_workers: int = 0
    progress: bool = False
    desc: str = "images"
    failed: list[tuple[int, str]] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            PixelDataset(self.paths, self.processor, self.boxes),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        with tqdm(total=len(self.paths), desc=self.desc, disable=not self.progress, unit="img") as bar:
            for indices, pixels, bad in loader:
                for index, message in bad:
                    logger.warning("skipping image: %s", message)
                self.failed.extend(bad)
                bar.update(len(indices) + len(bad))
                if pixels is not None:
                    yield indices, pixels
