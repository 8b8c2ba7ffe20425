"""The fast pixel path (training samples, mining crops) against the model's own image processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from goalclip.core.images import crop_to_box, load_rgb, pixel_values
from goalclip.models.pixels import ClipPixels
from tests.core.test_images import RESIZE_TOLERANCE

TOLERANCE = 0.0  # ClipPixels (mining's crops) is bit-identical: the same PIL resize, the same float64 -> float32


def _processor(size: int):
    cls = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    return Image.fromarray(np.clip(ramp + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [224, 336, 32])
@pytest.mark.parametrize("shape", [(1024, 768), (768, 1024), (333, 517), (640, 640), (300, 41), (20, 30)])
def test_clip_pixels_equal_the_processor(size, shape) -> None:
    processor = _processor(size)
    fast = ClipPixels(processor)
    assert fast.fast
    image = _photo(*shape, seed=size + shape[0])
    crop = image.crop((shape[0] // 5, shape[1] // 7, shape[0] // 5 + max(1, shape[0] // 2), shape[1]))
    expected = pixel_values(processor, [image, crop])
    got = fast([image, crop])
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_other_processors_are_called_as_they_are() -> None:
    cls = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
    processor = cls(size={"height": 40, "width": 56}, do_center_crop=False)
    fast = ClipPixels(processor)
    image = _photo(90, 70, seed=0)
    assert not fast.fast and torch.equal(fast([image]), pixel_values(processor, [image]))


def test_training_samples_skip_the_image_processor_and_keep_its_pixels(tiny_world, tiny_bundle, monkeypatch) -> None:
    from goalclip.training.data import TrainDataset, load_examples

    examples = load_examples(tiny_world.mined, need_local=True)
    dataset = TrainDataset(examples, tiny_bundle, need_local=True)
    processor = tiny_bundle.image_processor
    levels = torch.tensor(processor.image_std)[:, None, None] / processor.rescale_factor  # normalised -> levels
    expected = [pixel_values(processor, [image, crop_to_box(image, ex.box)])
                for ex in examples for image in [load_rgb(ex.image)]]
    calls = []
    real = type(processor).__call__
    monkeypatch.setattr(type(processor), "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    for index, pixels in enumerate(expected):
        item = dataset[index]
        got = dataset.normalise(torch.stack([item["pixels"], item["pairs"][0]["crop_pixels"]]))
        # the resize runs on uint8 tensors (tests/core/test_images.py): 1 level at most here, measured
        assert ((got - pixels).abs() * levels).max().item() <= RESIZE_TOLERANCE + 1e-3
    assert calls == []  # PIL -> numpy -> PIL -> float numpy per image was most of a sample's CPU time
