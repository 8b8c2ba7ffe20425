"""``goalclip caption``: long captions for images with an image-text-to-text model."""

from __future__ import annotations

import argparse
import json

from goalclip.caption.prompt import DEFAULT_MODEL
from goalclip.cli.common import SHARDS_HELP, add_device, add_no_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="write long captions for a folder or manifest of images",
                       description="Caption images with any transformers image-text-to-text checkpoint "
                       "(LLaVA-NeXT by default; Qwen2-VL and others work unchanged) using a prompt for long, "
                       "visually grounded descriptions. Writes a goalclip manifest {id, image, caption, "
                       "caption_meta}. Resumable; under accelerate launch each process captions a shard.")
    p.add_argument("--data", required=True, help="a folder of images (searched recursively) or a manifest whose "
                   f"records have id and image (captions not needed), {SHARDS_HELP}")
    p.add_argument("--out", required=True, help="captioned manifest to write (JSONL); a .skipped.jsonl and "
                   ".summary.json are written next to it")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"image-text-to-text checkpoint: hub id or folder "
                   f"(default: {DEFAULT_MODEL})")
    p.add_argument("--prompt-file", help="text file holding the prompt to use instead of the built-in one "
                   "(its sha256 is recorded with every caption)")
    p.add_argument("--backend", choices=("transformers", "vllm"), default="transformers",
                   help="generation engine: transformers, or vllm for 100k-image runs where it is installed "
                   "(one process, not under accelerate launch) (default: transformers)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="generation limit per caption; a last sentence "
                   "cut off by it is dropped and counted (default: 512)")
    p.add_argument("--batch-size", type=int, default=8, help="images per generate call (default: 8)")
    p.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes (default: 2)")
    add_device(p, "the captioning model")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="model dtype: auto is bf16 on CUDA, fp32 on CPU (default: auto)")
    p.add_argument("--max-images", type=int, help="caption only the first N images (for a quick look)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run: ids already written are "
                   "skipped, never duplicated")
    add_no_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    from goalclip.caption.generate import CaptionConfig, caption

    summary = caption(CaptionConfig(
        data=args.data, out=args.out, model=args.model, prompt_file=args.prompt_file, backend=args.backend,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, num_workers=args.num_workers,
        device=args.device, precision=args.precision, resume=args.resume, max_images=args.max_images,
        progress=not args.no_progress,
    ))
    if not summary:  # non-main process under accelerate launch
        return ""
    skipped = summary["skipped"]
    return (f"captioned {summary['captioned']} of {summary['images']} images ({skipped} skipped"
            f"{': ' + json.dumps(summary['skipped_reasons']) if skipped else ''}; {summary['cut_sentences']} cut-off "
            f"last sentences dropped); mean {summary['mean_words'] or 0:.0f} words; "
            f"{summary['images_per_s'] or 0:.2f} img/s -> {summary['out']}")
