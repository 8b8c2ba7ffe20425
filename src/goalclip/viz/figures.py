"""Figures for looking at what a model learned: attention maps, retrieval grids, mined pairs.

- ``attention``: per image, each model's last-layer CLS-to-patch attention (mean over heads)
  over the image, and the top-3 principal components of its last-layer patch tokens as RGB
  (the FAST-GOAL figure), side by side for several checkpoints.
- ``retrieval``: long-caption queries with each model's top-k images, hits framed green and
  misses red, plus an image-to-text panel with each model's top captions.
- ``pairs``: mined local pairs, the box drawn on the image with its sentence, score and source.

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

Figures are drawn with matplotlib's object API (``Figure`` + Agg on save, never pyplot), so
importing this module changes no global backend and leaks no figures.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from goalclip.core.images import load_rgb, pixel_values, to_rgb
from goalclip.core.manifest import IMAGE_SUFFIXES, atomic_write, captions_of
from goalclip.core.records import read_manifest
from goalclip.evaluation.metrics import top_k_retrieval
from goalclip.models.clip import ClipBundle, load_clip
from goalclip.models.embed import embed_image_files, embed_text_strings, model_device, model_view_box

logger = logging.getLogger(__name__)

HIT_COLOUR = "#1a9850"
MISS_COLOUR = "#d73027"
BOX_COLOUR = (255, 0, 255)
PAIR_IMAGE_SIDE = 512
PCA_PERCENTILE = 99.0
ImageLike = Image.Image | str | os.PathLike


class VizError(ValueError):
    """A figure cannot be drawn from the given inputs; the message says why."""


# ----------------------------------------------------------------------------- maps


def _as_images(images: Sequence[ImageLike]) -> list[Image.Image]:
    return [to_rgb(im) if isinstance(im, Image.Image) else load_rgb(str(im)) for im in images]


def _last_layer_attention_and_tokens(bundle: ClipBundle, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer attention weights ``[N, H, T, T]`` and the last hidden state ``[N, T, D]`` (CLIP's before
    post-LN, with CLS first; SigLIP's after it, patches only).

    A forward hook on the last attention module keeps one layer's weights instead of the
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
    handle = model.vision_model.encoder.layers[-1].self_attn.register_forward_hook(hook)
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
    pil = _as_images(images)
    backbone = bundle.backbone
    first = backbone.first_patch
    attention, tokens = [], []
    for start in range(0, len(pil), batch_size):
        pixels = pixel_values(bundle.image_processor, pil[start : start + batch_size])
        weights, hidden = _last_layer_attention_and_tokens(bundle, pixels.to(device, dtype))
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


# ----------------------------------------------------------------------------- geometry


def model_view(image: Image.Image, processor: Any, side: int) -> Image.Image:
    """The model's view of an image (its crop region), resized to ``side`` x ``side`` for display."""
    box = model_view_box(image.size, processor)
    return image.resize((side, side), Image.Resampling.BICUBIC, box=box)


