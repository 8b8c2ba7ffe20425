"""Training losses for GOAL: CLIP InfoNCE and SigLIP's sigmoid loss with cross-process negatives, and TSL.

Every loss here takes embeddings, never batches or models, so the trainer owns the forward pass
(one per tower over ``[global ; local]``) and these functions own only the maths and the
cross-process bookkeeping.

Distributed contract: under ``torch.distributed`` (DDP, as set up by ``accelerate launch``) each
process calls these functions on its own shard of the batch. The per-process losses are scaled so
that (a) their mean over processes equals the loss one process would compute on the whole global
batch, and (b) after DDP averages gradients over processes, the gradients equal that single-process
gradient. That is what makes a run on N devices with batch b per device the same optimisation
problem as one device with batch N*b, including when the last batch is split unevenly.
Consequences for callers: every process must call each loss (same order, same ``gather`` flag),
and one process's returned value is its share, not the global loss: average it over processes
(e.g. ``accelerator.reduce(loss, "mean")``) before logging it as the batch loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from goalclip.models.backbone import masked_mean
from goalclip.training.config import LOCAL_PAIR_LOSSES, METHOD_TERMS, TSL_TARGETS, LossTerms, LossWeights

__all__ = [
    "METHOD_TERMS",
    "LossWeights",
    "combine_losses",
    "contrastive_loss",
    "local_pair_loss",
    "masked_mean",
    "sigmoid_loss",
    "tsl_loss",
]


def _dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_sizes(x: Tensor, world: int) -> list[int]:
    """Every process's leading dimension, so shards of different lengths can be gathered."""
    local = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    # A host read (a device sync under NCCL) per gathered tensor: the receive buffers of the gather that
    # follows are allocated from these sizes, so they must be known on the host first.
    return [int(s.item()) for s in sizes]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward routes every process's gradient back to its owner.

    Forward pads each shard to the largest one (``all_gather`` needs equal shapes), gathers, and
    strips the padding. Backward: every process holds d(its loss)/d(gathered); summing those over
    processes gives d(sum of losses)/d(gathered), of which this process owns its own slice. The sum
    uses ``all_reduce`` because it is the one collective that gloo and NCCL both support
    (``reduce_scatter`` is missing on gloo).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank: int) -> Tensor:
        longest = max(sizes)
        padded = x
        if x.shape[0] < longest:
            padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
        padded = padded.contiguous()
        shards = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(shards, padded)
        ctx.sizes = sizes
        ctx.rank = rank
        return torch.cat([shard[:n] for shard, n in zip(shards, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None, None


def _gather(x: Tensor, sizes: list[int], rank: int) -> Tensor:
    return _GatherWithGrad.apply(x, sizes, rank)


def _global_sum(x: Tensor, gather: bool, world: int) -> Tensor:
    """Sum of a (detached) count or weight vector over the whole global batch."""
    total = x.detach().sum()
    if gather and world > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def _global_groups(groups: Tensor, rank: int, world: int) -> Tensor:
    """Image ids unique over processes (process-local ids interleaved by rank)."""
    return groups.to(torch.long) * world + rank


def _same_group_off_diagonal(row_groups: Tensor, column_groups: Tensor, labels: Tensor) -> Tensor:
    """[b, N] True where column j is another pair of row i's own image (never i's own column)."""
    same = row_groups.unsqueeze(1) == column_groups.unsqueeze(0)
    same[torch.arange(len(labels), device=labels.device), labels] = False
    return same


def _normalized_pairs(image_emb: Tensor, text_emb: Tensor) -> tuple[Tensor, Tensor]:
    """Both [b, D] embeddings L2-normalised (idempotent), or a ValueError naming the shapes."""
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(
            f"image_emb and text_emb must both be [b, D]; got {tuple(image_emb.shape)} "
            f"and {tuple(text_emb.shape)}"
        )
    return F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)


def contrastive_loss(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, gather: bool = True, weights: Tensor | None = None,
    groups: Tensor | None = None,
) -> Tensor:
    """Symmetric CLIP InfoNCE between paired rows of ``image_emb`` [b, D] and ``text_emb`` [b, D].

    Embeddings are L2-normalised here (normalising is idempotent, so already-normalised inputs are
    fine); callers need not remember to. ``logit_scale`` is the already exponentiated temperature
    (CLIP's ``logit_scale.exp()``), a tensor so its gradient flows; logits are
    ``logit_scale * img @ txt.T``. The loss is the mean of the image->text and text->image
    cross-entropies with the matching pair as the target.

    With ``gather`` and several processes, this process's rows are scored against the columns of
    the whole global batch (negatives from every process), target ``offset + arange(b)`` where the
    offset counts the rows of lower ranks. The sum of row losses is divided by the global batch size
    and multiplied by the world size, so the mean of the per-process losses is the global-batch
    loss and DDP's gradient averaging yields the global-batch gradient, for equal or unequal
    per-process batch sizes. Without ``gather`` each process sees only its own negatives (the
    cheaper, different objective).

    ``weights`` [b] (top-k local pairs) weight each pair's two row losses: the loss is
    ``sum_p w_p (CE_i2t[p] + CE_t2i[p]) / (2 * sum_p w_p)``, sums over the global batch, with every
    pair's row still scored against all columns. ``None`` is every weight 1 (today's mean).

    ``groups`` [b] (several local pairs per image: each pair's image) leaves the other pairs of a
    row's own image out of its negatives: crops and sentences of one image are never pushed apart.
    """
    image_emb, text_emb = _normalized_pairs(image_emb, text_emb)
    rank, world = _dist_rank_world()
    if gather and world > 1:
        sizes = _gather_sizes(image_emb, world)
        all_images = _gather(image_emb, sizes, rank)
        all_texts = _gather(text_emb, sizes, rank)
        offset, total = sum(sizes[:rank]), sum(sizes)
    else:
        all_images, all_texts = image_emb, text_emb
        offset, total, world = 0, image_emb.shape[0], 1
    labels = torch.arange(image_emb.shape[0], device=image_emb.device) + offset
    logits_per_image = logit_scale * image_emb @ all_texts.T
    logits_per_text = logit_scale * text_emb @ all_images.T
    if groups is not None:
        row_groups = _global_groups(groups.to(image_emb.device), rank, world)
        column_groups = _gather(row_groups, sizes, rank) if world > 1 else row_groups
        same = _same_group_off_diagonal(row_groups, column_groups, labels)
        logits_per_image = logits_per_image.masked_fill(same, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(same, float("-inf"))
    if weights is not None:
        rows = F.cross_entropy(logits_per_image, labels, reduction="none") + F.cross_entropy(
            logits_per_text, labels, reduction="none"
        )
        weights = weights.to(device=rows.device, dtype=torch.float32)
        denominator = _global_sum(weights, gather, world).clamp(min=torch.finfo(torch.float32).tiny)
        return (weights * rows).sum() * world / (2 * denominator)
    summed = F.cross_entropy(logits_per_image, labels, reduction="sum") + F.cross_entropy(
        logits_per_text, labels, reduction="sum"
    )
    return summed * world / (2 * max(total, 1))


def local_pair_loss(
    crops: Tensor, sentences: Tensor, logit_scale: Tensor, owner: Tensor | None, weights: Tensor | None,
    reading: str = "best", gather: bool = True, contrast: Callable[..., Tensor] = contrastive_loss,
) -> Tensor:
    """L_local over a batch's packed local pairs (``owner`` [P]: each pair's image, pairs of an
    image adjacent and best first; None: one pair per image).

    ``best`` (FAST-GOAL's text: top-k pairs and their weights enter TSL only): the InfoNCE of each
    image's best pair, every image weight 1, as a one-pair run. ``all``: every pair, weighted by
    ``weights``, with the other pairs of a pair's own image left out of its negatives. ``contrast`` is
    the pair loss: CLIP's :func:`contrastive_loss` or SigLIP's :func:`sigmoid_loss` (bias bound).
    """
    if owner is None:
        return contrast(crops, sentences, logit_scale, gather=gather, weights=weights)
    if reading == "best":
        first = torch.ones_like(owner, dtype=torch.bool)
        first[1:] = owner[1:] != owner[:-1]
        return contrast(crops[first], sentences[first], logit_scale, gather=gather)
    if reading != "all":
        raise ValueError(f"local pair loss must be one of {', '.join(LOCAL_PAIR_LOSSES)}, got {reading!r}")
    return contrast(crops, sentences, logit_scale, gather=gather, weights=weights, groups=owner)


def sigmoid_loss(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, logit_bias: Tensor, gather: bool = True,
    weights: Tensor | None = None, groups: Tensor | None = None,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss between paired rows of ``image_emb`` [b, D] and ``text_emb`` [b, D].

    Logits are ``logit_scale * img @ txt.T + logit_bias`` (``logit_scale`` already exponentiated, both
    tensors so their gradients flow); every image-text cell of the global batch is a binary
    classification, positive on the diagonal: the loss is ``-sum_ij log sigmoid(z_ij * logit_ij)`` over
    all cells (``z`` = +1 for a pair, -1 otherwise) divided by the number of images, as SigLIP trains.

    With ``gather`` and several processes, this process's images are scored against the texts of the
    whole global batch (gathered with their gradient), so every cell, positive or negative, is counted
    exactly once over all processes; the sum is divided by the global batch size and multiplied by the
    world size, so the mean of the per-process losses is the global-batch loss and DDP's gradient
    averaging yields the global-batch gradient (as :func:`contrastive_loss`). Big_vision's chunked
    ring exchange computes the same sum with less memory; one all-gather is simpler at GOAL's batch sizes.

    ``weights`` [b] (top-k local pairs) weight each image's row of cells:
    ``sum_i w_i sum_j loss_ij / sum_i w_i``. ``None`` is every weight 1.

    ``groups`` [b] (several local pairs per image: each pair's image) leaves the cells of a row's other
    same-image pairs out of the sum: they are neither positives nor negatives.
    """
    image_emb, text_emb = _normalized_pairs(image_emb, text_emb)
    rank, world = _dist_rank_world()
    if gather and world > 1:
        sizes = _gather_sizes(image_emb, world)
        all_texts = _gather(text_emb, sizes, rank)
        offset = sum(sizes[:rank])
    else:
        all_texts, offset, world = text_emb, 0, 1
    logits = logit_scale * image_emb @ all_texts.T + logit_bias
    signs = -torch.ones_like(logits)
    rows = torch.arange(image_emb.shape[0], device=logits.device)
    signs[rows, rows + offset] = 1.0
    cell_losses = -F.logsigmoid(signs * logits)
    if groups is not None:
        row_groups = _global_groups(groups.to(logits.device), rank, world)
        column_groups = _gather(row_groups, sizes, rank) if world > 1 else row_groups
        cell_losses = cell_losses.masked_fill(_same_group_off_diagonal(row_groups, column_groups, rows + offset), 0.0)
    row_losses = cell_losses.sum(dim=1)
    if weights is None:
        weights = torch.ones_like(row_losses)
    weights = weights.to(device=row_losses.device, dtype=torch.float32)
    denominator = _global_sum(weights, gather, world).clamp(min=torch.finfo(torch.float32).tiny)
    return (weights * row_losses).sum() * world / denominator


def tsl_loss(
    pooled: Tensor, target: Tensor, valid: Tensor, gather: bool = True, weights: Tensor | None = None,
    tsl_target: str = "diagonal", groups: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-similarity term: pull pooled global-token features onto their local embedding.

    ``pooled`` [b, D] are the projected pooled token features of the global item (e.g. the mean of
    the global image's patch tokens inside the box, after the final norm and the projection; or the
    global caption's token states over the sentence span), ``target`` [b, D] the local embedding
    (crop or sentence). Per row: cosine ``c``; loss = mean over valid rows of ``(c - 1)**2``.

    Rows with ``valid`` False (unusable box, sentence span past the context) are masked, not faked:
    their inputs are replaced before any arithmetic, so they add nothing to the loss and receive
    exactly zero gradient even if they hold garbage. With no valid row the loss is 0 but still
    attached to the inputs' graph, so DDP's backward sees every parameter on every process.

    With ``gather`` and several processes, the denominator is the number of valid rows in the
    global batch (one integer ``all_reduce``) and the loss is multiplied by the world size, so the
    mean over processes and DDP-averaged gradients match one process on the global batch.

    ``weights`` [b] (top-k local pairs) make it a weighted mean over the valid rows:
    ``sum_valid w (c - 1)**2 / sum_valid w``. ``None`` is every weight 1.

    ``tsl_target="identity"`` is GOAL's Eq. 14 as written: row i's term is the mean, over the valid
    columns j (of the gathered batch), of ``(cos(pooled_i, target_j) - [i == j])**2``, so pooled
    features are also pushed away from the other rows' local embeddings; ``groups`` [b] (each
    pair's image) leaves a row's other same-image pairs out. The default ``"diagonal"`` is the
    authors' code: only ``i == j``.

    Returns ``(loss, cosines)``: cosines [b] are detached, for logging, with NaN in invalid rows so
    a careless ``mean()`` shows up instead of silently mixing in masked rows; log
    ``cosines[valid].mean()`` or ``cosines.nanmean()``.
    """
    if pooled.shape != target.shape or pooled.dim() != 2:
        raise ValueError(
            f"pooled and target must both be [b, D]; got {tuple(pooled.shape)} "
            f"and {tuple(target.shape)}"
        )
    if valid.shape != pooled.shape[:1]:
        raise ValueError(f"valid must be [b] = {tuple(pooled.shape[:1])}; got {tuple(valid.shape)}")
    valid = valid.to(device=pooled.device, dtype=torch.bool)
    keep = valid.unsqueeze(-1)
    pooled = torch.where(keep, pooled, torch.zeros_like(pooled))
    target = torch.where(keep, target, torch.zeros_like(target))
    cosines = (F.normalize(pooled, dim=-1) * F.normalize(target, dim=-1)).sum(-1)
    if tsl_target == "identity":
        errors = _identity_errors(F.normalize(pooled, dim=-1), F.normalize(target, dim=-1), valid, gather, groups)
    elif tsl_target == "diagonal":
        errors = (cosines - 1.0) ** 2
    else:
        raise ValueError(f"tsl_target must be one of {', '.join(TSL_TARGETS)}, got {tsl_target!r}")
    squared = torch.where(valid, errors, torch.zeros_like(cosines))
    logged = torch.where(valid, cosines, torch.full_like(cosines, float("nan"))).detach()
    if weights is not None:
        weights = torch.where(valid, weights.to(device=pooled.device, dtype=torch.float32), 0.0)
        _, world = _dist_rank_world()
        world = world if gather else 1
        denominator = _global_sum(weights, gather, world).clamp(min=torch.finfo(torch.float32).tiny)
        return (weights * squared).sum() * world / denominator, logged
    count = valid.sum()
    _, world = _dist_rank_world()
    if gather and world > 1:
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
    else:
        world = 1
    loss = squared.sum() * world / count.clamp(min=1).to(squared.dtype)
    return loss, logged


def _identity_errors(pooled: Tensor, target: Tensor, valid: Tensor, gather: bool, groups: Tensor | None) -> Tensor:
    """Per row i: mean over usable columns j of ``(pooled_i . target_j - [i == j])**2`` (unit-norm inputs).

    Columns are the targets of the gathered batch (with their gradients); invalid columns and,
    with ``groups``, the row's other same-image pairs are not used."""
    rank, world = _dist_rank_world()
    rows = torch.arange(pooled.shape[0], device=pooled.device)
    groups = rows if groups is None else groups.to(pooled.device)
    row_groups = _global_groups(groups, rank, world if gather else 1)
    usable = valid.to(torch.long)
    if gather and world > 1:
        sizes = _gather_sizes(target, world)
        columns, usable = _gather(target, sizes, rank), _gather(usable, sizes, rank)
        column_groups, offset = _gather(row_groups, sizes, rank), sum(sizes[:rank])
    else:
        columns, column_groups, offset = target, row_groups, 0
    labels = rows + offset
    use = usable.bool().unsqueeze(0) & ~_same_group_off_diagonal(row_groups, column_groups, labels)
    identity = torch.zeros_like(use, dtype=pooled.dtype)
    identity[rows, labels] = 1.0
    errors = torch.where(use, (pooled @ columns.T - identity) ** 2, 0.0)
    return errors.sum(1) / use.sum(1).clamp(min=1).to(errors.dtype)


def combine_losses(terms: dict[str, Tensor], method: str | LossTerms, weights: LossWeights) -> Tensor:
    """Weighted sum of the terms ``method`` enables.

    ``terms`` keys: ``"global"``, ``"local"``, ``"tsl_image"``, ``"tsl_text"``; only the keys the
    method needs must be present (a ``global``-only run need not compute local or TSL terms). The
    TSL term is ``tsl_image + tsl_text``, each weighted by ``weights.tsl``. A single-term method
    returns its term unweighted (see :class:`LossWeights`).
    """
    on = method if isinstance(method, LossTerms) else LossTerms.of(method)
    needed = on.keys
    missing = [key for key in needed if key not in terms]
    if missing:
        raise ValueError(f"method {method!r} needs loss terms {list(needed)}; missing {missing}")
    if len(needed) == 1:
        return terms[needed[0]]
    total = weights.weight(needed[0]) * terms[needed[0]]
    for key in needed[1:]:
        total = total + weights.weight(key) * terms[key]
    return total
