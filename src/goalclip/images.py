"""Image decoding shared by mining, training, evaluation and search.

Decoding happens in DataLoader workers so the model never waits on PIL; an unreadable file
is reported by index (the caller decides: skip and count, or stop) instead of crashing a
worker with a traceback from deep inside PIL.
"""

from __future__ import annotations

import logging
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


def pixel_values(processor: Callable, images: Sequence[Image.Image]) -> torch.Tensor:
    """Run a transformers image processor over PIL images and return the pixel tensor."""
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


class PixelDataset(Dataset):
    """Image paths -> processed pixel tensors; an unreadable image yields ``None`` and its error."""

    def __init__(self, paths: Sequence[str], processor: Callable):
        self.paths = list(paths)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = load_rgb(self.paths[index])
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
    """Iterate ``(indices, pixels)`` over image paths; failures collect in ``failed``."""

    paths: Sequence[str]
    processor: Callable
    batch_size: int = 64
    num_workers: int = 0
    progress: bool = False
    desc: str = "images"
    failed: list[tuple[int, str]] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            PixelDataset(self.paths, self.processor),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        with tqdm(total=len(self.paths), desc=self.desc, disable=not self.progress, unit="img") as bar:
            for indices, pixels, bad in loader:
                for index, message in bad:
                    logger.warning("skipping unreadable image: %s", message)
                self.failed.extend(bad)
                bar.update(len(indices) + len(bad))
                if pixels is not None:
                    yield indices, pixels
