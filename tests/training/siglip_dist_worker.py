"""One process of the 2-process sigmoid-loss check in test_siglip_loss.py, plus the shared setup.

The test imports this file for the single-process reference and runs it under torchrun
(``launch_ranks``): each rank takes its rows of one batch (equal halves, then an uneven 5/3 split),
computes the gathered sigmoid loss, and averages the gradients over ranks as DDP does; rank 0 saves
the mean loss and the gradients per split.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from goalclip.training.losses import sigmoid_loss

BATCH, FEATURES, EMBED = 8, 6, 4
SPLITS = {"even": (4, 4), "uneven": (5, 3)}


def parameters() -> dict[str, Tensor]:
    """Two linear towers, SigLIP's temperature and bias (all leaves with gradients)."""
    generator = torch.Generator().manual_seed(0)
    params = {"image": torch.randn(FEATURES, EMBED, generator=generator),
              "text": torch.randn(FEATURES, EMBED, generator=generator),
              "scale": torch.tensor(2.3), "bias": torch.tensor(-1.5)}
    return {k: v.requires_grad_() for k, v in params.items()}


def features() -> tuple[Tensor, Tensor, Tensor]:
    """Image and text features of one batch, and top-k style pair weights."""
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, FEATURES, generator=generator), torch.randn(BATCH, FEATURES, generator=generator),
            torch.rand(BATCH, generator=generator) + 0.1)


def loss_and_grads(rows: slice, weighted: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """This process's loss on ``rows`` of the batch and its gradients."""
    params = parameters()
    images, texts, weights = features()
    loss = sigmoid_loss(images[rows] @ params["image"], texts[rows] @ params["text"], params["scale"].exp(),
                        params["bias"], weights=weights[rows] if weighted else None)
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in params.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = parser.parse_args().out
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name, sizes in SPLITS.items():
        start = sum(sizes[:rank])
        for weighted in (False, True):
            loss, grads = loss_and_grads(slice(start, start + sizes[rank]), weighted)
            for tensor in (loss, *grads.values()):  # DDP: the mean over processes
                dist.all_reduce(tensor)
                tensor /= world
            results[f"{name}/{'weighted' if weighted else 'plain'}"] = {"loss": loss, **grads}
    if rank == 0:
        torch.save(results, os.path.join(out, "results.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
