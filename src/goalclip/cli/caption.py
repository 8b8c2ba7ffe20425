"""``goalclip caption``: long captions for images with an image-text-to-text model."""

from __future__ import annotations

import argparse
import json

from goalclip.caption.config import CaptionConfig
from goalclip.core.options import add_options, values_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="write long captions for a folder or manifest of images",
                       description="Caption images with any transformers image-text-to-text checkpoint "
                       "(LLaVA-NeXT by default; Qwen2-VL and others work unchanged) using a prompt for long, "
                       "visually grounded descriptions. Writes a goalclip manifest {id, image, caption, "
                       "caption_meta}. Resumable; under accelerate launch each process captions a shard.")
    add_options(p, CaptionConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    from goalclip.caption.generate import caption

    summary = caption(CaptionConfig(**values_from_args(args, CaptionConfig)))
    if not summary:  # non-main process under accelerate launch
        return ""
    skipped = summary["skipped"]
    return (f"captioned {summary['captioned']} of {summary['images']} images ({skipped} skipped"
            f"{': ' + json.dumps(summary['skipped_reasons']) if skipped else ''}; {summary['cut_sentences']} cut-off "
            f"last sentences dropped); mean {summary['mean_words'] or 0:.0f} words; "
            f"{summary['images_per_s'] or 0:.2f} img/s -> {summary['out']}")
