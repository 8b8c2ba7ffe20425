"""Image decoding shared by mining, training, evaluation and search.

Decoding happens in DataLoader workers so the model never waits on PIL; an unreadable file
is reported by index (the caller decides: skip and count, or stop) instead of crashing a
worker with a traceback from deep inside PIL.

Every image goes through :func:`load_rgb` (pixels) or :func:`image_size` (size only), so all
commands see the same picture: the one a viewer shows. EXIF orientation is applied, so boxes
(in manifests, external box files and mined pairs) are in the displayed orientation's pixels.
Every PIL mode becomes 8-bit RGB by one rule per mode (see :func:`to_rgb`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from goalclip.core.processes import worker_loader
from goalclip.core.shards import member_ref, open_member

logger = logging.getLogger(__name__)

PIL_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
"""PIL's own decompression-bomb limit (about 89 megapixels; twice that is refused outright)."""

BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited over white, as a browser or image viewer shows them."""

_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageError(ValueError):
    """An image file is missing or cannot be decoded."""


def set_max_image_pixels(limit: int | None) -> None:
    """Set the process-wide pixel limit above which an image is refused as a decompression bomb.

    ``None`` restores PIL's default, ``0`` removes the limit. An image over the limit is an
    unreadable image (:class:`ImageError` with its size), skipped and counted like a corrupt file.
    DataLoader workers started by fork inherit the setting.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"max image pixels must be >= 0 (0 = no limit), got {limit}")
    Image.MAX_IMAGE_PIXELS = PIL_MAX_IMAGE_PIXELS if limit is None else (limit or None)


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """Greyscale with more than 8 bits (modes I;16*, I, F) scaled to 8 bits.

    I;16* and I hold 16-bit samples (I is how PIL opens some 16-bit PNG/TIFF files): 65535 is
    white, larger I values saturate. F holds intensities in [0, 1] when every value lies there
    (the usual float convention), else 8-bit-range values clipped to [0, 255]; NaN is black.
    PIL's own conversion clips instead of scaling, which turns a 16-bit image white.
    """
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255
        grey = np.clip(np.rint(values), 0, 255)
    else:  # round(v / 257) in integers: 16-bit images can be large
        grey = (np.clip(values, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535
    return Image.fromarray(grey.astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB, for pixels the way a viewer shows them.

    High-bit-depth greyscale is scaled to 8 bits (see :func:`_high_bit_depth_to_l`); images with
    transparency (an alpha band, or a palette or greyscale image with a transparent colour) are
    composited over :data:`BACKGROUND`; every other mode (1, L, P, CMYK, YCbCr, LAB, HSV, ...)
    uses PIL's conversion.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _high_bit_depth_to_l(image).convert("RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA") if image.mode != "La" else image.convert("LA").convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return image.convert("RGB")


@contextlib.contextmanager
def _open(path: str) -> Iterator[Image.Image]:
    """``Image.open`` with a decompression bomb (over the limit) raised as an error, not a warning.

    A shard member (``<shard>.tar#<member>``, see :mod:`goalclip.core.shards`) is read in place.
    """
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_member(path)) if member_ref(path) is not None else path
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
        with image:
            yield image


def _image_error(path: str, exc: BaseException) -> ImageError:
    if isinstance(exc, FileNotFoundError):
        return ImageError(f"{path}: image file not found")
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageError(f"{path}: image too large to decode safely ({exc}); --max-image-pixels raises the limit")
    return ImageError(f"{path}: cannot decode image ({exc})")


_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
                  Image.DecompressionBombWarning)


def load_rgb(path: str, draft_short: int | None = None) -> Image.Image:
    """Open an image as displayed (EXIF orientation applied) in 8-bit RGB.

    With ``draft_short``, a JPEG is decoded at the smallest of libjpeg's reduced scales (1/2, 1/4,
    1/8, PIL's draft mode) whose short side is still at least ``draft_short``: a view that is resized
    to that short side anyway costs a fraction of the full decode. Other formats decode in full.
    Any failure (missing, corrupt, over the pixel limit) is an ImageError naming the file.
    """
    try:
        with _open(path) as image:
            if draft_short and image.format == "JPEG":
                scale = draft_short / min(image.size)
                image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except _DECODE_ERRORS as exc:
        raise _image_error(path, exc) from None


JPEG_MAGIC = b"\xff\xd8\xff"

@functools.cache
def jpeg_decoder() -> Callable | None:
    """torchcodec's ``decode_jpeg`` (libjpeg-turbo on CPU, nvJPEG on a GPU), or None when it cannot load
    (a torchcodec built for another torch): JPEGs then decode through PIL, and one warning says why."""
    try:
        from torchcodec.decoders import decode_jpeg
    except (ImportError, OSError, RuntimeError) as exc:
        logger.warning("torchcodec cannot load (%s): JPEGs decode through PIL instead (slower); install the "
                       "torchcodec release made for torch %s", exc, torch.__version__)
        return None
    return decode_jpeg


def read_image_bytes(path: str, size: tuple[int, int] | None = None) -> bytes:
    """An image file's bytes (a shard member's too), after the pixel-limit check on its displayed ``size``
    (read from the header when not given): what a decoder elsewhere (a GPU) receives."""
    width, height = size or image_size(path)
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: image too large to decode safely ({width}x{height} pixels, over the limit of "
                         f"{Image.MAX_IMAGE_PIXELS}); --max-image-pixels raises the limit")
    try:
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(open_member(path) if member_ref(path) is not None else open(path, "rb"))
            return source.read()
    except OSError as exc:
        raise _image_error(path, exc) from None


def decode_rgb_tensor(path: str, device: str | torch.device = "cpu",
                      size: tuple[int, int] | None = None) -> torch.Tensor:
    """The image as displayed, as a uint8 ``[3, H, W]`` tensor decoded on ``device``: a JPEG by torchcodec's
    ``decode_jpeg`` there (nvJPEG on a GPU, so a GPU decode leaves the CPU free; it applies the EXIF
    orientation itself, as PIL's exif_transpose does, tests/core/test_images.py); any other file, or a JPEG it
    cannot read, through :func:`load_rgb` and then moved.

    ``size`` is :func:`image_size`'s answer when the caller already has it (training reads it once, when it
    validates the examples), so the header is not read again; the same pixel limit holds
    (:func:`set_max_image_pixels`); failures are ImageErrors naming the file.
    """
    data = read_image_bytes(path, size)
    decode = jpeg_decoder() if data[:3] == JPEG_MAGIC else None
    if decode is not None:
        with contextlib.suppress(RuntimeError):  # e.g. CMYK or arithmetic-coded: PIL reads those
            return decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB", device=device)
    return to_tensor(load_rgb(path)).to(device)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), read from the header without decoding.

    A PNG's EXIF is read only when it precedes the pixels (where writers put it): PIL would decode
    the whole image to look for it after them, which a size check over a dataset cannot afford.
    """
    try:
        with _open(path) as image:
            width, height = image.size
            header_only = image.format == "PNG" and "exif" not in image.info
            orientation = None if header_only else image.getexif().get(_EXIF_ORIENTATION)
    except _DECODE_ERRORS as exc:
        raise _image_error(path, exc) from None
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def crop_to_box(image: Image.Image, box: Sequence[float], path: str = "image") -> Image.Image:
    """Crop to a box in the displayed image's pixel coordinates, widened to whole pixels and clipped to the image.

    A box with no area inside the image is an ImageError, so the item is excluded like an
    unreadable file instead of feeding the model an empty or padded crop.
    """
    return image.crop(box_window(image.size, box, path))


def box_window(size: tuple[int, int], box: Sequence[float], path: str = "image") -> tuple[int, int, int, int]:
    """The whole-pixel ``(left, top, right, bottom)`` that :func:`crop_to_box` cuts from a ``(w, h)`` image
    (also the slice of a decoded tensor); an ImageError when the box has no area inside the image."""
    width, height = size
    left, top = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    right, bottom = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    if right <= left or bottom <= top:
        raise ImageError(f"{path}: box {list(box)} lies outside the {width}x{height} image")
    return left, top, right, bottom


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 ``[3, H, W]`` tensor (one copy)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def centre_window(width: int, height: int, short: int, crop: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """A shortest-edge resize to ``short`` and a ``crop`` x ``crop`` centre crop, rounded as transformers
    rounds them: the resized ``(w, h)`` (long edge truncated) and the crop's ``(left, top)`` (floored)."""
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    return (new_w, new_h), ((new_w - crop) // 2, (new_h - crop) // 2)


def resize_uint8(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[3, H, W]`` uint8 -> ``[3, h, w]`` uint8 at ``size = (w, h)``: antialiased bicubic with PIL's kernel
    (a = -0.5), on the tensor's device. On CPU torch resizes uint8 directly (about 7x faster than PIL on a
    1024 x 768 photo, benchmarks/feed.py); elsewhere in float32, rounded back to uint8 the same way."""
    width, height = size
    if pixels.device.type == "cpu":
        return torch.nn.functional.interpolate(pixels[None], size=(height, width), mode="bicubic", antialias=True)[0]
    resized = torch.nn.functional.interpolate(pixels[None].float(), size=(height, width), mode="bicubic",
                                              antialias=True)[0]
    return resized.round_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Normalise:
    """uint8 pixels ``[..., 3, H, W]`` -> the processor's float32 values, on the pixels' device.

    Training's workers ship resized uint8 pixels (a quarter of float32's bytes) and the trainer normalises
    them where the model runs; mining normalises its crops in the workers. The values are bit-identical
    to :func:`normalise` (transformers' arithmetic) wherever it runs. When dividing by one float32 number
    gives the float64 rescale's value on each of the 256 levels (1/255's: 255, checked on the device
    itself), it divides in float32, in place: a batch of 512 views at 224 px then costs 1.5 instead of
    9.4 ms per pair of views on one CPU core (no float64 batch temporary).
    """

    rescale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _divisors: dict[str, torch.Tensor | None] = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device)[:, None, None]
        divisor = self._divisor(pixels.device)
        if divisor is None:
            return normalise(pixels, self.rescale, mean, std)
        return pixels.float().div_(divisor).sub_(mean).div_(std)

    def _divisor(self, device: torch.device) -> torch.Tensor | None:
        """A float32 divisor on ``device`` that reproduces the rescale on every uint8 level, or None."""
        key = str(device)
        if key not in self._divisors:
            levels = torch.arange(256, device=device)
            divisor = torch.tensor(1 / self.rescale, dtype=torch.float32, device=device)
            exact = torch.equal(levels.float().div_(divisor), (levels.double() * self.rescale).float())
            self._divisors[key] = divisor if exact else None
        return self._divisors[key]


@dataclass(frozen=True)
class TensorPixels:
    """A CLIP image processor's steps (shortest-edge resize, centre crop, rescale, normalise) on uint8
    ``[3, H, W]`` tensors of any device: :meth:`window` gives the resized and cropped uint8
    ``[N, 3, crop, crop]``, calling it adds :attr:`normalise` (float32 on that device).

    The resize is torch's antialiased bicubic instead of PIL's, so pixels differ from the processor's
    by a few levels (tests/core/test_images.py bounds it); the arithmetic after it is transformers'.
    """

    short: int
    crop: int
    normalise: Normalise

    def window(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        device = images[0].device if images else torch.device("cpu")
        out = torch.empty(len(images), 3, self.crop, self.crop, dtype=torch.uint8, device=device)
        for row, image in enumerate(images):
            size, (left, top) = centre_window(image.shape[2], image.shape[1], self.short, self.crop)
            out[row] = resize_uint8(image, size)[:, top : top + self.crop, left : left + self.crop]
        return out

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.normalise(self.window(images))


def normalise(pixels: torch.Tensor, rescale: float, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> the processor's float32 values, with transformers' own arithmetic (rescale in float64,
    round to float32, normalise in float32), so that equal uint8 pixels give bit-identical values."""
    return ((pixels.double() * rescale).float() - mean) / std


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
        loader = worker_loader(
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
