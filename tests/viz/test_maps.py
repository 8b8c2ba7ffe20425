"""Attention maps and principal components as colours (goalclip.viz.maps)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.viz.conftest import BRIGHT, DARK, scene

from goalclip.cli import main
from goalclip.core.images import pixel_values
from goalclip.models.clip import ClipBundle, load_clip
from goalclip.models.embed import model_view_box
from goalclip.viz import maps as viz
from goalclip.viz.drawing import VizError, model_view


def _manual_cls_attention(bundle: ClipBundle, pixels: torch.Tensor) -> torch.Tensor:
    """Last-layer CLS-to-patch attention recomputed from the layer's input with q/k projections."""
    vision = bundle.model.vision_model
    out = vision(pixel_values=pixels, output_hidden_states=True)
    layer = vision.encoder.layers[-1]
    x = layer.layer_norm1(out.hidden_states[-2])
    heads = vision.config.num_attention_heads
    n, t, d = x.shape
    q = layer.self_attn.q_proj(x).reshape(n, t, heads, d // heads).transpose(1, 2)
    k = layer.self_attn.k_proj(x).reshape(n, t, heads, d // heads).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
    grid = math.isqrt(t - 1)
    return weights[:, :, 0, 1:].mean(dim=1).reshape(n, grid, grid)


@torch.no_grad()
def test_maps_are_the_models_attention_in_range_and_on_the_grid(model_dirs):
    bundle = load_clip(str(model_dirs["random"]), attn_implementation="eager")
    images = [scene((0, 0)), scene((1, 3)), scene((3, 2), colour=(40, 90, 225))]
    attention, z = viz.attention_maps(bundle, images)
    colours = viz.pca_rgb(z, viz.shared_pca_clip([z]))
    assert attention.shape == (3, 4, 4) and colours.shape == (3, 4, 4, 3)
    assert attention.min() >= 0 and attention.max() <= 1
    assert colours.min() >= 0 and colours.max() <= 1
    assert torch.allclose(attention.amin(dim=(1, 2)), torch.zeros(3))
    assert torch.allclose(attention.amax(dim=(1, 2)), torch.ones(3))

    pixels = pixel_values(bundle.image_processor, images)
    reported = bundle.model.vision_model(pixel_values=pixels, output_attentions=True).attentions[-1]
    from_output = viz.normalise_per_image(reported[:, :, 0, 1:].mean(dim=1).reshape(3, 4, 4))
    assert torch.allclose(attention, from_output, atol=1e-6)
    manual = viz.normalise_per_image(_manual_cls_attention(bundle, pixels[:1]))
    assert torch.allclose(attention[:1], manual, atol=1e-5)

    # A model loaded with sdpa is switched to eager for the call, gives the same maps, and is restored.
    sdpa = load_clip(str(model_dirs["random"]))
    assert sdpa.model.config._attn_implementation == "sdpa"
    again, z_again = viz.attention_maps(sdpa, images)
    assert sdpa.model.config._attn_implementation == "sdpa"
    assert torch.allclose(again, attention, atol=1e-5)
    assert torch.equal(z_again, viz.attention_maps(sdpa, images)[1])  # deterministic colours


@torch.no_grad()
def test_patch_kind_is_the_mean_attention_each_patch_receives_from_all_patches(model_dirs, tmp_path, capsys):
    bundle = load_clip(str(model_dirs["random"]), attn_implementation="eager")
    images = [scene((0, 0)), scene((1, 3))]
    attention, _ = viz.raw_maps(bundle, images, kind="patch")
    pixels = pixel_values(bundle.image_processor, images)
    weights = bundle.model.vision_model(pixel_values=pixels, output_attentions=True).attentions[-1]
    patches = weights.shape[-1] - 1
    by_loop = torch.zeros(2, patches)
    for j in range(patches):  # patch j receives, from each patch query i, averaged over heads then queries
        by_loop[:, j] = torch.stack([weights[:, :, 1 + i, 1 + j].mean(dim=1) for i in range(patches)]).mean(dim=0)
    assert torch.allclose(attention.reshape(2, -1), by_loop, atol=1e-6)
    cls, _ = viz.raw_maps(bundle, images, kind="cls")
    assert not torch.allclose(attention, cls)
    with pytest.raises(VizError, match="attention kind"):
        viz.raw_maps(bundle, images, kind="rollout")
    image_file = tmp_path / "a.png"
    images[0].save(image_file)
    assert main(["viz", "attention", "--model", str(model_dirs["random"]), "--images", str(image_file),
                 "--kind", "patch", "--out", str(tmp_path / "att.png")]) == 0
    assert (tmp_path / "att.png").is_file()


def test_pca_zscores_are_principal_components_with_fixed_sign():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 16, 8, generator=generator) * torch.tensor([5.0, 3.0, 2.0, 1, 1, 1, 1, 1])
    z = viz.pca_zscores(tokens)
    flat = z.reshape(-1, 3).double()
    assert torch.allclose(flat.var(dim=0), torch.ones(3, dtype=torch.float64), atol=1e-4)
    for j in range(3):
        assert flat[flat[:, j].abs().argmax(), j] > 0
    x = tokens.reshape(-1, 8).double()
    x = x - x.mean(dim=0)
    _, vectors = torch.linalg.eigh(x.T @ x)
    reference = x @ vectors[:, [-1, -2, -3]]
    reference = reference / reference.std(dim=0)
    assert torch.allclose(flat.abs(), reference.abs(), atol=1e-4)
    assert torch.equal(z, viz.pca_zscores(tokens.clone()))
    colours = viz.pca_rgb(z, viz.shared_pca_clip([z]))
    assert colours.shape == (2, 4, 4, 3) and 0 <= colours.min() and colours.max() <= 1


@torch.no_grad()
def test_attention_follows_the_bright_object_of_a_spotlight_model(model_dirs):
    """Can fail: the map must peak on the object's cell wherever it is, including off-centre crops."""
    bundle = load_clip(str(model_dirs["spotlight"]), attn_implementation="eager")
    cells = [(0, 0), (1, 3), (3, 2)]
    attention, z = viz.attention_maps(bundle, [scene(cell) for cell in cells])
    colours = viz.pca_rgb(z, viz.shared_pca_clip([z]))
    for i, (row, col) in enumerate(cells):
        assert divmod(int(attention[i].argmax()), 4) == (row, col)
        others = attention[i].clone()
        others[row, col] = 0
        assert others.max() < 0.05
        # First principal component separates the bright patch: full red there, mid-grey elsewhere.
        red = colours[i, :, :, 0]
        assert red[row, col] > 0.9 and red[row, col] == red.max()
        assert (red > 0.75).sum() == 1

    # A 48x32 photo is centre-cropped to x in [8, 40): an object at x = 8..15 is the crop's column 0.
    wide = scene((1, 0), size=(48, 32), offset=8)
    assert model_view_box(wide.size, bundle.image_processor) == (8.0, 0.0, 40.0, 32.0)
    wide_attention, _ = viz.attention_maps(bundle, [wide])
    assert divmod(int(wide_attention[0].argmax()), 4) == (1, 0)
    view = np.asarray(model_view(wide, bundle.image_processor, 32))
    assert view[12, 4].tolist() == list(BRIGHT) and view[12, 20].tolist() == list(DARK)


def _pca_by_hand(rows: np.ndarray) -> np.ndarray:
    """Top-3 principal components of the rows ``[M, F]`` from the covariance's eigenvectors, as z-scores, each
    signed so its largest |z| is positive."""
    x = rows - rows.mean(axis=0)
    _, vectors = np.linalg.eigh(x.T @ x)
    scores = x @ vectors[:, ::-1][:, :3]
    scores = scores / scores.std(axis=0, ddof=1)
    return scores * np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(3)])


