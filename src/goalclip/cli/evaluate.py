"""``goalclip eval``: retrieval Recall@K and joint mAP@K for several models on the same data."""

from __future__ import annotations

import argparse
import os
from typing import Any

from goalclip.cli.common import SHARDS_HELP, add_device, add_max_image_pixels, add_no_progress, resolve_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    help_text = "retrieval Recall@K and joint mAP@K, or zero-shot classification, for one or more models"
    parser = sub.add_parser("eval", help=help_text, description=help_text)
    parser.add_argument(
        "--task", choices=("retrieval", "classify"), default="retrieval",
        help="retrieval: Recall@K both ways (+ joint mAP@10 with --joint) on a captioned manifest; classify: "
        "zero-shot top-1/top-5 accuracy on a labelled image set (--data is its folder, see --format) "
        "(default: retrieval)",
    )
    parser.add_argument(
        "--model", action="append", required=True, dest="models", metavar="M",
        help="model to evaluate: a hub id, a local folder (CLIPModel + tokenizer + image processor) "
        "or a state-dict file (needs --base); or an open_clip model (needs goalclip[open_clip]): "
        "open_clip:ARCH/TAG (a pretrained tag, e.g. open_clip:EVA02-B-16/merged2b_s8b_b131k), "
        "open_clip:ARCH:CHECKPOINT (a local checkpoint file), open_clip:hf-hub:ORG/REPO or "
        "open_clip:local-dir:FOLDER; open_clip rows use their own tokenizer, image transform and context "
        "and cannot be stretched by --context; repeat to compare several models in one table",
    )
    parser.add_argument(
        "--base", default=None,
        help="architecture (hub id or folder) that state-dict files given to --model are loaded onto",
    )
    parser.add_argument(
        "--data", required=True,
        help=f"retrieval: test manifest (JSON Lines: id, image, caption or captions) {SHARDS_HELP}; classify: the "
        "dataset folder",
    )
    parser.add_argument(
        "--format", choices=("imagefolder", "cifar10", "cifar100"), default="imagefolder",
        help="classify: imagefolder (one subfolder per class, e.g. an ImageNet val folder by synset), or the "
        "CIFAR-10/100 Python pickles (test split) (default: imagefolder)",
    )
    parser.add_argument(
        "--class-names", default=None,
        help="classify: readable class names: one per line in sorted folder order, 'folder name' lines "
        "(e.g. 'n01440764 tench'), or a JSON object (default: folder names, '_' as spaces)",
    )
    parser.add_argument(
        "--templates", default=None,
        help="classify: prompt templates, one per line with {} for the class name (default: a built-in "
        "ensemble of 7 photo prompts)",
    )
    parser.add_argument(
        "--joint", default=None,
        help="manifest with a 'local' pair per record for the global-local joint test: the whole image and "
        "its local item (the crop of local.box, or the crop FILE local.image, as in the GOAL authors' "
        "published joint test) and the captions + local.sentence per record, scored with mAP@10 both ways; "
        "as in the papers, every global/local text of a record is relevant to every global/local image of it",
    )
    parser.add_argument(
        "--joint-keep-whole", action=argparse.BooleanOptionalAction, default=True,
        help="keep records whose local pair is the whole image (source 'whole' or a box covering the image) "
        "in the joint test, as the authors' published DCI joint test does (211 of its 1,999 pairs are "
        "whole-image); --no-joint-keep-whole drops those "
        "records from the joint test (default: keep)",
    )
    ks = parser.add_mutually_exclusive_group()
    ks.add_argument(
        "--ks", type=int, nargs="+", default=None,
        help="K values for Recall@K (default: 1 5 25 50, or 1 5 10 when records have several captions) or "
        "for top-K accuracy (default: 1 5)",
    )
    ks.add_argument(
        "--ks-preset", choices=("goal", "fastgoal-coco"), default=None,
        help="the K values a paper reports: goal = 1 5 25 50 (GOAL and FAST-GOAL on long captions), "
        "fastgoal-coco = 1 5 10 15 (the K set FAST-GOAL's text names for COCO and Flickr30k; no table of the "
        "paper reports it)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images or texts per forward pass (default: 64)")
    parser.add_argument(
        "--num-workers", type=int, default=0,
        help="DataLoader worker processes decoding images (default: 0 = in process)",
    )
    add_device(parser, "the models")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
        help="weights and activations dtype; embeddings are compared in fp32 either way; auto = bf16 on CUDA, "
        "fp32 elsewhere; fp32 uses TF32 matmuls on CUDA (default: auto)",
    )
    parser.add_argument(
        "--cache-dir", default=None,
        help="folder caching embeddings per model + data + max text length + precision, so reruns "
        "and added models do not re-encode (default: no cache)",
    )
    parser.add_argument("--out", default=None, help="write metrics, counts and timing as JSON to this file")
    parser.add_argument(
        "--card", action="append", default=[], metavar="MODEL",
        help="a --model folder whose README.md model card gets this evaluation's table (replacing the one an "
        "earlier --card wrote; a folder without a card gets a minimal one); repeatable",
    )
    parser.add_argument(
        "--max-text-len", type=int, default=None,
        help="truncate texts to this many tokens (default and upper bound: each model's own context; "
        "open_clip rows other than CLIP-tokenizer ones only at their own context)",
    )
    parser.add_argument(
        "--context", type=int, default=None,
        help="evaluate every model at this many text positions, as the papers do (248 even for stock CLIP): "
        "a model with a shorter context is stretched Long-CLIP style first (the stretch 'goalclip train' "
        "applies: 77 -> 248 with keep 20, at most 4L - 3*keep), a longer one is left alone, and texts are cut "
        "at this length for every model; an open_clip row shorter than this is an error, it is not stretched "
        "(default: each model's own context)",
    )
    parser.add_argument(
        "--keep-positions", type=int, default=20,
        help="with --context: leading positions copied unchanged by the stretch; must be smaller than "
        "--context and than the model's own context minus 1 (default: 20, for 77-position CLIP; "
        "tiny test models need less, e.g. 2)",
    )
    add_no_progress(parser)
    add_max_image_pixels(parser)
    parser.set_defaults(func=run)


