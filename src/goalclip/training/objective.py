"""The GOAL objective of one batch, built once per run: which terms are on, their weights, the TSL projections.

:mod:`goalclip.training.losses` holds the maths on embeddings; :class:`GoalLoss` assembles the
terms a method trains from a batch's representations (:func:`goalclip.training.step.encode`) and
returns them by name. The losses gather over the default process group (every process of an
``accelerate launch`` run), as :mod:`~goalclip.training.losses` describes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from goalclip.training.config import LossOptions, LossTerms, LossWeights
from goalclip.training.losses import combine_losses, contrastive_loss, local_pair_loss, sigmoid_loss, tsl_loss

Projection = Callable[[Tensor], Tensor]


class GoalLoss(torch.nn.Module):
    """``forward(reps, batch, logit_scale) -> (loss, logs)``: the weighted sum of the method's terms.

    ``project_patches`` / ``project_text`` map TSL's pooled token features into the embedding
    space: CLIP's own norm + projection (``--tsl-heads shared``) or learned heads (``separate``).
    They are plain callables, not submodules, so the step module's parameter names (and so its
    checkpoints) stay ``clip.*`` / ``heads.*``.
    """

    def __init__(self, terms: LossTerms, weights: LossWeights, project_patches: Projection,
                 project_text: Projection, hidden: tuple[int, int], options: LossOptions = LossOptions()):
        super().__init__()
        self.terms = terms
        self.weights = weights
        self.project_patches = project_patches
        self.project_text = project_text
        self.options = options
        self.hidden = hidden  # (vision, text) token widths: a batch without pairs pools zero rows of them

    def forward(self, reps: dict[str, Tensor], batch: dict[str, Tensor], logit_scale: Tensor,
                logit_bias: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and detached scalars for logging (kept as tensors: converting them every step
        would force a device sync): ``loss``, ``loss_<term>``, ``logit_scale`` (and ``logit_bias``), TSL
        cosines and, with top-k pairs, the mean pairs per image.

        The global and local terms are CLIP's softmax InfoNCE, or SigLIP's sigmoid loss when the model
        has a ``logit_bias`` (:mod:`goalclip.models.backbone`)."""
        on, b = self.terms, batch["caption_ids"].shape[0]
        image_emb = reps["image"]
        if on.needs_local and "sentence" not in reps:  # no image of the batch has a local pair: zero rows
            reps = {**reps, **self._no_pairs(image_emb)}
        terms: dict[str, Tensor] = {}
        logs: dict[str, Tensor] = {"logit_scale": logit_scale.detach()}
        if logit_bias is None:
            contrast = contrastive_loss
        else:
            logs["logit_bias"] = logit_bias.detach().squeeze()
            contrast = functools.partial(sigmoid_loss, logit_bias=logit_bias)
        if on.global_:
            terms["global"] = contrast(image_emb[:b], reps["caption"], logit_scale)
        pair_weight, owner = batch.get("pair_weight"), batch.get("pair_owner")
        if on.local:
            terms["local"] = local_pair_loss(image_emb[b:], reps["sentence"], logit_scale, owner, pair_weight,
                                             self.options.local_pair_loss, contrast=contrast)
        if on.tsl:
            target = self.options.tsl_target
            terms["tsl_image"], cos_image = tsl_loss(self.project_patches(reps["patches"]), image_emb[b:],
                                                     batch["image_tsl_valid"], weights=pair_weight,
                                                     tsl_target=target, groups=owner)
            terms["tsl_text"], cos_text = tsl_loss(self.project_text(reps["span"]), reps["sentence"],
                                                   batch["text_tsl_valid"], weights=pair_weight,
                                                   tsl_target=target, groups=owner)
            logs["tsl_cos_image"] = cos_image.nanmean()
            logs["tsl_cos_text"] = cos_text.nanmean()
        if pair_weight is not None:
            logs["local_pairs"] = pair_weight.new_tensor(len(pair_weight) / b)  # mean pairs per image
        loss = combine_losses(terms, on, self.weights)
        logs.update({f"loss_{k}": v.detach() for k, v in terms.items()})
        logs["loss"] = loss.detach()
        return loss, logs

    def _no_pairs(self, image_emb: Tensor) -> dict[str, Tensor]:
        """Zero-row local representations, so the local and TSL terms of a batch without pairs are 0
        and every process still makes the same collective calls."""
        vision, text = self.hidden
        return {"sentence": image_emb.new_zeros((0, image_emb.shape[1])),
                "patches": image_emb.new_zeros((0, vision)), "span": image_emb.new_zeros((0, text))}
