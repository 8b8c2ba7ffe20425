"""Validation during training: the eval harness run on the model being trained, and the best score.

The items of ``--val-data`` (and ``--val-joint``) are read once, before the first step, with the
same readers and checks as ``goalclip eval``; each validation encodes them with the model as it
is (eval mode, no gradients, the random state untouched, so the training trajectory does not
change) and scores Recall@1/5 both ways and the joint mAP@10 exactly as ``goalclip eval --ks 1 5``
would score the weights of that step. Under several processes each encodes its share and the
main process scores.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate import PartialState

from goalclip.evaluation.config import EvalConfig
from goalclip.evaluation.items import joint_items, retrieval_items
from goalclip.evaluation.retrieval import score_bundle
from goalclip.models.clip import ClipBundle
from goalclip.training.config import VAL_KS, check_keep_best

logger = logging.getLogger(__name__)


class Validator:
    """Scores the model being trained on the validation sets and remembers the best score.

    ``best`` ({"metric", "value", "step"}) and ``last_step`` travel in checkpoints
    (:meth:`state` / :meth:`load_state`), so a resumed run compares against the best before the
    interruption and never exports a worse model over it.
    """

    def __init__(self, data: str, joint: str | None, keep_best: str | None, *, batch_size: int, num_workers: int,
                 state: PartialState, device: torch.device):
        self.item_sets = [retrieval_items(data)]
        if joint is not None:
            self.item_sets.append(joint_items(joint))
        self.keep_best = check_keep_best(keep_best, joint is not None) if keep_best else None
        # progress off: a bar per validation would break the training bar
        self.eval_config = EvalConfig(models=[], data=data, joint=joint, ks=list(VAL_KS), batch_size=batch_size,
                                      num_workers=num_workers, device=str(device), progress=False)
        self.state = state
        self.best: dict[str, Any] | None = None
        self.last_step = 0

    def score(self, bundle: ClipBundle, step: int) -> dict[str, float]:
        """Metrics of ``bundle`` now (main process; the others get an empty dict).

        Every process must call this, as every process encodes a share.
        """
        model = bundle.model
        training = model.training
        model.eval()
        devices = [model.device] if model.device.type == "cuda" else []
        try:
            # DataLoader iterators draw seeds from the global generators: fork them so that a run
            # with validation draws the same random numbers as one without
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                scores = score_bundle(bundle, self.item_sets, self.eval_config, self.state, VAL_KS)
        finally:
            model.train(training)
        if scores:
            logger.info("validation at step %d: %s", step, ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
        return scores

    def improved(self, scores: dict[str, float], step: int) -> bool:
        """Record ``step``'s scores; True when they beat the best so far on ``--keep-best`` (higher is better;
        a tie keeps the earlier step)."""
        self.last_step = step
        if self.keep_best is None or not scores:
            return False
        value = scores[self.keep_best]
        if self.best is not None and value <= self.best["value"]:
            return False
        self.best = {"metric": self.keep_best, "value": value, "step": step}
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last_step": self.last_step}

    def load_state_dict(self, values: dict[str, Any]) -> None:
        self.best, self.last_step = values["best"], values["last_step"]
