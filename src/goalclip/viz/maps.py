"""What a vision tower attends to, as numbers: attention maps, and principal components as colours.

- ``raw_maps`` / ``attention_maps``: per image, the last layer's CLS-to-patch attention (SigLIP: its
  attention-pooling head's) or the mean attention each patch receives, and the last-layer patch tokens.
- ``attention_pca``: the top-3 principal components of one layer's self-attention itself (each patch's
  attention row over the patches), FAST-GOAL's Fig. 5.

Colour scaling, chosen so that several models can be compared in one figure:

- attention is min-max normalised per image and model: the question a map answers is "where
  does this model look in this image", and raw attention mass is not comparable across models
  (a model that parks attention on a register-like patch has tiny values everywhere else);
- PCA is fitted per model over all the figure's images (so colours mean the same thing down a
  column), each component is divided by its own standard deviation (z-scores: residual-stream
  norms differ wildly between checkpoints, and the bases differ anyway), and one clip value,
  the 99th percentile of |z| over all models, maps ``[-clip, clip]`` to ``[0, 1]`` for all of
  them; so equal saturation means an equally unusual patch in every column. The sign of each
  component is fixed so that its most extreme patch is positive, which makes the colours
  reproducible across runs and machines (SVD signs are arbitrary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from goalclip.core.images import pixel_values
from goalclip.models.clip import ClipBundle
from goalclip.models.embed import model_device
from goalclip.viz.drawing import ImageLike, VizError, as_images

PCA_PERCENTILE = 99.0


def vision_layer(model: Any, layer: int) -> torch.nn.Module:
    """The vision tower's encoder layer ``layer`` (negative counts from the last); a bad number is an error."""
    layers = model.vision_model.encoder.layers
    if not -len(layers) <= layer < len(layers):
        raise VizError(f"layer {layer}: the vision tower has {len(layers)} layers (0 to {len(layers) - 1}, "
                       "or -1 for the last)")
    return layers[layer]


