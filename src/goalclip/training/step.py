"""One training step: encode a batch (one vision forward over ``[global ; crops]``, each text once), then the loss.

The step runs the vision tower once over ``[global images ; crops]`` and encodes each text
input once (captions, and sentences padded to their own short length); TSL pools the global
tokens with the batch's precomputed span/patch masks. Under ``accelerate launch`` the
contrastive logits use embeddings gathered from every process (:mod:`~goalclip.training.losses`),
so N processes with batch b train exactly like one process with batch N*b.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from transformers import CLIPModel, SiglipModel

from goalclip.models.backbone import backbone_for, clamp_temperature
from goalclip.training.config import LossOptions, LossTerms, LossWeights
from goalclip.training.gradcache import Chunk, plan_chunks
from goalclip.training.heads import TslHeads
from goalclip.training.objective import GoalLoss


class StepOutput(NamedTuple):
    """A step's loss and detached scalars for logging (tensors: converting them every step would sync)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]


def whole_batch(batch: dict[str, torch.Tensor], terms: LossTerms) -> Chunk:
    """The rows a plain step encodes: every row of each stream ``terms`` needs (one chunk, no planning)."""
    pairs = batch["sentence_ids"].shape[0] if "sentence_ids" in batch else 0
    every_pair = slice(0, pairs) if pairs else None
    captions = terms.needs_captions
    return Chunk(images=slice(0, batch["pixel_values"].shape[0]), image_pairs=every_pair,
                 captions=slice(0, batch["caption_ids"].shape[0]) if captions else None,
                 caption_pairs=every_pair if captions else None,
                 sentences=every_pair if terms.needs_local else None)


def encode(model: CLIPModel | SiglipModel, batch: dict[str, torch.Tensor], terms: LossTerms,
           chunk: Chunk) -> dict[str, torch.Tensor]:
    """The per-example tensors the loss consumes, for the rows of ``chunk`` (a plain step: the whole batch).

    ``image``: projected embeddings of the ``[global ; crops]`` rows (one vision forward), ``caption`` and
    ``sentence`` those of the texts (each encoded once); for TSL, ``patches`` / ``span``: each local pair's
    pooling of its own image's patch tokens / caption token states (the backbone's ``pool_patches`` /
    ``pool_text``), before the projection the loss applies.
    """
    backbone = backbone_for(model)
    reps: dict[str, torch.Tensor] = {}
    if chunk.images is not None:
        reps["image"], patch_tokens = backbone.image(batch["pixel_values"][chunk.images])
        if terms.tsl and chunk.image_pairs is not None:
            reps["patches"] = _pool_pairs(backbone.pool_patches, patch_tokens, chunk.images, chunk.image_pairs,
                                          batch, "patch_mask")
    if chunk.captions is not None:
        rows = chunk.captions
        reps["caption"], states = backbone.text(batch["caption_ids"][rows], batch["caption_mask"][rows],
                                                token_states=terms.tsl)
        if terms.tsl and chunk.caption_pairs is not None:
            reps["span"] = _pool_pairs(backbone.pool_text, states, rows, chunk.caption_pairs, batch, "span_mask")
    if chunk.sentences is not None:
        rows = chunk.sentences
        reps["sentence"], _ = backbone.text(batch["sentence_ids"][rows], batch["sentence_mask"][rows])
    return reps


def _pool_pairs(pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], states: torch.Tensor, rows: slice,
                pairs: slice, batch: dict[str, torch.Tensor], mask: str) -> torch.Tensor:
    """Each pair's pooling of its own item's token states; ``states`` holds the items of ``rows``."""
    if "pair_owner" in batch:  # several pairs per image
        tokens = states[batch["pair_owner"][pairs] - rows.start]
    else:  # pair p belongs to item p
        tokens = states[pairs.start - rows.start : pairs.stop - rows.start]
    return pool(tokens, batch[mask][pairs])


class _StepParts(torch.nn.Module):
    """The trained modules (``clip``, optional ``heads``: the parameter names checkpoints hold) and the objective.

    The whole step is one ``forward`` of a subclass, so DDP prepares and syncs as usual (calling
    submodules of a DDP-wrapped model directly would skip its forward bookkeeping).
    """

    def __init__(self, clip: CLIPModel | SiglipModel, method: str, weights: LossWeights,
                 heads: TslHeads | None = None, options: LossOptions = LossOptions()):
        super().__init__()
        self.clip = clip
        self.heads = heads
        self.method, self.weights = method, weights
        self.terms = LossTerms.of(method)
        projections = heads if heads is not None else backbone_for(clip)
        project_patches, project_text = projections.project_patches, projections.project_text
        hidden = (clip.config.vision_config.hidden_size, clip.config.text_config.hidden_size)
        self.objective = GoalLoss(self.terms, weights, project_patches, project_text, hidden, options)

    def encode(self, batch: dict[str, torch.Tensor], chunk: Chunk) -> dict[str, torch.Tensor]:
        return encode(self.clip, batch, self.terms, chunk)

    def loss(self, reps: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> StepOutput:
        # CLIP's scale is bounded by clamping the parameter after each step (clamp_logit_scale), not here
        bias = backbone_for(self.clip).logit_bias()
        return StepOutput(*self.objective(reps, batch, self.clip.logit_scale.exp(), bias))


class StepModule(_StepParts):
    """A plain step: ``forward(batch)`` encodes the whole batch and returns its :class:`StepOutput`.

    With top-k local pairs (``pair_owner`` / ``pair_weight`` in the batch, see ``Collate``) the
    crops and sentences are every valid pair of the batch. Each TSL term is the weighted mean over
    its valid pairs, a pair pooling its own image's patch tokens / caption tokens. The local
    InfoNCE (``options.local_pair_loss``, see :func:`~goalclip.training.losses.local_pair_loss`)
    takes each image's best pair (``best``) or every pair weighted (``all``); a pair never has
    another pair of its own image as a negative. Without those keys every weight is 1 and each
    image has at most one pair (the plain means). ``heads`` (``--tsl-heads
    separate``) project the TSL pooled features instead of CLIP's own norm + projection.
    """

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        return self.loss(self.encode(batch, whole_batch(batch, self.terms)), batch)


class ChunkedStepModule(_StepParts):
    """A gradient-caching step (:mod:`goalclip.training.gradcache`): ``forward(batch, chunk)`` encodes one
    chunk; :meth:`loss` is the step's loss from the cached representations, the plain step's function."""

    def forward(self, batch: dict[str, torch.Tensor], chunk: Chunk) -> dict[str, torch.Tensor]:
        return self.encode(batch, chunk)

    def chunks(self, batch: dict[str, torch.Tensor], size: int) -> list[Chunk]:
        return plan_chunks(batch, size, captions=self.terms.needs_captions, sentences=self.terms.needs_local)


def training_step(model: CLIPModel | SiglipModel, batch: dict[str, torch.Tensor], method: str, weights: LossWeights,
                  heads: TslHeads | None = None, options: LossOptions = LossOptions()) -> StepOutput:
    """Loss of one batch (the :class:`StepModule` forward), for callers holding a bare model."""
    return StepModule(model, method, weights, heads, options)(batch)


clamp_logit_scale = clamp_temperature  # the trainer's name for it: after every optimizer step
