"""Retrieval metrics on a similarity matrix: Recall@K both ways and the global-local joint mAP@K.

Every function takes ``sim`` shaped ``[n_images, n_texts]`` (higher = more similar), as produced
by :func:`similarity` (``image_embeddings @ text_embeddings.T``, or BLIP-2's best query token). Work
is chunked over queries so a COCO-sized matrix (5k images x 25k captions) needs only a few tens of
megabytes of temporaries, and everything stays on ``sim``'s device. Half-precision inputs are
converted to float32 chunk by chunk (exactly: every float16/bfloat16 value is a float32 value);
float64 inputs are rounded to float32, whose resolution (about 1e-7 relative) is far below any
score difference worth ranking by.

Ties are ranked pessimistically: among items with equal scores, irrelevant items rank first.
Ties are common in practice: bfloat16 keeps 8 significant bits, so a bf16 model's cosines take
only a few hundred distinct values in their usual range, and a collapsed model ties everywhere.
Under an arbitrary tie order the numbers depend on the sort implementation and device, and an
optimistic order would let a constant similarity matrix reach 100% Recall@1. Pessimistic ties are
deterministic and never reward a model for failing to separate items. NaN scores have no rank and
are rejected.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from goalclip.evaluation.names import DIRECTIONS, Direction

# Elements of ``sim`` handled per chunk: small enough to stay in cache-friendly sizes on a CPU
# (measured: larger chunks were slower, not faster) and to bound GPU temporaries.
DEFAULT_CHUNK_ELEMENTS = 1 << 20

_INT32_MAGNITUDE_BITS = 0x7FFFFFFF
_MAX_GALLERY = 1 << 31


@dataclass(frozen=True)
class TopK:
    """The first ``min(k, gallery)`` gallery items per query, best first.

    ``indices[q, j]`` is the gallery index at rank ``j + 1`` for query ``q`` (texts for ``"i2t"``,
    images for ``"t2i"``); ``hits[q, j]`` says whether that item is relevant to the query.
    """

    indices: Tensor
    hits: Tensor


def similarity(images: Tensor, texts: Tensor, *, chunk_elements: int = 1 << 26) -> Tensor:
    """``[n_images, n_texts]`` scores of normalised embeddings: ``images @ texts.T``.

    An image row may hold several embeddings of the text width side by side (BLIP-2's query tokens); its score
    for a text is then the highest of their cosines, BLIP-2's image-text contrastive score. Those products are
    taken a block of images at a time (``chunk_elements`` products per block), since all of them at once would
    be 32 times the matrix.
    """
    width = texts.shape[1]
    if images.shape[1] % width:
        raise ValueError(f"image rows of width {images.shape[1]} are not whole embeddings of the text width {width}")
    tokens = images.shape[1] // width
    if tokens == 1:
        return images @ texts.T
    out = torch.empty(images.shape[0], texts.shape[0], dtype=torch.promote_types(images.dtype, texts.dtype),
                      device=images.device)
    rows = _rows_per_chunk(max(1, tokens * texts.shape[0]), chunk_elements)
    for start in range(0, images.shape[0], rows):
        block = images[start : start + rows].reshape(-1, width) @ texts.T
        out[start : start + rows] = block.view(-1, tokens, texts.shape[0]).amax(dim=1)
    return out


def ground_truth_ranks(
    sim: Tensor, text_image: Tensor, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> tuple[Tensor, Tensor]:
    """1-based pessimistic rank of the ground truth for every image query and every text query.

    Returns ``(image_ranks, text_ranks)``, int64, shaped ``[n_images]`` and ``[n_texts]``:

    - ``image_ranks[i]`` = 1 + number of texts *not* captioning image ``i`` scoring ``>=`` the
      best of image ``i``'s captions (an image query is answered by any of its captions);
    - ``text_ranks[t]`` = 1 + number of other images scoring ``>=`` text ``t``'s own image.

    A rank is a count of comparisons, so one pass over ``sim`` gives both directions with no sort:
    a full argsort of a 5k x 25k matrix costs several times more and is not needed for Recall@K.
    """
    _check_sim(sim)
    n_images, n_texts = sim.shape
    text_image = _check_text_image(text_image, n_images, n_texts, sim.device)
    own_score = sim[text_image, torch.arange(n_texts, device=sim.device)].float()
    best_caption = torch.full((n_images,), float("-inf"), device=sim.device).scatter_reduce(
        0, text_image, own_score, reduce="amax"
    )
    # Captions tying with their image's best caption are relevant, so they must not push the
    # image's rank down: the count of scores >= best includes exactly these.
    relevant_at_best = torch.bincount(
        text_image[own_score == best_caption[text_image]], minlength=n_images
    )
    # int32 counts (exact: a gallery is far below 2**31 items) sum bools ~3x faster than int64.
    image_at_least = torch.empty(n_images, dtype=torch.int32, device=sim.device)
    text_at_least = torch.zeros(n_texts, dtype=torch.int32, device=sim.device)
    step = _rows_per_chunk(n_texts, chunk_elements)
    for start in range(0, n_images, step):
        block = _float32_without_nan(sim[start : start + step])
        at_least_best = block >= best_caption[start : start + step, None]
        image_at_least[start : start + step] = at_least_best.sum(1, dtype=torch.int32)
        # The own image is among the images scoring >= its own score, which supplies the "1 +".
        text_at_least += (block >= own_score).sum(0, dtype=torch.int32)
    return image_at_least.long() - relevant_at_best + 1, text_at_least.long()


def recall_at_k(
    sim: Tensor,
    text_image: Tensor,
    ks: Sequence[int],
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, float]:
    """Recall@K in percent, both directions, keys ``"i2t@K"`` then ``"t2i@K"`` for each K in ``ks``.

    ``text_image[t]`` is the index (row of ``sim``) of text ``t``'s image; several texts may share
    an image (COCO and Flickr30k have five captions per image). An image query is a hit at K when
    any of its captions ranks within the top K; a text query when its own image does. Ranks are
    those of :func:`ground_truth_ranks` (pessimistic ties). Every image needs at least one caption,
    otherwise its image->text recall would be undefined: that is a ``ValueError``.
    """
    ks = _check_ks(ks)
    image_ranks, text_ranks = ground_truth_ranks(sim, text_image, chunk_elements=chunk_elements)
    recalls: dict[str, float] = {}
    for direction, ranks in zip(DIRECTIONS, (image_ranks, text_ranks), strict=True):
        for k in ks:
            recalls[f"{direction}@{k}"] = 100.0 * int((ranks <= k).sum()) / ranks.numel()
    return recalls


def top_k_retrieval(
    sim: Tensor,
    image_groups: Tensor,
    text_groups: Tensor,
    k: int,
    direction: Direction,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> TopK:
    """Top-k retrieved gallery items per query in pessimistic tie order, and which are relevant.

    An image and a text are relevant to each other when their groups are equal. For plain
    retrieval pass ``image_groups = torch.arange(n_images)`` and ``text_groups = text_image``;
    for the joint test pass each item's source image id. ``direction="i2t"`` queries with images
    (rows of ``sim``), ``"t2i"`` with texts (columns).

    The order is total and deterministic: score descending, then irrelevant before relevant, then
    lower gallery index first. So with the plain-retrieval groups above, a query's first hit sits
    exactly at its :func:`ground_truth_ranks` rank, and a retrieval grid shows what was counted.
    """
    _check_sim(sim)
    k = _check_ks([k])[0]
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'i2t' or 't2i', got {direction!r}")
    n_images, n_texts = sim.shape
    image_groups = _check_index_vector(
        "image_groups", image_groups, n_images, "one per image", sim.device
    )
    text_groups = _check_index_vector(
        "text_groups", text_groups, n_texts, "one per text", sim.device
    )
    query_groups, gallery_groups = (
        (image_groups, text_groups) if direction == "i2t" else (text_groups, image_groups)
    )
    gallery = gallery_groups.numel()
    if gallery >= _MAX_GALLERY:
        raise ValueError(f"gallery of {gallery} items is too large for the int64 tie-break key")
    keep = min(k, gallery)
    indices, hits = [], []
    for queries, scores in _query_blocks(sim, direction, chunk_elements):
        relevant = query_groups[queries, None] == gallery_groups[None, :]
        top = _pessimistic_order_key(scores, relevant).topk(keep, dim=1).indices
        indices.append(top)
        hits.append(relevant.gather(1, top))
    return TopK(indices=torch.cat(indices), hits=torch.cat(hits))


def joint_average_precisions(
    sim: Tensor,
    image_groups: Tensor,
    text_groups: Tensor,
    k: int = 10,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """AP@k in [0, 1] of every image query and every text query of the global-local joint test.

    The gallery holds global images and their local crops (rows of ``sim``) and global captions
    and their local sentences (columns); each item's group is its source image id, and an image
    item is relevant to every text item of its group and vice versa. For one query with ``R``
    relevant items, ``AP@k = (1 / min(k, R)) * sum_{i <= k} precision@i * rel(i)``, so a query
    whose ``min(k, R)`` relevant items fill the first places scores 1. Ranking uses the
    pessimistic tie order of :func:`top_k_retrieval`. A query with no relevant item has no AP:
    that is a ``ValueError``, since silently scoring it 0 or dropping it would change the mean.

    Returns float64 tensors ``[n_images]`` and ``[n_texts]``; per-query values allow breakdowns
    (global vs local queries) and confidence intervals, :func:`joint_map_at_k` averages them.
    """
    k = _check_ks([k])[0]
    _check_sim(sim)
    n_images, n_texts = sim.shape
    image_groups = _check_index_vector(
        "image_groups", image_groups, n_images, "one per image", sim.device
    )
    text_groups = _check_index_vector(
        "text_groups", text_groups, n_texts, "one per text", sim.device
    )
    group_ids = torch.unique(torch.cat([image_groups, text_groups]), return_inverse=True)[1]
    image_ids, text_ids = group_ids[:n_images], group_ids[n_images:]
    n_groups = int(group_ids.max()) + 1
    n_relevant = (
        torch.bincount(text_ids, minlength=n_groups)[image_ids],
        torch.bincount(image_ids, minlength=n_groups)[text_ids],
    )
    for counts, query, gallery, groups in zip(
        n_relevant, ("image", "text"), ("text", "image"), (image_groups, text_groups), strict=True
    ):
        orphans = (counts == 0).nonzero().flatten()
        if orphans.numel():
            first = int(orphans[0])
            raise ValueError(
                f"{query} item {first} (group {int(groups[first])}) has no {gallery} item in its "
                f"group ({orphans.numel()} such {query} items); its AP would be undefined"
            )
    average_precisions = []
    for direction, counts in zip(DIRECTIONS, n_relevant, strict=True):
        hits = top_k_retrieval(
            sim, image_groups, text_groups, k, direction, chunk_elements=chunk_elements
        ).hits
        precision = hits.cumsum(1) / torch.arange(
            1, hits.shape[1] + 1, device=sim.device, dtype=torch.float64
        )
        average_precisions.append((precision * hits).sum(1) / counts.clamp(max=k))
    return average_precisions[0], average_precisions[1]


def joint_map_at_k(
    sim: Tensor,
    image_groups: Tensor,
    text_groups: Tensor,
    k: int = 10,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, float]:
    """mAP@k in percent both ways for the global-local joint test: ``"i2t_map@k"``, ``"t2i_map@k"``.

    The mean over queries of :func:`joint_average_precisions` (see there for relevance, the AP
    formula, tie order and errors).
    """
    per_query = joint_average_precisions(
        sim, image_groups, text_groups, k, chunk_elements=chunk_elements
    )
    return {
        f"{direction}_map@{k}": 100.0 * float(values.mean())
        for direction, values in zip(DIRECTIONS, per_query, strict=True)
    }


def _pessimistic_order_key(scores: Tensor, relevant: Tensor) -> Tensor:
    """int64 key whose descending order is the pessimistic ranking of each row of ``scores``.

    Bits 63..32 hold the float32 score mapped to a signed integer with the same order, bit 31 is
    set for irrelevant items (they win ties), bits 30..0 hold ``2**31 - 1 - index`` (lower index
    wins the rest). One ``topk`` on this key is then exact; ``topk`` on the floats alone leaves
    the order of ties to the implementation.
    """
    # Adding +0.0 turns -0.0 into +0.0, so the two zeros, equal as floats, get the same key.
    bits = (scores + 0.0).view(torch.int32)
    # Negative floats order backwards by their magnitude bits: flip those bits where the sign is
    # set (an arithmetic shift by 31 gives an all-ones mask exactly there).
    key = (bits ^ ((bits >> 31) & _INT32_MAGNITUDE_BITS)).long()
    tie_break = _MAX_GALLERY - 1 - torch.arange(scores.shape[1], device=scores.device)
    return key.mul_(1 << 32).add_(torch.where(relevant, tie_break, tie_break + (1 << 31)))


def _query_blocks(
    sim: Tensor, direction: Direction, chunk_elements: int
) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(query slice, float32 scores [queries, gallery])`` chunks, queries on dim 0."""
    n_queries, gallery = sim.shape if direction == "i2t" else sim.shape[::-1]
    step = _rows_per_chunk(gallery, chunk_elements)
    for start in range(0, n_queries, step):
        queries = slice(start, min(start + step, n_queries))
        # A contiguous copy of the transposed columns: topk along a strided dim is ~3x slower.
        block = sim[queries] if direction == "i2t" else sim[:, queries].T.contiguous()
        yield queries, _float32_without_nan(block)


def _rows_per_chunk(row_length: int, chunk_elements: int) -> int:
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
    return max(1, chunk_elements // row_length)


def _float32_without_nan(block: Tensor) -> Tensor:
    block = block.float()
    # amax propagates NaN and costs a fraction of a full isnan pass.
    if torch.isnan(block.amax()):
        raise ValueError("sim contains NaN; a NaN score has no rank")
    return block


def _check_sim(sim: Tensor) -> None:
    if not isinstance(sim, Tensor):
        raise TypeError(f"sim must be a torch.Tensor, got {type(sim).__name__}")
    if sim.ndim != 2:
        raise ValueError(f"sim must be 2-D [n_images, n_texts], got shape {tuple(sim.shape)}")
    if not sim.is_floating_point():
        raise TypeError(f"sim must be a floating-point tensor, got {sim.dtype}")
    if sim.numel() == 0:
        raise ValueError(f"sim is empty: shape {tuple(sim.shape)}")


def _check_ks(ks: Sequence[int]) -> list[int]:
    """Plain positive ints (numpy and 0-d tensor integers accepted, bools and floats refused)."""
    if not len(ks):
        raise ValueError("ks is empty")
    checked = []
    for k in ks:
        try:
            value = operator.index(k)
        except TypeError:
            value = 0
        if isinstance(k, bool) or value < 1:
            raise ValueError(f"every k must be a positive int, got {k!r}")
        checked.append(value)
    return checked


def _check_index_vector(
    name: str, values: Tensor, length: int, meaning: str, device: torch.device
) -> Tensor:
    values = torch.as_tensor(values)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {values.dtype}")
    if values.shape != (length,):
        raise ValueError(
            f"{name} must have shape ({length},) ({meaning}), got {tuple(values.shape)}"
        )
    return values.to(device=device, dtype=torch.long)


def _check_text_image(
    text_image: Tensor, n_images: int, n_texts: int, device: torch.device
) -> Tensor:
    text_image = _check_index_vector("text_image", text_image, n_texts, "one per text", device)
    outside = ((text_image < 0) | (text_image >= n_images)).nonzero().flatten()
    if outside.numel():
        first = int(outside[0])
        raise ValueError(
            f"text_image[{first}] = {int(text_image[first])} is out of range for {n_images} images "
            f"({outside.numel()} texts out of range)"
        )
    uncaptioned = (torch.bincount(text_image, minlength=n_images) == 0).nonzero().flatten()
    if uncaptioned.numel():
        raise ValueError(
            f"image {int(uncaptioned[0])} has no caption in text_image ({uncaptioned.numel()} "
            f"images without captions); its image->text recall would be undefined"
        )
    return text_image
