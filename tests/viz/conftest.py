"""Shared by the viz tests: tiny CLIPs (random, another seed, one rewired to look at the bright patch)
and dark scenes with one bright 8x8 square on a chosen patch cell."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from goalclip.demo.tiny import build_tiny_clip
from goalclip.models.clip import ClipBundle, save_clip

TEXTS = [
    "a red square in the top left of a dark picture",
    "a blue square on the right side of a dark picture",
    "a green square near the bottom of a grey image",
    "a yellow square in the middle. the rest is dark.",
] * 4
WORDS = sorted({w.strip(".") for t in TEXTS for w in t.split()})
DARK = (30, 30, 30)
BRIGHT = (250, 250, 250)


def tiny_viz_clip(seed: int = 0) -> ClipBundle:
    return build_tiny_clip(TEXTS, image_size=32, patch_size=8, width=32, layers=2, heads=2, seed=seed)


def scene(cell: tuple[int, int], size: tuple[int, int] = (32, 32), offset: int = 0, colour=BRIGHT) -> Image.Image:
    """A dark image with one bright 8x8 square on patch cell (row, col), shifted right by ``offset`` px."""
    image = Image.new("RGB", size, DARK)
    row, col = cell
    x, y = offset + 8 * col, 8 * row
    ImageDraw.Draw(image).rectangle((x, y, x + 7, y + 7), fill=colour)
    return image


def spotlight(bundle: ClipBundle) -> ClipBundle:
    """Rewire a tiny CLIP so that, in the last layer, CLS attends to the brightest patch.

    Channel 0 of every patch embedding is the patch's summed (normalised) brightness: strongly
    positive for the bright square, strongly negative for the dark background; the CLS token's
    channel 0 is strongly negative. Layer 0 is made an identity (zero residual branches). In the
    last layer every query is the constant ``c * e0`` (per head) and every key reads channel 0,
    so the CLS row of the attention puts almost all its mass on the bright patch. The expected
    map is therefore known exactly in patch-grid coordinates, which a wrong CLS offset, a
    transposed grid, a patch-to-CLS column instead of the CLS row, or a crop mismatch would break.
    """
    vision = bundle.model.vision_model
    head_dim = vision.config.hidden_size // vision.config.num_attention_heads
    with torch.no_grad():
        vision.embeddings.patch_embedding.weight.zero_()
        vision.embeddings.patch_embedding.weight[0] = 1.0
        vision.embeddings.position_embedding.weight[:, 0] = 0.0
        vision.embeddings.class_embedding[0] = -300.0
        first = vision.encoder.layers[0]
        for linear in (first.self_attn.out_proj, first.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
        last = vision.encoder.layers[-1].self_attn
        last.q_proj.weight.zero_()
        last.q_proj.bias.zero_()
        last.k_proj.weight.zero_()
        last.k_proj.bias.zero_()
        for head in range(vision.config.num_attention_heads):
            last.q_proj.bias[head * head_dim] = 10.0
            last.k_proj.weight[head * head_dim, 0] = 1.0
    return bundle


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("viz_models")
    return {
        "random": save_clip(tiny_viz_clip(0), root / "random"),
        "other": save_clip(tiny_viz_clip(1), root / "other"),
        "spotlight": save_clip(spotlight(tiny_viz_clip(0)), root / "spotlight"),
    }
