"""``goalclip data score``: how well captions match their images under a CLIP.

The mean image-caption cosine over a seeded sample is FAST-GOAL's caption-quality measure (its
Table I compares generated and human captions this way); per-record scores are also a practical
hallucination filter, since a caption describing things that are not there scores low.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from goalclip.caption.config import ScoreConfig
from goalclip.core.images import PixelBatches
from goalclip.core.manifest import captions_of, write_jsonl, write_manifest
from goalclip.core.records import read_manifest
from goalclip.datasets.sample import sample_records
from goalclip.models.clip import load_clip, prepare_text_positions
from goalclip.models.embed import count_truncated, embed_pixels, embed_text_strings

logger = logging.getLogger(__name__)


def score_manifest(config: ScoreConfig) -> dict[str, Any]:
    """Cosine of each sampled record's image and (first) caption; returns the summary.

    Captions longer than the model's context are truncated and counted; ``max_text_len`` first
    stretches a shorter context (Long-CLIP style) so a stock 77-token CLIP can read long captions.
    """
    sample = config.sample if config.sample is not None else (0 if config.min_score is not None else 1000)
    if config.min_score is not None and (config.out is None or sample != 0):
        raise ValueError("--min-score filters every record into --out: pass --out (and no --sample, or --sample 0)")
    if sample < 0:
        raise ValueError(f"--sample must be 0 (all) or a positive count, got {sample}")
    records = read_manifest(config.data)
    picked = sample_records(records, sample, config.seed)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if config.device == "auto" else config.device)
    bundle = load_clip(config.model, base=config.base, device=device)
    bundle.model.eval()
    context = (prepare_text_positions(bundle, config.max_text_len, config.keep_positions)
               if config.max_text_len else bundle.max_text_len)
    captions = [captions_of(r)[0] for r in picked]
    truncated = count_truncated(bundle, captions)
    if truncated:
        logger.warning("%d of %d captions are longer than the model's %d-token context and were truncated",
                       truncated, len(captions), context)
    texts = embed_text_strings(bundle, captions, batch_size=config.batch_size)
    batches = PixelBatches([r["image"] for r in picked], bundle.image_processor, batch_size=config.batch_size,
                           num_workers=config.num_workers, progress=config.progress, desc="score")
    scores: dict[int, float] = {}
    for indices, pixels in batches:
        images = embed_pixels(bundle.model, pixels.to(device))
        cosines = (images * texts[indices.to(device)]).sum(dim=-1)
        scores.update(zip(indices.tolist(), cosines.tolist()))
    rows = [{"id": picked[i]["id"], "score": round(scores[i], 6)} for i in sorted(scores)]
    if picked and not rows:
        first = batches.failed[0][1] if batches.failed else "no image decoded"
        raise RuntimeError(f"no record of {config.data} could be scored: all {len(picked)} images are unreadable "
                           f"(first: {first})")
    if config.scores_out:
        write_jsonl(config.scores_out, rows)
    summary: dict[str, Any] = {
        "data": config.data, "model": config.model, "records": len(records), "scored": len(rows),
        "unreadable": len(batches.failed), "truncated": truncated, "context": context, "seed": config.seed,
        "mean_score": sum(r["score"] for r in rows) / len(rows) if rows else math.nan,
        "scores_out": config.scores_out,
    }
    if config.min_score is not None:
        kept = [picked[i] for i in sorted(scores) if scores[i] >= config.min_score]
        summary.update(out=config.out, kept=write_manifest(config.out, kept), min_score=config.min_score)
    return summary