@torch.no_grad()
@pytest.mark.parametrize("layer", [-1, 0])
def test_attention_pca_is_the_principal_components_of_the_patch_attention_rows(model_dirs, layer):
    bundle = load_clip(str(model_dirs["random"]), attn_implementation="eager")
    images = [scene((0, 0)), scene((1, 3)), scene((3, 2), colour=(40, 90, 225))]
    z = viz.attention_pca(bundle, images, layer=layer)
    pixels = pixel_values(bundle.image_processor, images)
    weights = bundle.model.vision_model(pixel_values=pixels, output_attentions=True).attentions[layer].numpy()
    rows = weights.astype(np.float64).mean(axis=1)[:, 1:, 1:]  # heads averaged; CLS row and column dropped
    assert z.shape == (3, 16, 3)
    np.testing.assert_allclose(z.reshape(-1, 3).numpy(), _pca_by_hand(rows.reshape(-1, 16)), atol=1e-4)
    with pytest.raises(VizError, match="layer 2: the vision tower has 2 layers"):
        viz.attention_pca(bundle, images, layer=2)


@torch.no_grad()
def test_attention_pca_of_siglip_keeps_every_patch(tiny_siglip):
    bundle = load_clip(str(tiny_siglip), attn_implementation="eager")
    images = [scene((0, 0)), scene((2, 1))]
    z = viz.attention_pca(bundle, images)
    pixels = pixel_values(bundle.image_processor, images)
    weights = bundle.model.vision_model(pixel_values=pixels, output_attentions=True).attentions[-1].numpy()
    rows = weights.astype(np.float64).mean(axis=1)  # no CLS token to drop
    assert rows.shape == (2, 16, 16)
    np.testing.assert_allclose(z.reshape(-1, 3).numpy(), _pca_by_hand(rows.reshape(-1, 16)), atol=1e-4)
