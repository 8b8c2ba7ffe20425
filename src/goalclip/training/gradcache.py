"""Gradient caching: the exact gradient of a big contrastive batch in the memory of a small one.

Contrastive losses take their negatives from the batch, so accumulating the gradients of small
batches optimises another objective; the GradCache method (Gao et al., 2021) computes the big
batch's own gradient instead:

1. encode the batch chunk by chunk without a graph, keeping only the per-example tensors the loss
   consumes (embeddings, and the pooled token features TSL projects);
2. compute the full-batch loss from them and its gradient with respect to each of them (and to the
   parameters the loss uses directly: the logit scale, TSL heads or projections);
3. encode each chunk again, with a graph, and back-propagate its slice of those gradients.

The result equals one full-batch backward up to float rounding, at the cost of one extra forward
pass; activation memory is that of one chunk. Under DDP every chunk but the last runs under
``no_sync``, and the last backward also carries the loss's direct parameter gradients, so DDP
all-reduces each parameter once, with every parameter ready. Each chunk's second forward replays
the random state of its first, so anything random in the forward (dropout) draws the same numbers.

The model is a :class:`goalclip.training.step.ChunkedStepModule` (or its DDP wrapper): ``module.chunks(batch,
size)`` plans the chunks, ``model(batch, chunk)`` encodes one, ``module.loss(representations, batch)`` is the
step's loss from representations, the same function the plain step uses.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import Tensor

__all__ = ["Chunk", "grad_cache_step", "plan_chunks"]

# Engines that shard parameters or drive the backward themselves: chunked backward passes need plain DDP.
UNSUPPORTED = (DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM)


@dataclass(frozen=True)
class Chunk:
    """Rows of one chunk in each input stream of a batch (None: the stream has no rows in it).

    ``images`` are rows of ``pixel_values`` (``[globals ; crops]``), ``captions`` and ``sentences``
    rows of their ids. ``image_pairs`` / ``caption_pairs`` are the local pairs whose own global image /
    caption lies in the chunk: TSL pools their tokens from this chunk's forward.
    """

    images: slice | None = None
    image_pairs: slice | None = None
    captions: slice | None = None
    caption_pairs: slice | None = None
    sentences: slice | None = None


def _owned(owner: list[int], rows: slice | None) -> slice | None:
    """The pairs whose item lies in ``rows`` (contiguous: pairs are packed item after item)."""
    if rows is None:
        return None
    first, last = bisect_left(owner, rows.start), bisect_left(owner, rows.stop)
    return slice(first, last) if last > first else None


def plan_chunks(batch: dict[str, Tensor], size: int | None, *, captions: bool, sentences: bool) -> list[Chunk]:
    """Split each stream the step encodes into runs of ``size`` rows (``None``: one chunk, the whole batch).

    The streams are chunked independently (the loss needs only the full tensors) and aligned at the
    end, so the last chunk holds rows of every stream: its backward, the one DDP synchronises,
    then reaches every parameter of both towers.
    """
    count = batch["caption_ids"].shape[0]
    pairs = batch["sentence_ids"].shape[0] if "sentence_ids" in batch else 0
    if size is None:  # one chunk holds every pair: no owners needed (all zeros place every pair in it)
        owner = [0] * pairs
    else:  # a host read of the batch's owners (a device sync), once per gradient-caching step, to cut the chunks
        owner = batch["pair_owner"].tolist() if "pair_owner" in batch else list(range(pairs))
    rows = {"images": batch["pixel_values"].shape[0], "captions": count if captions else 0,
            "sentences": pairs if sentences else 0}
    size = size or max(rows.values())
    runs = {name: [slice(start, min(start + size, n)) for start in range(0, n, size)] for name, n in rows.items()}
    total = max(len(r) for r in runs.values())
    chunks = []
    for index in range(total):
        part = {name: r[index - total + len(r)] if index >= total - len(r) else None for name, r in runs.items()}
        chunks.append(Chunk(images=part["images"], image_pairs=_owned(owner, part["images"]),
                            captions=part["captions"], caption_pairs=_owned(owner, part["captions"]),
                            sentences=part["sentences"]))
    return chunks


class _RandomState:
    """The random state a chunk's first forward started from, replayed for its second forward."""

    def __init__(self, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Draw what the first forward drew; afterwards the generators continue as if it had not run."""
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


def _as_backward(accelerator: Any, loss: Tensor) -> Tensor:
    """The tensor ``accelerator.backward(loss)`` differentiates: divided over accumulation steps, fp16-scaled."""
    loss = loss / accelerator.gradient_accumulation_steps
    return accelerator.scaler.scale(loss) if accelerator.scaler is not None else loss


def grad_cache_step(
    accelerator: Any, model: torch.nn.Module, batch: dict[str, Tensor], chunk_size: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """Forward and backward of one batch in chunks of ``chunk_size`` rows; the gradients are left in ``.grad``.

    Returns the (detached) full-batch loss and the step's logs, plus ``grad_cache_chunks``. Runs each
    forward under ``accelerator.autocast()``, so call it outside one.
    """
    if accelerator.distributed_type in UNSUPPORTED:
        raise ValueError(f"--grad-cache-chunk runs in one process or under DDP, not under "
                         f"{accelerator.distributed_type}: train without it there")
    module = accelerator.unwrap_model(model)
    chunks = module.chunks(batch, chunk_size)
    device = batch["pixel_values"].device

    randomness, parts = [], []
    with torch.no_grad():
        for chunk in chunks:
            randomness.append(_RandomState(device))
            with accelerator.autocast():
                parts.append(module(batch, chunk))
    keys = dict.fromkeys(key for part in parts for key in part)
    cached = {key: torch.cat([part[key] for part in parts if key in part]).requires_grad_() for key in keys}
    del parts

    with accelerator.autocast():
        loss, logs = module.loss(cached, batch)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_as_backward(accelerator, loss), [*cached.values(), *params], allow_unused=True)
    cached_grads = dict(zip(cached, grads))
    direct = [(p, g) for p, g in zip(params, grads[len(cached):]) if g is not None]

    offsets = dict.fromkeys(keys, 0)
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with randomness[index].replay(), accelerator.autocast():
                outputs = model(batch, chunk)
            roots, root_grads = [], []
            for key, output in outputs.items():
                start, offsets[key] = offsets[key], offsets[key] + output.shape[0]
                if cached_grads[key] is not None:
                    roots.append(output)
                    root_grads.append(cached_grads[key][start : offsets[key]])
            if last:  # the loss's own parameters join the one synchronised backward
                roots += [p for p, _ in direct]
                root_grads += [g for _, g in direct]
            torch.autograd.backward(roots, root_grads)
    logs["grad_cache_chunks"] = torch.tensor(float(len(chunks)), device=device)
    return loss.detach(), logs
