"""Figures comparing models side by side: attention maps and retrieval grids.

- ``attention``: per image, each model's attention (``cls``: the last layer's CLS-to-patch attention,
  mean over heads, over the image; ``patch``: the mean attention each patch receives) with the top-3
  principal components of its last-layer patch tokens as RGB; or (``pca``) the top-3 principal
  components of one layer's self-attention as RGB (FAST-GOAL's Fig. 5). How maps and colours are
  computed and scaled: :mod:`goalclip.viz.maps`.
- ``retrieval``: long-caption queries with each model's top-k images, hits framed green and
  misses red, plus an image-to-text panel with each model's top captions.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from goalclip.core.images import load_rgb
from goalclip.core.manifest import captions_of
from goalclip.core.records import read_manifest
from goalclip.evaluation.metrics import top_k_retrieval
from goalclip.models.clip import ClipBundle, load_clip
from goalclip.models.embed import embed_image_files, embed_text_strings
from goalclip.viz.drawing import VizError, as_images, bare_axes, model_labels, model_view, save_figure, upsample
from goalclip.viz.maps import ATTENTION_KINDS, attention_maps, attention_pca, pca_rgb, shared_pca_clip, vision_layer

logger = logging.getLogger(__name__)

HIT_COLOUR = "#1a9850"
MISS_COLOUR = "#d73027"


ATTENTION_FIGURES = (*ATTENTION_KINDS, "pca")


def _model_maps(source: str, originals: list[Image.Image], kind: str, layer: int, base: str | None, device: str,
                display_size: int) -> tuple[torch.Tensor | None, torch.Tensor, list[Image.Image], int]:
    """One model's panels: the attention overlay (none for ``pca``), PCA z-scores, the model's views of the
    images, and the layer drawn (counted from 0)."""
    bundle = load_clip(source, base=base, device=device, attn_implementation="eager")
    bundle.model.eval()
    vision_layer(bundle.model, layer)  # a layer the tower lacks is refused before any forward
    index = layer % len(bundle.model.vision_model.encoder.layers)
    if kind == "pca":
        attention, z = None, attention_pca(bundle, originals, layer=layer)
    else:
        attention, z = attention_maps(bundle, originals, kind=kind)
    return attention, z, [model_view(im, bundle.image_processor, display_size) for im in originals], index


def _attention_caption(kind: str, layers: list[int], clip: float) -> str:
    where = f"layer {', '.join(map(str, sorted(set(layers))))} (from 0)"
    shared = f"z-scored, |z| clipped at {clip:.2f} (99th percentile shared by all models)"
    if kind == "pca":
        return (f"attention PCA: {where}, each patch's attention over the patches (mean over heads, CLS left out), "
                f"top-3 components of each model's rows as RGB, {shared}")
    return (f"attention: last layer, {ATTENTION_KINDS[kind][0]}, mean over heads, min-max per image, on the model's "
            f"crop\nPCA: top-3 components of each model's last-layer patch tokens, {shared}")


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
    layer: int = -1,
) -> dict[str, Any]:
    """One row per image: the image, then per model its attention overlay (``kind`` cls or patch, see
    :func:`~goalclip.viz.maps.raw_maps`) and patch-token PCA colours, or (``kind="pca"``) the PCA colours of
    ``layer``'s self-attention (FAST-GOAL's Fig. 5)."""
    from matplotlib.figure import Figure

    if not models or not images:
        raise VizError("plot_attention needs at least one model and one image")
    if kind not in ATTENTION_FIGURES:
        raise VizError(f"attention kind must be one of {', '.join(ATTENTION_FIGURES)}, got {kind!r}")
    if kind != "pca" and layer != -1:
        raise VizError(f"layer {layer}: only the pca kind draws a chosen layer ({kind} draws the last)")
    names = model_labels(models, labels)
    originals = as_images(images)
    per_model = [_model_maps(source, originals, kind, layer, base, device, display_size) for source in models]
    clip = shared_pca_clip([z for _, z, _, _ in per_model])

    panels = 1 if kind == "pca" else 2
    rows, cols = len(originals), 1 + panels * len(models)
    fig = Figure(figsize=(2.1 * cols, 2.2 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (path, original) in enumerate(zip(images, originals)):
        axes[r, 0].imshow(original)
        axes[r, 0].set_ylabel(textwrap.shorten(Path(str(path)).name, 22), fontsize=8)
        for m, (name, (attention, z, views, _)) in enumerate(zip(names, per_model)):
            pca_ax = axes[r, panels * (m + 1)]
            if attention is not None:
                overlay_ax = axes[r, 1 + panels * m]
                overlay_ax.imshow(views[r])
                overlay_ax.imshow(upsample(attention[r : r + 1], display_size)[0].numpy(), cmap="inferno", alpha=0.6,
                                  vmin=0.0, vmax=1.0)
                if r == 0:
                    overlay_ax.set_title(f"{name}\n{ATTENTION_KINDS[kind][1]}", fontsize=9)
            pca_ax.imshow(pca_rgb(z[r : r + 1], clip)[0].numpy(), interpolation="nearest")
            if r == 0:
                pca_ax.set_title(f"{name}\n{'attention' if kind == 'pca' else 'patch'} PCA (RGB)", fontsize=9)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=9)
    for ax in axes.flat:
        bare_axes(ax)
    layers = [index for _, _, _, index in per_model]
    width = max(60, int(2.1 * cols * 15))  # characters of 7-point text across the figure
    caption = "\n".join(textwrap.fill(line, width) for line in _attention_caption(kind, layers, clip).splitlines())
    fig.supxlabel(caption, fontsize=7)
    saved = save_figure(fig, out)
    logger.info("attention figure (%s): %d images x %d models -> %s", kind, rows, len(models), saved)
    return {"out": str(saved), "models": names, "images": [str(p) for p in images], "pca_clip": clip,
            "kind": kind, "layer": layers[0] if len(set(layers)) == 1 else layers}


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
    names = model_labels(models, labels)
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
    saved = save_figure(fig, out, dpi=100)
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
        bare_axes(axes[q, 1])
        axes[q, 1].set_xlabel("ground truth", fontsize=7)
        for m, name in enumerate(names):
            row = result["t2i"][name]
            for j in range(k):
                ax = axes[q, 2 + m * k + j]
                ax.imshow(thumb(row["topk"][q][j]))
                bare_axes(ax)
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
        bare_axes(axes[q, 0])
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
