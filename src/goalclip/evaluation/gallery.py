"""Encoding a gallery: one model's embeddings of an ``EvalItems``, shared out over processes.

Under ``accelerate launch`` (or ``torchrun``) each process encodes a contiguous slice of the image and
text items; the slices are gathered into full tables (rows of unreadable images stay zero and are
flagged). A plain single process needs no launcher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import PartialState
from accelerate.utils import gather, gather_object, pad_across_processes
from torch import Tensor

from goalclip.core.images import PixelBatches
from goalclip.evaluation.config import EvalConfig
from goalclip.evaluation.items import EvalItems
from goalclip.models.clip import ClipBundle, prepare_text_positions
from goalclip.models.embed import Bundle, embed_pixels, embed_text_strings_counted

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Embeddings:
    """One model's embeddings of one ``EvalItems``; rows of unreadable images are zero.

    A BLIP-2 image row holds its query embeddings side by side (``metrics.similarity`` scores the best).
    """

    images: Tensor
    image_ok: Tensor
    texts: Tensor
    failures: list[tuple[int, str]]
    truncated: int
    text_len: int  # tokens per text actually used: max_text_len capped at the model's context
    cached: bool = False


def _shard(state: PartialState, n: int) -> list[int]:
    """This process's contiguous slice of ``range(n)`` (all of it in a single process)."""
    if state.num_processes == 1:
        return list(range(n))
    with state.split_between_processes(list(range(n))) as part:
        return list(part)


def _gather_rows(state: PartialState, index: Tensor, rows: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """Place every process's rows (tagged with global indices) into one ``[total, D]`` table.

    Slices differ in length (uneven splits, failed images), so both tensors are padded to the
    longest slice, gathered, and the padding (index -1) dropped; returns the table and a mask of
    filled rows.
    """
    if state.num_processes > 1:
        index = gather(pad_across_processes(index.to(state.device), dim=0, pad_index=-1)).cpu()
        rows = gather(pad_across_processes(rows.to(state.device), dim=0)).cpu()
    filled = index >= 0
    table = torch.zeros(total, rows.shape[1], dtype=torch.float32)
    table[index[filled]] = rows[filled]
    mask = torch.zeros(total, dtype=torch.bool)
    mask[index[filled]] = True
    return table, mask


def encode_items(
    bundle: Bundle, items: EvalItems, config: EvalConfig, state: PartialState, device: torch.device
) -> Embeddings:
    """Encode this process's slice of ``items`` and gather the full embedding tables."""
    model, dtype = bundle.model, PRECISIONS[config.precision]
    width = bundle.embed_dim * bundle.image_tokens  # an image row: one embedding per query token (BLIP-2)
    max_len = _text_len(bundle, config)
    progress = config.progress and state.is_main_process

    image_part = _shard(state, len(items.image_paths))
    loader_args = {
        "paths": [items.image_paths[i] for i in image_part],
        "processor": bundle.image_processor,
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
        "progress": progress,
        "desc": f"{items.kind} images",
    }
    boxes = [items.image_boxes[i] for i in image_part]
    batches = PixelBatches(**loader_args, boxes=boxes)
    part_index = torch.tensor(image_part, dtype=torch.long)
    indices, rows = [torch.empty(0, dtype=torch.long)], [torch.empty(0, width)]
    for local, pixels in batches:
        indices.append(part_index[local])
        rows.append(embed_pixels(model, pixels.to(device=device, dtype=dtype)).cpu())
    images, image_ok = _gather_rows(state, torch.cat(indices), torch.cat(rows), len(items.image_paths))
    failures = sorted(gather_object([(int(part_index[i]), msg) for i, msg in batches.failed]))

    text_part = _shard(state, len(items.texts))
    rows, truncated = embed_text_strings_counted(bundle, [items.texts[i] for i in text_part],
                                                 batch_size=config.batch_size, max_len=max_len, progress=progress,
                                                 desc=f"{items.kind} texts")
    texts, _ = _gather_rows(state, torch.tensor(text_part, dtype=torch.long), rows.cpu(), len(items.texts))
    truncated = sum(gather_object([truncated]))
    return Embeddings(images, image_ok, texts, failures, truncated, max_len)


def _text_len(bundle: Bundle, config: EvalConfig) -> int:
    """The text length used for a model: its (stretched) context, capped by ``context`` and ``max_text_len``."""
    caps = [c for c in (config.context, config.max_text_len) if c is not None]
    return min([bundle.max_text_len, *caps])


def stretch_to_context(bundle: Bundle, source: str, config: EvalConfig) -> None:
    """Stretch a model shorter than ``config.context`` with the training-time stretch (in place).

    Only transformers CLIPs and SigLIPs are stretched; an open_clip or BLIP-2 row shorter than ``--context`` is
    an error.
    """
    if config.context is None or bundle.max_text_len >= config.context:
        return
    if not isinstance(bundle, ClipBundle):
        raise ValueError(
            f"{source}: --context {config.context} cannot stretch the text positions of an open_clip or BLIP-2 "
            f"model "
            f"(its context is {bundle.max_text_len}); leave --context out or use at most {bundle.max_text_len}"
        )
    try:
        prepare_text_positions(bundle, config.context, config.keep_positions)
    except ValueError as exc:
        raise ValueError(
            f"{source}: cannot stretch its {bundle.max_text_len} text positions to {config.context} positions "
            f"keeping {config.keep_positions} (--keep-positions): {exc}"
        ) from None

