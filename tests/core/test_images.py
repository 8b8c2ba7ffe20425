"""Image decoding and the uint8-tensor pixel path (goalclip.core.images)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessor

import goalclip.core.images as images_module
from goalclip.core.images import (
    ImageError, Normalise, TensorPixels, decode_rgb_tensor, image_size, load_rgb, set_max_image_pixels, to_tensor,
)

RESIZE_TOLERANCE = 2
"""Levels (of 255) the tensor path may differ from the processor. On CPU torch's uint8 antialiased bicubic
is PIL's own fixed-point algorithm (a = -0.5, same support, same rounding): measured 0 on every case here.
The float32 resize used off the CPU rounds once instead of per pass: measured 2."""


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients, filled shapes and noise: edges of every contrast, like a photo."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    base = np.broadcast_to(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2), (height, width, 3))
    image = Image.fromarray(np.clip(base + rng.integers(-10, 11, (height, width, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        draw.ellipse((x0, y0, x0 + width // 3, y0 + height // 3), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def levels(ours: torch.Tensor, theirs: torch.Tensor, processor) -> torch.Tensor:
    """Normalised-pixel differences back in 0-255 levels."""
    std = torch.tensor(processor.image_std)[:, None, None]
    return (ours - theirs).abs() * std / processor.rescale_factor


def tensor_pixels(processor: CLIPImageProcessor) -> TensorPixels:
    return TensorPixels(processor.size["shortest_edge"], processor.crop_size["height"],
                        Normalise(processor.rescale_factor, tuple(processor.image_mean), tuple(processor.image_std)))


@pytest.mark.parametrize("size", [(32, 24), (224, 224), (640, 480), (333, 517), (1024, 768)])
@pytest.mark.parametrize("short", [32, 224])
def test_tensor_pixels_match_the_processor_within_a_level_or_two(size, short) -> None:
    processor = CLIPImageProcessor(size={"shortest_edge": short}, crop_size={"height": short, "width": short})
    image = photo(*size)
    theirs = processor(images=[image], return_tensors="pt")["pixel_values"]
    ours = tensor_pixels(processor)([to_tensor(image)])
    assert ours.shape == theirs.shape
    worst = float(levels(ours, theirs, processor).max())
    print(f"{size} -> {short}: largest difference {worst:.2f} levels")
    assert worst <= RESIZE_TOLERANCE + 1e-3


def test_draft_decode_keeps_the_short_side_and_decodes_less(tmp_path) -> None:
    path = tmp_path / "big.jpg"
    photo(800, 600).save(path, quality=92)
    assert load_rgb(str(path)).size == (800, 600)
    assert load_rgb(str(path), draft_short=100).size == (200, 150)  # 1/4; 1/8 (75 px) would go under 100
    assert load_rgb(str(path), draft_short=300).size == (400, 300)
    assert load_rgb(str(path), draft_short=600).size == (800, 600)
    png = tmp_path / "big.png"
    photo(800, 600).save(png)
    assert load_rgb(str(png), draft_short=100).size == (800, 600)  # only JPEG has reduced-scale decoding


def test_tensor_pixels_run_the_same_on_a_float_path() -> None:
    """Off the CPU the resize runs in float32 and rounds back to uint8: forced here on CPU through the same
    arithmetic, it gives the uint8 path's pixels within the same tolerance (measured 2 levels)."""
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    image = to_tensor(photo(300, 200))
    uint8 = tensor_pixels(processor)([image])
    resized = torch.nn.functional.interpolate(image[None].float(), size=(64, 96), mode="bicubic", antialias=True)[0]
    floats = resized.round().clamp(0, 255)[:, :, 16:80]
    mean, std = torch.tensor(processor.image_mean)[:, None, None], torch.tensor(processor.image_std)[:, None, None]
    expected = ((floats.double() * processor.rescale_factor).float() - mean) / std
    assert float(levels(uint8[0], expected, processor).max()) <= RESIZE_TOLERANCE + 1e-3


DECODE_TOLERANCE = 2
"""Levels (of 255) torchvision's JPEG decoder may differ from PIL's: both are libjpeg-turbo, but builds may pick
different IDCT and chroma-upsampling routines (measured: printed by the test)."""


