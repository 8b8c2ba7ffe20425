"""CLIP embeddings of texts and images: the one place mining, evaluation, search and viz get them.

Evaluation also encodes open_clip models (``models/open_clip.py``) and BLIP-2 retrieval checkpoints
(``models/blip2.py``) through the same functions: a bundle is a ``ClipBundle``, an ``OpenClipBundle`` or a
``Blip2Bundle`` (``load_encoder`` picks), and only the tokenizer call and the two tower calls differ between
them: the last two tokenize themselves and their models answer ``encode_text`` / ``encode_image``.

The names say what each function takes: ``embed_token_ids`` (one tokenised batch) and
``embed_pixels`` (one pixel batch) run one forward of a model; ``embed_text_strings`` (and
``embed_text_strings_counted``, which also counts the texts cut at the context) and
``embed_image_files`` take a bundle and many strings or image paths, and batch them.

Every embedding goes through ``embed_token_ids`` / ``embed_pixels``, which also refuse non-finite
results: a model with a NaN weight would otherwise mine "pairs" that are all sentence 0 and
box 0, rank search results by NaN, and report recalls computed from garbage.

It also says what the model sees of an image (``crop_geometry``, ``model_view_box``): CLIP
image processors resize the shortest edge and centre-crop, which training's box masks and
viz overlays both need to follow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import BatchEncoding

from goalclip.core.images import PixelBatches
from goalclip.core.text import clean_text
from goalclip.models.backbone import KINDS, backbone_for
from goalclip.models.blip2 import Blip2Bundle, is_blip2, load_blip2
from goalclip.models.clip import ClipBundle, load_clip
from goalclip.models.open_clip import OpenClipBundle, is_open_clip, load_open_clip

logger = logging.getLogger(__name__)


class NonFiniteEmbeddingError(ValueError):
    """A model produced NaN or infinite embeddings; the message names the model."""


Bundle = ClipBundle | OpenClipBundle | Blip2Bundle


def load_encoder(source: str, *, base: str | None = None, device: str | torch.device = "cpu") -> Bundle:
    """What evaluation encodes with: an open_clip model for an ``open_clip:`` spec, a BLIP-2 retrieval model
    for a checkpoint of that type, else ``load_clip``."""
    if is_open_clip(source):
        return load_open_clip(source, device=device)
    if is_blip2(source):
        return load_blip2(source, device=device)
    return load_clip(source, base=base, device=device)


def model_device(bundle: Bundle) -> tuple[torch.device, torch.dtype]:
    """The device and dtype that inputs must be moved to for ``bundle.model``."""
    param = next(bundle.model.parameters())
    return param.device, param.dtype


# ----------------------------------------------------------------------------- texts


def tokenize(bundle: Bundle, texts: Sequence[str], max_len: int | None = None) -> Mapping[str, torch.Tensor]:
    """Clean and tokenise texts, padded to the longest in the batch and truncated to the context.

    CLIP's text attention is causal, so right padding never changes the real tokens' states:
    padding to the batch's longest (not to 248) is exact and much cheaper for short sentences.
    SigLIP's is not and it pools the last position, so its texts pad to the model's full context, as
    it was trained (also when ``max_len`` cuts them shorter).
    An open_clip or BLIP-2 model gets its own tokenizer's ids (``OpenClipBundle.tokenize``, ``Blip2Bundle.tokenize``).
    """
    return tokenize_counted(bundle, texts, max_len)[0]


def tokenize_counted(
    bundle: Bundle, texts: Sequence[str], max_len: int | None = None, *, cleaned: bool = False
) -> tuple[Mapping[str, torch.Tensor], int]:
    """:func:`tokenize` and how many texts it cut, from one tokenizer pass (counting separately
    cleaned and tokenised every text a second time: 2-4% of a demo-sized mining batch).
    ``cleaned``: the texts already went through ``clean_text`` (mining's sentences), skip it.

    Texts are tokenised in full, then a row past ``max_len`` keeps its first ``max_len - 1`` tokens
    and ends in EOS: exactly the tokenizer's own right truncation of CLIP's BOS + text + EOS.
    """
    if not isinstance(bundle, ClipBundle):  # open_clip, BLIP-2: their own tokenizer call
        texts = list(texts)
        lengths = bundle.token_lengths(texts)
        return bundle.tokenize(texts, max_len), sum(n > (max_len or bundle.max_text_len) for n in lengths)
    max_len = max_len or bundle.max_text_len
    tokenizer = bundle.tokenizer
    texts = list(texts) if cleaned else [clean_text(t) for t in texts]
    tokens = tokenizer(texts, padding="longest", verbose=False, return_tensors="pt", return_attention_mask=True)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    cut = mask.sum(dim=1) > max_len
    if ids.shape[1] > max_len:
        if tokenizer.padding_side != "right" or tokenizer.truncation_side != "right":
            raise ValueError(f"tokenizer pads/truncates on the {tokenizer.padding_side}/{tokenizer.truncation_side}; "
                             "CLIP tokenizers work on the right")
        ids, mask = ids[:, :max_len].clone(), mask[:, :max_len].contiguous()
        ids[cut, -1] = tokenizer.eos_token_id
    context = bundle.max_text_len
    if bundle.backbone.pads_to_context and ids.shape[1] < context:  # also a text cut shorter (--max-text-len)
        ids = F.pad(ids, (0, context - ids.shape[1]), value=tokenizer.pad_token_id)
        mask = F.pad(mask, (0, context - mask.shape[1]), value=0)
    return BatchEncoding({"input_ids": ids, "attention_mask": mask}), int(cut.sum())


def count_truncated(bundle: Bundle, texts: Sequence[str], max_len: int | None = None) -> int:
    """How many texts are longer than the context (they would be cut)."""
    max_len = max_len or bundle.max_text_len
    if not isinstance(bundle, ClipBundle):
        return sum(length > max_len for length in bundle.token_lengths(list(texts)))
    lengths = bundle.tokenizer([clean_text(t) for t in texts], truncation=False, verbose=False)["input_ids"]
    return sum(len(ids) > max_len for ids in lengths)


def _finite(model: torch.nn.Module, embeds: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(embeds).all():
        name = getattr(model, "name_or_path", None) or type(model).__name__
        raise NonFiniteEmbeddingError(
            f"model {name} produces non-finite (NaN or infinite) {what} embeddings; its weights are broken"
        )
    return embeds


@torch.no_grad()
def embed_token_ids(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L2-normalised text embeddings for one tokenised batch (a CLIP/SigLIP, open_clip or BLIP-2 model)."""
    if isinstance(model, tuple(KINDS.values())):
        embeds, _ = backbone_for(model).text(input_ids, attention_mask)
    else:  # open_clip, BLIP-2: their ids carry their own padding, which their encoders know; no mask
        embeds = model.encode_text(input_ids)
    return _finite(model, F.normalize(embeds.float(), dim=-1), "text")


@torch.no_grad()
def embed_pixels(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings for one pixel batch (a CLIP/SigLIP, open_clip or BLIP-2 model).

    A BLIP-2 image is one embedding per query token: each is normalised and a row holds them side by side
    (``[N, queries * D]``), which ``evaluation.metrics.similarity`` scores by the best of them.
    """
    if isinstance(model, tuple(KINDS.values())):
        embeds, _ = backbone_for(model).image(pixel_values)
    else:
        embeds = model.encode_image(pixel_values)
    return _finite(model, F.normalize(embeds.float(), dim=-1).flatten(1), "image")


def embed_text_strings(
    bundle: Bundle,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_len: int | None = None,
    progress: bool = False,
    desc: str = "texts",
    warn_truncated: bool = False,
) -> torch.Tensor:
    """L2-normalised float32 embeddings of many texts, in input order, on the model's device.

    Texts are batched longest first so each batch pads little (``tokenize`` pads to the
    batch's longest). Texts past the context lose their tail; with ``warn_truncated`` one
    warning says how many (search queries), otherwise callers count them with
    :func:`embed_text_strings_counted` (evaluation sums the count over processes).
    """
    out, cut = embed_text_strings_counted(bundle, texts, batch_size=batch_size, max_len=max_len, progress=progress,
                                          desc=desc)
    if warn_truncated and cut:
        logger.warning(
            "%d of %d %s are longer than the model's %d-token context and were truncated",
            cut,
            len(texts),
            desc,
            max_len or bundle.max_text_len,
        )
    return out


def embed_text_strings_counted(
    bundle: Bundle,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_len: int | None = None,
    progress: bool = False,
    desc: str = "texts",
    cleaned: bool = False,
) -> tuple[torch.Tensor, int]:
    """:func:`embed_text_strings` and how many texts were longer than the context, tokenising each text once
    (``cleaned``: the texts are ``clean_text`` output already)."""
    from tqdm.auto import tqdm

    device, _ = model_device(bundle)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out = torch.empty(len(texts), bundle.embed_dim, device=device)
    truncated = 0
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = order[start : start + batch_size]
        tokens, cut = tokenize_counted(bundle, [texts[i] for i in chunk], max_len, cleaned=cleaned)
        truncated += cut
        rows = torch.tensor(chunk, device=device)
        mask = tokens.get("attention_mask")  # open_clip ids carry no mask
        out[rows] = embed_token_ids(bundle.model, tokens["input_ids"].to(device),
                                    None if mask is None else mask.to(device))
    return out, truncated


# ----------------------------------------------------------------------------- images


def embed_image_files(
    bundle: Bundle,
    paths: Sequence[str],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Embed image files; returns ``(embeddings [n_ok, D] on CPU, ok indices, failures)``.

    Unreadable files are logged and returned as ``(index, message)`` rather than raised, so
    one corrupt photo does not stop a whole folder from being indexed.
    """
    device, dtype = model_device(bundle)
    batches = PixelBatches(
        paths, bundle.image_processor, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    chunks: list[torch.Tensor] = []
    ok: list[int] = []
    for indices, pixels in batches:
        chunks.append(embed_pixels(bundle.model, pixels.to(device=device, dtype=dtype)).cpu())
        ok.extend(indices.tolist())
    embeddings = torch.cat(chunks) if chunks else torch.empty(0, bundle.embed_dim)
    return embeddings, ok, list(batches.failed)


# ----------------------------------------------------------------------------- what the model sees


def size_fields(value: Any) -> dict[str, int | None]:
    """An image processor's ``size``/``crop_size`` as a dict, whatever form this transformers gives it.

    Older processors store an int or a plain dict; transformers 5 stores a ``SizeDict``.
    """
    if isinstance(value, int):
        return {"shortest_edge": value}
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return dict(value.items())
    return {k: getattr(value, k, None) for k in ("shortest_edge", "height", "width")}


def crop_geometry(processor: Any, width: int, height: int) -> tuple[float, float, float, float, int, int]:
    """How the image processor maps original pixels to model input: ``(sx, sy, ox, oy, cw, ch)``.

    Input coordinate = original * scale - offset, for a ``cw x ch`` model input. Covers CLIP's
    shortest-edge resize followed by a centre crop, and fixed height/width resizes.
    """
    size = size_fields(getattr(processor, "size", None) or {})
    if getattr(processor, "do_resize", True) and size.get("shortest_edge"):
        sx = sy = size["shortest_edge"] / min(width, height)
    elif getattr(processor, "do_resize", True) and size.get("height") and size.get("width"):
        sx, sy = size["width"] / width, size["height"] / height
    else:
        sx = sy = 1.0
    new_w, new_h = width * sx, height * sy
    if getattr(processor, "do_center_crop", False):
        crop = size_fields(processor.crop_size)
        cw, ch = int(crop["width"]), int(crop["height"])
    else:
        cw, ch = round(new_w), round(new_h)
    return sx, sy, (new_w - cw) / 2, (new_h - ch) / 2, cw, ch


def model_view_box(image_size: tuple[int, int], processor: Any) -> tuple[float, float, float, float]:
    """The region ``(x1, y1, x2, y2)`` of an original ``(w, h)`` image that the model sees.

    A non-square photo loses its sides to the centre crop; overlays are drawn on this region
    so that a patch cell lands on the pixels it saw.
    """
    w, h = image_size
    if not getattr(processor, "do_center_crop", False):
        return 0.0, 0.0, float(w), float(h)
    sx, sy, ox, oy, cw, ch = crop_geometry(processor, w, h)
    return max(0.0, ox / sx), max(0.0, oy / sy), min(float(w), (ox + cw) / sx), min(float(h), (oy + ch) / sy)