def _check_cards(args: argparse.Namespace) -> None:
    """Before any work: every --card must be one of the --model folders."""
    models = {os.path.realpath(m) for m in args.models}
    for card in args.card:
        if os.path.realpath(card) not in models or not os.path.isdir(card):
            raise ValueError(f"--card {card}: not one of the --model folders evaluated")


def _add_cards(cards: list[str], results: dict[str, Any], data: str) -> None:
    """Write each --card model's row of the results into its model card."""
    from goalclip.evaluation.retrieval import markdown_table
    from goalclip.models.card import add_eval_table

    for card in cards:
        rows = [row for row in results["models"] if os.path.realpath(row["model"]) == os.path.realpath(card)]
        path = add_eval_table(card, markdown_table({**results, "models": rows}), data)
        print(f"model card: {path}", flush=True)


def run(args: argparse.Namespace) -> str:
    """Evaluate, print the Markdown table, return the summary line (empty on non-main processes)."""
    _check_cards(args)
    if args.task == "classify":
        return run_classify(args)
    from goalclip.evaluation.retrieval import KS_PRESETS, EvalConfig, evaluate, markdown_table, write_results

    ks = KS_PRESETS[args.ks_preset] if args.ks_preset else args.ks
    config = EvalConfig(
        models=list(args.models), data=args.data, base=args.base, joint=args.joint, ks=ks,
        batch_size=args.batch_size, num_workers=args.num_workers, device=resolve_device(args.device),
        precision=args.precision, cache_dir=args.cache_dir, out=args.out, progress=not args.no_progress,
        max_text_len=args.max_text_len, max_image_pixels=args.max_image_pixels,
        context=args.context, keep_positions=args.keep_positions, joint_keep_whole=args.joint_keep_whole,
    )
    results: dict[str, Any] = evaluate(config, write_out=False)
    if not results:
        return ""
    print(markdown_table(results), flush=True)  # before writing: a failed write must not lose the numbers
    if config.out is not None:
        write_results(results, config.out)
    _add_cards(args.card, results, args.data)
    parts = [
        f"{kind}: {s['image_items']} images / {s['text_items']} texts"
        + (f" ({len(s['excluded_ids'])} records excluded)" if s["excluded_ids"] else "")
        for kind, s in results["sets"].items()
    ]
    where = f"; metrics -> {config.out}" if config.out else ""
    return f"evaluated {len(results['models'])} model(s); {'; '.join(parts)}; {results['elapsed_s']:.1f}s{where}"


def run_classify(args: argparse.Namespace) -> str:
    from goalclip.core.images import set_max_image_pixels
    from goalclip.evaluation.classify import CLASSIFY_KS, ClassifyConfig, classify
    from goalclip.evaluation.retrieval import markdown_table

    if args.joint:
        raise ValueError("--joint belongs to --task retrieval")
    if args.ks_preset or args.context:
        raise ValueError("--ks-preset and --context belong to --task retrieval")
    config = ClassifyConfig(
        models=list(args.models), data=args.data, format=args.format, base=args.base,
        class_names=args.class_names, templates=args.templates, ks=args.ks or CLASSIFY_KS,
        batch_size=args.batch_size, num_workers=args.num_workers, device=resolve_device(args.device),
        out=args.out, progress=not args.no_progress,
    )
    set_max_image_pixels(args.max_image_pixels)
    results = classify(config)
    print(markdown_table(results))
    _add_cards(args.card, results, args.data)
    where = f"; metrics -> {config.out}" if config.out else ""
    return (f"classified {results['images']} images into {results['classes']} classes with "
            f"{len(results['templates'])} templates, {len(results['models'])} model(s); "
            f"{results['elapsed_s']:.1f}s{where}")