def attention_and_tokens(
    bundle: ClipBundle, pixels: torch.Tensor, layer: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's attention weights ``[N, H, T, T]`` (default the last) and the last hidden state ``[N, T, D]``
    (CLIP's before post-LN, with CLS first; SigLIP's after it, patches only).

    A forward hook on that layer's attention module keeps one layer's weights instead of the
    ``output_attentions`` tuple of all layers (about 0.5 GB per image for ViT-L/14-336).
    Only the eager implementation materialises the weights, so an sdpa/flash model is
    switched to eager for this call and switched back afterwards.
    """
    model = bundle.model
    previous = model.config._attn_implementation
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[1])

    if previous != "eager":
        model.set_attn_implementation("eager")
    handle = vision_layer(model, layer).self_attn.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model.vision_model(pixel_values=pixels)
    finally:
        handle.remove()
        if previous != "eager":
            model.set_attn_implementation(previous)
    if not captured or captured[0] is None:
        raise VizError("the vision tower returned no attention weights (eager attention is required)")
    return captured[0].float(), out.last_hidden_state.float()


ATTENTION_KINDS = {
    # kind: (what is averaged, figure title)
    # SigLIP has no CLS token: its map is the attention-pooling head's (what its image embedding looks at)
    "cls": ("the CLS token's attention to each patch", "CLS attention"),
    "patch": ("the attention every patch pays to each patch", "patch attention"),
}


def raw_maps(
    bundle: ClipBundle, images: Sequence[ImageLike], *, batch_size: int = 8, kind: str = "cls"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer attention ``[N, g, g]`` (mean over heads, unnormalised) and patch tokens ``[N, g*g, D]``.

    ``kind="cls"``: the CLS token's attention to each patch (the attention panels of FAST-GOAL's
    figure; for SigLIP, its attention-pooling head's); ``kind="patch"``: for each patch, the attention it
    receives averaged over all patch queries (the mean patch-to-patch map the GOAL authors' code draws).
    """
    if kind not in ATTENTION_KINDS:
        raise VizError(f"attention kind must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
    device, dtype = model_device(bundle)
    pil = as_images(images)
    backbone = bundle.backbone
    first = backbone.first_patch
    attention, tokens = [], []
    for start in range(0, len(pil), batch_size):
        pixels = pixel_values(bundle.image_processor, pil[start : start + batch_size])
        weights, hidden = attention_and_tokens(bundle, pixels.to(device, dtype))
        if kind == "cls":
            with torch.no_grad():
                received = backbone.pooling_attention(weights, hidden)
        else:
            received = weights[:, :, first:, first:].mean(dim=2)
        attention.append(received.mean(dim=1).cpu())
        tokens.append(hidden[:, first:].cpu())
    cls_to_patch = torch.cat(attention)
    patches = cls_to_patch.shape[1]
    grid = math.isqrt(patches)
    if grid * grid != patches:
        raise VizError(f"{patches} patch tokens do not form a square grid")
    return cls_to_patch.reshape(-1, grid, grid), torch.cat(tokens)


def normalise_per_image(maps: torch.Tensor) -> torch.Tensor:
    """Min-max each ``[g, g]`` map to ``[0, 1]``; a constant map becomes all zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    return ((flat - low) / span).reshape(maps.shape)


def pca_zscores(tokens: torch.Tensor, components: int = 3) -> torch.Tensor:
    """Top principal components of ``[N, P, D]`` tokens as z-scores ``[N, P, components]``.

    Fitted jointly over all N images (one basis per model); each component divided by its own
    standard deviation; sign fixed so the patch with the largest |score| is positive. Missing
    or degenerate components (fewer rows or dimensions than ``components``) are zeros.
    """
    n, p, d = tokens.shape
    x = tokens.reshape(n * p, d).double()
    x = x - x.mean(dim=0, keepdim=True)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    z = torch.zeros(n * p, components, dtype=torch.float64)
    keep = min(components, s.numel())
    for j in range(keep):
        if s[j] <= 1e-9 * max(float(s[0]), 1e-300):
            continue
        column = u[:, j]
        sign = torch.sign(column[column.abs().argmax()])
        z[:, j] = column * sign * math.sqrt(max(n * p - 1, 1))
    return z.float().reshape(n, p, components)


def shared_pca_clip(zscores: Sequence[torch.Tensor], percentile: float = PCA_PERCENTILE) -> float:
    """The one clip value for every model's PCA colours: a percentile of |z| over all of them."""
    values = np.concatenate([z.abs().reshape(-1).numpy() for z in zscores])
    clip = float(np.percentile(values, percentile)) if values.size else 1.0
    return clip if clip > 0 else 1.0


def pca_rgb(zscores: torch.Tensor, clip: float) -> torch.Tensor:
    """Map z-scores ``[N, P, 3]`` to colours in ``[0, 1]`` on a square grid ``[N, g, g, 3]``."""
    n, p, c = zscores.shape
    grid = math.isqrt(p)
    return ((zscores / clip).clamp(-1, 1) * 0.5 + 0.5).reshape(n, grid, grid, c)


def attention_maps(
    bundle: ClipBundle, images: Sequence[ImageLike], *, batch_size: int = 8, kind: str = "cls"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One model's maps for a figure: attention ``[N, g, g]`` min-max scaled per image, and PCA z-scores.

    The z-scores ``[N, g*g, 3]`` become colours with ``pca_rgb`` once the clip value shared by
    every model of the figure is known (``shared_pca_clip``).
    """
    attention, tokens = raw_maps(bundle, images, batch_size=batch_size, kind=kind)
    return normalise_per_image(attention), pca_zscores(tokens)


def patch_attention_rows(
    bundle: ClipBundle, images: Sequence[ImageLike], *, layer: int = -1, batch_size: int = 8
) -> torch.Tensor:
    """``[N, P, P]``: at ``layer``, each patch's attention over the patches, mean over heads; CLIP's CLS row
    and column are dropped (SigLIP has none), so a row is what one patch looks at among the patches."""
    device, dtype = model_device(bundle)
    pil = as_images(images)
    first = bundle.backbone.first_patch
    rows = []
    for start in range(0, len(pil), batch_size):
        pixels = pixel_values(bundle.image_processor, pil[start : start + batch_size])
        weights, _ = attention_and_tokens(bundle, pixels.to(device, dtype), layer)
        rows.append(weights[:, :, first:, first:].mean(dim=1).cpu())
    return torch.cat(rows)


def attention_pca(
    bundle: ClipBundle, images: Sequence[ImageLike], *, layer: int = -1, batch_size: int = 8
) -> torch.Tensor:
    """FAST-GOAL's Fig. 5: the top-3 principal components of the self-attention at ``layer`` as z-scores
    ``[N, P, 3]`` (patches whose attention rows are alike get alike colours); ``pca_rgb`` colours them."""
    rows = patch_attention_rows(bundle, images, layer=layer, batch_size=batch_size)
    if math.isqrt(rows.shape[1]) ** 2 != rows.shape[1]:
        raise VizError(f"{rows.shape[1]} patch tokens do not form a square grid")
    return pca_zscores(rows)
