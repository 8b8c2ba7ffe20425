"""CLIP's image processor without its conversions, for training samples and mining crops.

A CLIP image processor resizes the shortest edge to S (bicubic), centre-crops C x C, rescales to
[0, 1] and normalises, converting PIL -> numpy -> PIL -> float numpy on the way; in the workers that
feed training and mining that is most of an image's CPU time (benchmarks/feed.py). :class:`ClipPixels`
does the same PIL resize on the uint8 image, crops it (:meth:`ClipPixels.window`, uint8), and goes from
uint8 to normalised float in one torch pass (:attr:`ClipPixels.normalise`, which training runs on the
device). The pixels the resize makes are the processor's own (same PIL call, same sizes, same crop
offsets, as transformers rounds them) and so is the arithmetic after it: the output is bit-identical
(tests/models/test_pixels.py). A processor of any other kind (no centre crop, a fixed size, no
normalisation) is called as it is.

Resizing just the crop window (``Image.resize(box=...)``) would skip the pixels the crop throws
away, but PIL's box resize is not bit-identical to resize-then-crop (up to 12 levels on some sizes),
so it is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from goalclip.core.images import Normalise, centre_window, pixel_values
from goalclip.models.embed import size_fields


class ClipPixels:
    """``images -> [N, 3, C, C]``: exactly ``processor(images)``, computed without its conversions."""

    def __init__(self, processor: Callable):
        self.processor = processor
        size = size_fields(getattr(processor, "size", None) or {})
        crop = size_fields(getattr(processor, "crop_size", None) or {})
        flags = ("do_resize", "do_center_crop", "do_rescale", "do_normalize")
        self.fast = (all(getattr(processor, flag, False) for flag in flags) and bool(size.get("shortest_edge"))
                     and crop.get("height") == crop.get("width") and crop.get("height") is not None
                     and int(getattr(processor, "resample", -1)) in {r.value for r in Image.Resampling})
        if not self.fast:
            return
        self.short, self.crop = int(size["shortest_edge"]), int(crop["height"])
        self.resample = Image.Resampling(int(processor.resample))
        self.normalise = Normalise(float(processor.rescale_factor), tuple(float(v) for v in processor.image_mean),
                                   tuple(float(v) for v in processor.image_std))

    def window(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The processor's resized and centre-cropped pixels, uint8 ``[N, 3, C, C]`` (a fast processor only)."""
        out = torch.empty(len(images), 3, self.crop, self.crop, dtype=torch.uint8)
        for row, image in enumerate(images):
            out[row] = self._window(image)
        return out

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if not self.fast:
            return pixel_values(self.processor, images)
        out = torch.empty(len(images), 3, self.crop, self.crop)
        for row, image in enumerate(images):  # row by row: a crop's float64 temporary stays in cache
            out[row] = self.normalise(self._window(image))
        return out

    def _window(self, image: Image.Image) -> torch.Tensor:
        size, (left, top) = centre_window(image.width, image.height, self.short, self.crop)
        small = image.convert("RGB").resize(size, self.resample).crop((left, top, left + self.crop, top + self.crop))
        return torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1)
