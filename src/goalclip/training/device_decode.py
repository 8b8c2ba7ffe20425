"""``train --decode-on device``: a batch's JPEGs decoded, cut and resized on the model's device.

Off by default (``--decode-on workers``: the loader workers decode, cut and resize on the CPU). With it
the workers only read each JPEG's bytes (and tokenise, and compute the patch masks); the main process
decodes the batch's JPEGs in one torchcodec call on the device (nvJPEG on a GPU, so the CPU is left to
the rest), slices each crop from its full-resolution decode and resizes every view there. Files of
other formats, and JPEGs torchcodec cannot read (CMYK, arithmetic coding), are decoded by PIL.

An image no decoder can read is reported like the workers report one (``example 'id': path: why``)
and leaves the batch (:func:`~goalclip.training.data.drop_images`); the trainer then stops, or with
``--skip-invalid`` skips and counts it.

On a CPU device the pixels equal the workers' exactly (the same decoder and resize); on a GPU the
resize runs in float32 and rounds once, within ``RESIZE_TOLERANCE`` (2 levels) of the CPU's
(tests/core/test_images.py, tests/training/test_device_decode.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from goalclip.core.images import (
    JPEG_MAGIC, ImageError, TensorPixels, decode_rgb_tensor, jpeg_decoder, load_rgb, read_image_bytes, to_tensor,
)

Window = tuple[int, int, int, int]
"""A crop's whole-pixel ``(left, top, right, bottom)`` in its image (``core.images.box_window``)."""


@dataclass
class ImageBytes:
    """One sample's image as a worker hands it over: the JPEG file's bytes, or (another format) the decoded
    uint8 ``[3, H, W]`` pixels; ``example`` is the example's id, for a failure's message."""

    example: str
    path: str
    data: torch.Tensor
    encoded: bool


def read_for_device(example: str, path: str, size: tuple[int, int]) -> ImageBytes:
    """The worker's share: a JPEG's bytes after the pixel-limit check, any other file decoded by PIL."""
    data = read_image_bytes(path, size)
    if data[:3] == JPEG_MAGIC and jpeg_decoder() is not None:
        return ImageBytes(example, path, torch.frombuffer(bytearray(data), dtype=torch.uint8), True)
    return ImageBytes(example, path, to_tensor(load_rgb(path)), False)


@dataclass
class DeviceViews:
    """A collated batch's pixels before decoding: one global view per image, then the crops, each the
    ``(image, window)`` it is cut from, in ``pixel_values`` order."""

    images: list[ImageBytes]
    crops: list[tuple[int, Window]]

    def pixels(self, views: TensorPixels, device: torch.device | str) -> tuple[torch.Tensor, dict[int, str]]:
        """uint8 ``[images + crops, 3, C, C]`` on ``device``, without the views of images that failed to
        decode; and those failures, ``{image row: reason}``."""
        decoded, failed = decode_batch(self.images, device)
        kept = [pixels for pixels in decoded if pixels is not None]
        crops = [decoded[owner][:, top:bottom, left:right]
                 for owner, (left, top, right, bottom) in self.crops if owner not in failed]
        return views.window([*kept, *crops]), failed


def decode_batch(images: Sequence[ImageBytes],
                 device: torch.device | str) -> tuple[list[torch.Tensor | None], dict[int, str]]:
    """Each image as uint8 ``[3, H, W]`` on ``device`` (None where it failed), and the failures' reasons by
    row: the JPEGs in one decoder call (one nvJPEG batch on a GPU); when that call fails, one at a time, a
    JPEG the decoder cannot read going through PIL (:func:`~goalclip.core.images.decode_rgb_tensor`), whose
    ImageError names the file."""
    out: list[torch.Tensor | None] = [None if image.encoded else image.data.to(device) for image in images]
    encoded = [row for row, image in enumerate(images) if image.encoded]
    failed: dict[int, str] = {}
    if not encoded:
        return out, failed
    try:
        out_encoded = jpeg_decoder()([images[row].data for row in encoded], mode="RGB", device=device)
    except RuntimeError:
        out_encoded = []
        for row in encoded:
            try:
                out_encoded.append(decode_rgb_tensor(images[row].path, device))
            except ImageError as exc:
                failed[row] = f"example {images[row].example!r}: {exc}"
                out_encoded.append(None)
    for row, pixels in zip(encoded, out_encoded):
        out[row] = pixels
    return out, failed
