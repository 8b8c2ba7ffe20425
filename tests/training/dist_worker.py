"""One process of the 2-process gloo check in test_distributed.py, plus the shared tiny setup.

The test imports this file for the single-process reference (``build_model``, ``make_batch``,
``compute_loss``) and runs it as a script under torchrun (the ``launch_ranks`` fixture), so both
sides use the very same model, data and loss code. Each rank runs three modes inside one process
group (starting processes is the slow part): equal halves with gather, an uneven 5/3 split with
gather, and equal halves without gather (the negative control). Rank 0 saves, per mode, the mean loss over ranks and the
DDP-averaged gradients.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from goalclip.training.config import LossWeights
from goalclip.training.losses import combine_losses, contrastive_loss, masked_mean, tsl_loss

logger = logging.getLogger("dist_worker")

BATCH = 8
IMAGE_DIM, TEXT_DIM, EMBED_DIM = 6, 5, 4
PATCHES, TOKENS = 7, 9
# split name -> (rows per rank, gather across processes)
MODES: dict[str, tuple[tuple[int, ...], bool]] = {
    "gather": ((4, 4), True),
    "uneven": ((5, 3), True),
    "no_gather": ((4, 4), False),
}


class TinyClip(nn.Module):
    """Two linear "towers" standing in for CLIP: each maps raw features or pooled tokens to D."""

    def __init__(self) -> None:
        super().__init__()
        self.image_tower = nn.Linear(IMAGE_DIM, EMBED_DIM)
        self.text_tower = nn.Linear(TEXT_DIM, EMBED_DIM)
        self.log_logit_scale = nn.Parameter(torch.tensor(1.2))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            "image": self.image_tower(batch["image"]),
            "text": self.text_tower(batch["text"]),
            "crop": self.image_tower(batch["crop"]),
            "sentence": self.text_tower(batch["sentence"]),
            "box_pooled": self.image_tower(masked_mean(batch["patches"], batch["box"])),
            "span_pooled": self.text_tower(masked_mean(batch["tokens"], batch["span"])),
            "logit_scale": self.log_logit_scale.exp(),
        }


def build_model() -> TinyClip:
    torch.manual_seed(0)
    return TinyClip()


def make_batch() -> dict[str, Tensor]:
    """A batch of 8 whose TSL validity is lopsided across the two halves (3 vs 1 valid rows).

    A per-process TSL mean would then weigh rows differently from the global mean, so the test
    only passes if the valid count is taken over the global batch.
    """
    generator = torch.Generator().manual_seed(1)
    box = torch.rand(BATCH, PATCHES, generator=generator) > 0.5
    box[5] = False  # an empty box: pooled zeros that must be masked
    span = torch.rand(BATCH, TOKENS, generator=generator) > 0.4
    span[6] = False
    return {
        "image": torch.randn(BATCH, IMAGE_DIM, generator=generator),
        "text": torch.randn(BATCH, TEXT_DIM, generator=generator),
        "crop": torch.randn(BATCH, IMAGE_DIM, generator=generator),
        "sentence": torch.randn(BATCH, TEXT_DIM, generator=generator),
        "patches": torch.randn(BATCH, PATCHES, IMAGE_DIM, generator=generator),
        "box": box,
        "tokens": torch.randn(BATCH, TOKENS, TEXT_DIM, generator=generator),
        "span": span,
        "box_valid": box.any(1) & torch.tensor([1, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool),
        "span_valid": span.any(1) & torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool),
    }


def compute_loss(model: nn.Module, batch: dict[str, Tensor], gather: bool) -> Tensor:
    """The full GOAL objective, as the trainer would assemble it from embeddings."""
    out = model(batch)
    terms = {
        "global": contrastive_loss(out["image"], out["text"], out["logit_scale"], gather),
        "local": contrastive_loss(out["crop"], out["sentence"], out["logit_scale"], gather),
        "tsl_image": tsl_loss(out["box_pooled"], out["crop"], batch["box_valid"], gather)[0],
        "tsl_text": tsl_loss(out["span_pooled"], out["sentence"], batch["span_valid"], gather)[0],
    }
    return combine_losses(terms, "goal", LossWeights())


def shard(batch: dict[str, Tensor], sizes: tuple[int, ...], rank: int) -> dict[str, Tensor]:
    start = sum(sizes[:rank])
    return {key: value[start : start + sizes[rank]] for key, value in batch.items()}


def run_rank(rank: int, world_size: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        model = DistributedDataParallel(build_model())
        batch = make_batch()
        results: dict[str, dict[str, object]] = {}
        for mode, (sizes, gather) in MODES.items():
            model.zero_grad(set_to_none=True)
            loss = compute_loss(model, shard(batch, sizes, rank), gather)
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[mode] = {
                "loss": (mean_loss / world_size).item(),
                "grads": {n: p.grad.clone() for n, p in model.module.named_parameters()},
            }
            logger.info("rank %d mode %s loss %.6f", rank, mode, loss.item())
        if rank == 0:
            tmp = out.with_suffix(".tmp")
            torch.save(results, tmp)
            tmp.rename(out)
        # Tear down in order: no rank leaves while a peer still works, and DDP (which holds the group)
        # is gone before the group is, so no gloo thread outlives it into interpreter shutdown. A rank
        # that skipped this once aborted at exit in CI ("terminate called without an active exception").
        dist.barrier()
        del model
        gc.collect()
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(1)
    run_rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args.out)  # set by torchrun


if __name__ == "__main__":
    main()
