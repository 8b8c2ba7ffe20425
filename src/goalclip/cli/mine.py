"""``goalclip mine``: local (sentence, region) pairs from captioned images."""

from __future__ import annotations

import argparse
import json

from goalclip.cli.common import SHARDS_HELP, add_device, add_max_image_pixels, add_model, add_no_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mine", help="mine local (sentence, region) pairs from captioned images",
                       description="Split each caption into sentences, propose regions, match them with a "
                       "CLIP and keep the best pair per image (GOAL's LISM, FAST-GOAL's FLISM).")
    add_model(p, "CLIP used for matching: hub id, model folder or state-dict file")
    p.add_argument("--data", required=True, help=f"captioned-images manifest (JSONL) {SHARDS_HELP}")
    p.add_argument("--out", required=True, help="mined-pairs manifest to write (JSONL); a .skipped.jsonl and "
                   ".summary.json are written next to it")
    p.add_argument("--regions", default="flism", help="region proposer: flism (detector + 4 quadrants + centre), "
                   "lism (SAM masks + whole image, see --whole-wins), detector, sam, grid, whole, external, or a comma "
                   "list such as external,grid (default: flism)")
    p.add_argument("--boxes", help="external boxes JSONL {id, boxes}; with flism it can stand in for the detector")
    p.add_argument("--detector", help="transformers object-detection checkpoint for flism (e.g. hustvl/yolos-tiny)")
    p.add_argument("--sam", help="transformers SAM checkpoint for lism (e.g. facebook/sam-vit-base)")
    p.add_argument("--threshold", type=float, default=0.3, help="detector score threshold (default: 0.3)")
    p.add_argument("--max-boxes", type=int, default=10, help="detector boxes kept per image (default: 10)")
    p.add_argument("--margin", type=float, default=0.0, help="SAM boxes grow by this fraction of their size for "
                   "context (default: 0)")
    p.add_argument("--top-k", type=int, default=5, help="candidate pairs kept per image for analysis (default: 5)")
    p.add_argument("--whole-wins", choices=["drop-sentence", "drop-image"], default="drop-sentence",
                   help="a sentence whose best region is the whole image: drop-sentence (default, as the GOAL "
                   "authors' pipeline) keeps the image's best pair among the other sentences, and an image where "
                   "every sentence chose the whole image stays with 'local': null for the global loss (counted as "
                   "without_local_pair); drop-image skips the image when its best pair is the whole image")
    p.add_argument("--batch-size", type=int, default=32, help="images per mining batch (default: 32)")
    p.add_argument("--crop-batch-size", type=int, default=256, help="crops/sentences per CLIP forward (default: 256)")
    p.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes (default: 2)")
    add_device(p, "the matcher, detector and SAM")
    p.add_argument("--max-images", type=int, help="mine only the first N images (for a quick look)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run: ids already written are "
                   "skipped, never duplicated")
    add_no_progress(p)
    add_max_image_pixels(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    from goalclip.mining.mine import MineConfig, mine

    summary = mine(MineConfig(
        model=args.model, base=args.base, data=args.data, out=args.out, regions=args.regions, boxes=args.boxes,
        detector=args.detector, sam=args.sam, threshold=args.threshold, max_boxes=args.max_boxes,
        margin=args.margin, top_k=args.top_k, whole_wins=args.whole_wins, batch_size=args.batch_size,
        crop_batch_size=args.crop_batch_size,
        num_workers=args.num_workers, device=args.device, resume=args.resume, max_images=args.max_images,
        progress=not args.no_progress, max_image_pixels=args.max_image_pixels,
    ))
    if not summary:  # non-main process under accelerate launch
        return ""
    rate = summary["images_per_s"]
    without = summary["without_local_pair"]
    return (f"mined {summary['pairs']} pairs from {summary['images']} images"
            f"{f' ({without} kept without a local pair: every sentence chose the whole image)' if without else ''}"
            f" ({summary['skipped']} skipped"
            f"{': ' + json.dumps(summary['skipped_reasons']) if summary['skipped'] else ''}); sources "
            f"{json.dumps(summary['sources'])}; mean score {summary['mean_score'] or 0:.3f}; "
            f"{rate or 0:.1f} img/s; stages: {_stages(summary['stage_seconds'])} -> {summary['out']}")


def _stages(seconds: dict[str, float]) -> str:
    return ", ".join(f"{stage} {value:.1f}s" for stage, value in seconds.items())