def upsample(maps: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinearly upsample ``[N, g, g]`` maps to ``[N, side, side]`` for an overlay."""
    return F.interpolate(maps[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]


# ----------------------------------------------------------------------------- figures


def _labels(models: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(models):
            raise VizError(f"{len(labels)} labels for {len(models)} models")
        return list(labels)
    names = [Path(m.rstrip("/\\")).name or m for m in models]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _save_figure(fig: Any, out: str | os.PathLike, dpi: int = 110) -> Path:
    out = Path(out)
    with atomic_write(out, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    return out


def _bare(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_attention(
    models: Sequence[str],
    images: Sequence[str],
    out: str | os.PathLike,
    labels: Sequence[str] | None = None,
    *,
    base: str | None = None,
    device: str = "cpu",
    display_size: int = 224,
    kind: str = "cls",
) -> dict[str, Any]:
    """One row per image: the image, then per model its attention overlay (``kind``, see :func:`raw_maps`)
    and PCA colour map."""
    from matplotlib.figure import Figure

    if not models or not images:
        raise VizError("plot_attention needs at least one model and one image")
    names = _labels(models, labels)
    originals = _as_images(images)
    per_model: list[tuple[torch.Tensor, torch.Tensor, list[Image.Image]]] = []
    for source in models:
        bundle = load_clip(source, base=base, device=device, attn_implementation="eager")
        bundle.model.eval()
        attention, z = attention_maps(bundle, originals, kind=kind)
        views = [model_view(im, bundle.image_processor, display_size) for im in originals]
        per_model.append((attention, z, views))
        del bundle
    clip = shared_pca_clip([z for _, z, _ in per_model])

    rows, cols = len(originals), 1 + 2 * len(models)
    fig = Figure(figsize=(2.1 * cols, 2.2 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (path, original) in enumerate(zip(images, originals)):
        axes[r, 0].imshow(original)
        axes[r, 0].set_ylabel(textwrap.shorten(Path(str(path)).name, 22), fontsize=8)
        for m, (name, (attention, z, views)) in enumerate(zip(names, per_model)):
            overlay_ax, pca_ax = axes[r, 1 + 2 * m], axes[r, 2 + 2 * m]
            overlay_ax.imshow(views[r])
            overlay_ax.imshow(
                upsample(attention[r : r + 1], display_size)[0].numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0
            )
            pca_ax.imshow(pca_rgb(z[r : r + 1], clip)[0].numpy(), interpolation="nearest")
            if r == 0:
                overlay_ax.set_title(f"{name}\n{ATTENTION_KINDS[kind][1]}", fontsize=9)
                pca_ax.set_title(f"{name}\npatch PCA (RGB)", fontsize=9)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=9)
    for ax in axes.flat:
        _bare(ax)
    fig.supxlabel(
        f"attention: last layer, {ATTENTION_KINDS[kind][0]}, mean over heads, min-max per image, on the model's crop\n"
        f"PCA: top-3 components of each model's last-layer patch tokens, z-scored, |z| clipped at {clip:.2f} "
        "(99th percentile shared by all models)",
        fontsize=7,
    )
    saved = _save_figure(fig, out)
    logger.info("attention figure: %d images x %d models -> %s", rows, len(models), saved)
    return {"out": str(saved), "models": names, "images": [str(p) for p in images], "pca_clip": clip}


def _spine_verdict(ax: Any) -> str:
    """Read back the frame colour actually drawn on an axis ('hit' or 'miss')."""
    from matplotlib.colors import to_rgba

    edge = ax.spines["top"].get_edgecolor()
    return "hit" if np.allclose(edge, to_rgba(HIT_COLOUR)) else "miss"


def _frame(ax: Any, hit: bool) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(HIT_COLOUR if hit else MISS_COLOUR)
        spine.set_linewidth(3.5)


def plot_retrieval(
    models: Sequence[str],
    data_manifest: str | os.PathLike,
    out: str | os.PathLike,
    queries: int = 4,
    k: int = 5,
    seed: int = 0,
    *,
    labels: Sequence[str] | None = None,
    base: str | None = None,
    device: str = "cpu",
    image_queries: int = 3,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Text-to-image top-k grids (hits green, misses red) and an image-to-text panel.

    Queries are the first (long) caption of records drawn with ``random.Random(seed)``; the
    gallery is every distinct readable image of the manifest, so a record sharing its image with
    another still has one right answer. Image-to-text uses the first ``image_queries`` query
    images against every caption; a caption is right if its record has the query's image.
    Returned ranks and hits are what the figure shows: ``frames`` is read back from the drawn
    axes, not recomputed.
    """
    from matplotlib.figure import Figure

    if not models:
        raise VizError("plot_retrieval needs at least one model")
    names = _labels(models, labels)
    bundles, image_rows, gallery, records = _retrieval_gallery(models, data_manifest, base, device, batch_size)
    position = {path: i for i, path in enumerate(gallery)}
    chosen = sorted(random.Random(seed).sample(range(len(records)), min(queries, len(records))))
    query_texts = [captions_of(records[i])[0] for i in chosen]
    query_gt = [position[records[i]["image"]] for i in chosen]
    caption_texts = [c for r in records for c in captions_of(r)]
    caption_image = [position[r["image"]] for r in records for _ in captions_of(r)]
    i2t_images = query_gt[:image_queries]
    k = min(k, len(gallery))
    top_captions = min(3, len(caption_texts))

    result: dict[str, Any] = {
        "queries": [records[i]["id"] for i in chosen],
        "query_text": query_texts,
        "gallery": gallery,
        "models": names,
        "t2i": {},
        "i2t": {},
    }
    for name, bundle, images in zip(names, bundles, image_rows):
        embed = functools.partial(embed_text_strings, bundle, batch_size=batch_size, desc="captions",
                                  warn_truncated=True)
        result["t2i"][name] = _rank_texts_to_images(images, embed(query_texts).cpu(), query_gt, k)
        result["i2t"][name] = _rank_images_to_texts(images[i2t_images], i2t_images, embed(caption_texts).cpu(),
                                                    caption_image, top_captions)

    thumb = functools.lru_cache(maxsize=None)(functools.partial(_thumbnail, gallery))
    fig = Figure(figsize=(max(1.45 * (2 + len(models) * k + 1.5), 9.0),
                          2.0 * len(chosen) + 2.3 * len(i2t_images) + 1.0), layout="constrained")
    top_fig, bottom_fig = fig.subfigures(2, 1, height_ratios=[2.0 * len(chosen), 2.3 * max(len(i2t_images), 1)])
    _draw_text_to_image(top_fig, result, query_texts, query_gt, k, thumb)
    _draw_image_to_text(bottom_fig, result, i2t_images, caption_texts, top_captions, thumb)
    saved = _save_figure(fig, out, dpi=100)
    result["out"] = str(saved)
    logger.info("retrieval figure: %d queries x %d models -> %s", len(chosen), len(models), saved)
    return result


def _retrieval_gallery(models: Sequence[str], data_manifest: str | os.PathLike, base: str | None, device: str,
                       batch_size: int) -> tuple[list[ClipBundle], list[torch.Tensor], list[str], list[dict]]:
    """Each model's bundle and gallery embeddings, the gallery (every distinct image every model could read)
    and the records whose image is in it."""
    records = read_manifest(data_manifest)
    if not records:
        raise VizError(f"{data_manifest}: no records")
    gallery = list(dict.fromkeys(r["image"] for r in records))
    bundles, embedded = [], []
    readable = set(range(len(gallery)))
    for source in models:
        bundle = load_clip(source, base=base, device=device)
        bundle.model.eval()
        embeddings, ok, _ = embed_image_files(bundle, gallery, batch_size=batch_size)
        readable &= set(ok)
        bundles.append(bundle)
        embedded.append(dict(zip(ok, embeddings)))
    if len(readable) < len(gallery):
        logger.warning("retrieval figure: %d unreadable images left out", len(gallery) - len(readable))
    gallery = [g for i, g in enumerate(gallery) if i in readable]
    image_rows = [torch.stack([e[i] for i in sorted(readable)]) for e in embedded]
    records = [r for r in records if r["image"] in set(gallery)]
    if not records:
        raise VizError(f"{data_manifest}: none of the images could be read")
    return bundles, image_rows, gallery, records


def _rank_texts_to_images(images: torch.Tensor, texts: torch.Tensor, gt: list[int], k: int) -> dict[str, Any]:
    """Each text query's top-k images, their scores and hits, and the ground truth's rank, in goalclip eval's
    order (pessimistic ties) over the whole gallery: the ground truth's rank is its position in it."""
    sims = images @ texts.T
    order = top_k_retrieval(sims, torch.arange(len(images)), torch.tensor(gt), len(images), "t2i")
    ids = order.indices[:, :k]
    return {"topk": ids.tolist(), "scores": sims.T.gather(1, ids).tolist(), "hits": order.hits[:, :k].tolist(),
            "gt_rank": (order.hits.int().argmax(dim=1) + 1).tolist()}


def _rank_images_to_texts(images: torch.Tensor, image_ids: list[int], texts: torch.Tensor, text_image: list[int],
                          k: int) -> dict[str, Any]:
    """Each image query's top-k captions (goalclip eval's order), their scores and hits."""
    sims = images @ texts.T
    top = top_k_retrieval(sims, torch.tensor(image_ids), torch.tensor(text_image), k, "i2t")
    return {"top": top.indices.tolist(), "scores": sims.gather(1, top.indices).tolist(), "hits": top.hits.tolist()}


def _thumbnail(gallery: list[str], index: int) -> Image.Image:
    image = load_rgb(gallery[index])
    image.thumbnail((192, 192))
    return image


def _draw_text_to_image(fig: Any, result: dict[str, Any], query_texts: list[str], query_gt: list[int], k: int,
                        thumb: Any) -> None:
    """One row per text query: the text, its ground-truth image, each model's top-k framed green or red;
    each model's drawn verdicts are read back into ``result["t2i"][name]["frames"]``."""
    names = result["models"]
    cols = 2 + len(names) * k
    fig.suptitle(f"text → image: top-{k} per model (green = ground truth, red = other)", fontsize=10)
    axes = fig.subplots(len(query_texts), cols, squeeze=False, width_ratios=[2.6] + [1.0] * (cols - 1))
    for name in names:
        result["t2i"][name]["frames"] = []
    for q, (text, gt) in enumerate(zip(query_texts, query_gt)):
        text_ax = axes[q, 0]
        text_ax.set_axis_off()
        text_ax.text(0.0, 1.0, textwrap.fill(text, width=58, max_lines=13, placeholder=" …"), va="top", ha="left",
                     fontsize=7, transform=text_ax.transAxes)
        axes[q, 1].imshow(thumb(gt))
        _bare(axes[q, 1])
        axes[q, 1].set_xlabel("ground truth", fontsize=7)
        for m, name in enumerate(names):
            row = result["t2i"][name]
            for j in range(k):
                ax = axes[q, 2 + m * k + j]
                ax.imshow(thumb(row["topk"][q][j]))
                _bare(ax)
                _frame(ax, row["hits"][q][j])
                ax.set_xlabel(f"#{j + 1}  {row['scores'][q][j]:.3f}", fontsize=7)
                if q == 0 and j == 0:
                    ax.set_title(name, fontsize=9, loc="left")
            row["frames"].append([_spine_verdict(axes[q, 2 + m * k + j]) for j in range(k)])
            axes[q, 2 + m * k].set_ylabel(f"gt rank {row['gt_rank'][q]}", fontsize=7)


def _draw_image_to_text(fig: Any, result: dict[str, Any], i2t_images: list[int], caption_texts: list[str],
                        top_captions: int, thumb: Any) -> None:
    """One row per image query: the image and each model's top captions, marked right or wrong."""
    names = result["models"]
    fig.suptitle(f"image → text: top-{top_captions} captions per model (✓ right image, ✗ other)", fontsize=10)
    if not i2t_images:
        return
    axes = fig.subplots(len(i2t_images), 1 + len(names), squeeze=False, width_ratios=[1.0] + [3.2] * len(names))
    for q, image_index in enumerate(i2t_images):
        axes[q, 0].imshow(thumb(image_index))
        _bare(axes[q, 0])
        for m, name in enumerate(names):
            ax = axes[q, 1 + m]
            ax.set_axis_off()
            if q == 0:
                ax.set_title(name, fontsize=9, loc="left")
            row = result["i2t"][name]
            y = 1.0
            for c, hit, score in zip(row["top"][q], row["hits"][q], row["scores"][q]):
                body = textwrap.fill(caption_texts[c], width=70, max_lines=3, placeholder=" …")
                ax.text(0.0, y, f"{'✓' if hit else '✗'} {score:.3f}  {body}", va="top", ha="left", fontsize=6.5,
                        color=HIT_COLOUR if hit else MISS_COLOUR, transform=ax.transAxes)
                y -= 0.34


# ----------------------------------------------------------------------------- mined pairs


def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at ``size`` (matplotlib ships it), else PIL's default font: labels drawn on PIL images."""
    from matplotlib import font_manager

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default(size)


def draw_pair(record: dict[str, Any], *, side: int = PAIR_IMAGE_SIDE) -> tuple[Image.Image, float]:
    """One mined pair as a picture: the image scaled to ``side`` with the box, text underneath.

    Drawn with PIL rather than matplotlib so the box sits at exactly ``scale * box`` pixels
    in the saved PNG (the image is pasted at the top-left corner); returns the picture and
    that scale.
    """
    image = load_rgb(record["image"])
    local = record["local"]
    w, h = image.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    shown = image.resize(size, resample)
    draw = ImageDraw.Draw(shown)
    x1, y1, x2, y2 = (float(v) * scale for v in local["box"])
    x1, y1 = max(0, round(x1)), max(0, round(y1))
    x2, y2 = min(size[0], round(x2)) - 1, min(size[1], round(y2)) - 1
    if x2 > x1 and y2 > y1:
        draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=(0, 0, 0), width=1)
        draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOUR, width=3)

    font, small = label_font(15), label_font(12)
    width = max(size[0], 420)
    chars = max(20, int(width / (0.55 * 15)))
    header = (
        f"{record['id']}   source: {local.get('source', '?')}   score: {float(local.get('score', float('nan'))):.3f}"
    )
    lines = textwrap.wrap(local["sentence"], width=chars)
    box_text = "box: [" + ", ".join(f"{float(v):.0f}" for v in local["box"]) + f"]   image {w}x{h}"
    height = size[1] + 14 + 20 * (1 + len(lines)) + 22
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(shown, (0, 0))
    text = ImageDraw.Draw(canvas)
    y = size[1] + 8
    text.text((8, y), header, fill=(40, 40, 40), font=small)
    y += 20
    for line in lines:
        text.text((8, y), line, fill=(0, 0, 0), font=font)
        y += 20
    text.text((8, y + 2), box_text, fill=(90, 90, 90), font=small)
    return canvas, scale


def plot_pairs(mined_manifest: str | os.PathLike, out_dir: str | os.PathLike, limit: int = 50) -> list[str]:
    """Write one PNG per mined pair (the first ``limit`` records with a ``local`` pair)."""
    records = [r for r in read_manifest(mined_manifest) if r.get("local")]
    if not records:
        raise VizError(f"{mined_manifest}: no records with a mined 'local' pair")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for n, record in enumerate(records[:limit]):
        canvas, _ = draw_pair(record)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", record["id"])[:80]
        path = folder / f"{n:04d}_{safe}.png"
        with atomic_write(path, "wb") as handle:
            canvas.save(handle, format="PNG")
        files.append(str(path))
    logger.info("pairs: %d of %d mined pairs drawn into %s", len(files), len(records), folder)
    return files


def expand_images(items: Sequence[str], limit: int) -> list[str]:
    """Image files given directly, or the images of given folders (sorted), at most ``limit``."""
    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            paths.extend(str(p) for p in sorted(Path(item).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    if not paths:
        raise VizError(f"no images found in {', '.join(items)}")
    return paths[:limit]