def test_tensor_decode_matches_pil_within_a_stated_tolerance(tmp_path) -> None:
    """The GPU decode path's code run on the CPU: same orientation and size as load_rgb, pixels within
    DECODE_TOLERANCE; the global view it makes through TensorPixels within that plus RESIZE_TOLERANCE."""
    path = tmp_path / "rotated.jpg"
    image = photo(320, 200)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(path, quality=90, exif=exif)
    png = tmp_path / "plain.png"
    image.save(png)
    expected = to_tensor(load_rgb(str(path)))
    ours = decode_rgb_tensor(str(path), "cpu")
    assert ours.dtype == torch.uint8 and ours.shape == expected.shape == (3, 320, 200)
    worst = int((ours.int() - expected.int()).abs().max())
    print(f"torchvision vs PIL JPEG decode: largest difference {worst} levels")
    assert worst <= DECODE_TOLERANCE
    assert torch.equal(decode_rgb_tensor(str(png), "cpu"), to_tensor(load_rgb(str(png))))  # not a JPEG: PIL's
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    pixels = tensor_pixels(processor)
    gap = float(levels(pixels([ours]), pixels([expected]), processor).max())
    assert gap <= DECODE_TOLERANCE + RESIZE_TOLERANCE + 1e-3


def test_tensor_decode_keeps_the_pixel_limit(tmp_path) -> None:
    path = tmp_path / "big.jpg"
    photo(100, 100).save(path)
    set_max_image_pixels(5000)
    try:
        with pytest.raises(ImageError, match="big.jpg.*too large"):
            decode_rgb_tensor(str(path))
    finally:
        set_max_image_pixels(None)


def test_jpeg_decoding_uses_no_deprecated_decoder(tmp_path) -> None:
    """torchvision's image decoders are deprecated since 0.29 (superseded by torchcodec): decoding warns nothing."""
    path = tmp_path / "a.jpg"
    photo(64, 48).save(path, quality=90)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode_rgb_tensor(str(path))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tensor_decode_shows_each_exif_orientation_as_pil_does(tmp_path, orientation) -> None:
    """Every EXIF orientation (flips, quarter turns, transposes) gives the image PIL's exif_transpose shows
    (torchcodec applies it itself), and passing the size read at validation (as training does) gives the same
    tensor."""
    path = tmp_path / f"o{orientation}.jpg"
    image = photo(96, 64, seed=orientation)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)
    expected = to_tensor(load_rgb(str(path)))
    ours = decode_rgb_tensor(str(path))
    assert ours.shape == expected.shape
    assert int((ours.int() - expected.int()).abs().max()) <= DECODE_TOLERANCE
    size = image_size(str(path))
    assert size == (expected.shape[2], expected.shape[1])
    assert torch.equal(decode_rgb_tensor(str(path), size=size), ours)


def test_tensor_decode_falls_back_to_pil_when_torchcodec_cannot_load(tmp_path, monkeypatch, caplog) -> None:
    """A torchcodec built for another torch fails to load its libraries: JPEGs then decode through PIL, with
    one warning naming the cause, instead of every sample failing."""
    path = tmp_path / "a.jpg"
    photo(64, 48).save(path, quality=90)
    monkeypatch.setitem(__import__("sys").modules, "torchcodec.decoders", None)  # import fails
    images_module.jpeg_decoder.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            ours = decode_rgb_tensor(str(path))
            decode_rgb_tensor(str(path))
        assert torch.equal(ours, to_tensor(load_rgb(str(path))))
        assert sum("torchcodec" in r.getMessage() for r in caplog.records) == 1
    finally:
        images_module.jpeg_decoder.cache_clear()


@pytest.mark.parametrize("rescale", [1 / 255, 0.00392156862745098, 1 / 127.5, 1 / 256, 0.0039])
def test_normalise_is_bit_identical_to_the_processors_arithmetic(rescale) -> None:
    """Every level, on a batch, whichever form Normalise picks (float32 division where it is exact on all 256
    levels, the float64 product otherwise): the values transformers' rescale + normalise give."""
    pixels = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels[0].view(3, -1)[:] = torch.arange(256, dtype=torch.uint8)  # every level appears
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    expected = (((pixels.double() * rescale).float() - torch.tensor(mean)[:, None, None])
                / torch.tensor(std)[:, None, None])
    assert torch.equal(Normalise(rescale, mean, std)(pixels), expected)
