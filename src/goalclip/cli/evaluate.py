"""``goalclip eval``: retrieval Recall@K and joint mAP@K for several models on the same data."""

from __future__ import annotations

import argparse
import os
from typing import Any

from goalclip.cli.common import SHARDS_HELP, add_device, resolve_device
from goalclip.core.options import add_options, values_from_args
from goalclip.evaluation.config import KS_PRESETS, PRECISION_CHOICES, EvalConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    help_text = "retrieval Recall@K and joint mAP@K, or zero-shot classification, for one or more models"
    parser = sub.add_parser("eval", help=help_text, description=help_text)
    _add_models_and_data(parser)
    _add_classify(parser.add_argument_group("zero-shot classification (--task classify)"))
    _add_scores(parser.add_argument_group("what is reported"))
    add_options(parser.add_argument_group("text length"), EvalConfig, ["max_text_len", "context", "keep_positions"])
    _add_running(parser.add_argument_group("encoding"))
    parser.set_defaults(func=run)


def _add_models_and_data(parser: argparse.ArgumentParser) -> None:
    """The task, the rows (--model, --base) and what they are scored on (--data, --joint)."""
    parser.add_argument(
        "--task", choices=("retrieval", "classify"), default="retrieval",
        help="retrieval: Recall@K both ways (+ joint mAP@10 with --joint) on a captioned manifest; classify: "
        "zero-shot top-1/top-5 accuracy on a labelled image set (--data is its folder, see --format) "
        "(default: retrieval)",
    )
    parser.add_argument(
        "--model", action="append", required=True, dest="models", metavar="M",
        help="model to evaluate: a hub id, a local folder (CLIPModel or SiglipModel + tokenizer + image processor) "
        "or a state-dict file (needs --base); a BLIP-2 retrieval checkpoint (model_type blip-2, e.g. "
        "Salesforce/blip2-itm-vit-g: its image-text contrastive score, texts cut at its Q-Former's context); or an "
        "open_clip model (needs goalclip[open_clip]): "
        "open_clip:ARCH/TAG (a pretrained tag, e.g. open_clip:EVA02-B-16/merged2b_s8b_b131k), "
        "open_clip:ARCH:CHECKPOINT (a local checkpoint file), open_clip:hf-hub:ORG/REPO or "
        "open_clip:local-dir:FOLDER; open_clip and BLIP-2 rows use their own tokenizer, image transform and "
        "context and cannot be stretched by --context; repeat to compare several models in one table",
    )
    add_options(parser, EvalConfig, ["base"])
    parser.add_argument(
        "--data", required=True,
        help=f"retrieval: test manifest (JSON Lines: id, image, caption or captions) {SHARDS_HELP}; classify: the "
        "dataset folder",
    )
    add_options(parser, EvalConfig, ["joint"])
    parser.add_argument(
        "--joint-keep-whole", action=argparse.BooleanOptionalAction, default=True,
        help="keep records whose local pair is the whole image (source 'whole' or a box covering the image) "
        "in the joint test, as the authors' published DCI joint test does (211 of its 1,999 pairs are "
        "whole-image); --no-joint-keep-whole drops those "
        "records from the joint test (default: keep)",
    )


def _add_classify(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--format", choices=("imagefolder", "cifar10", "cifar100"), default="imagefolder",
        help="imagefolder (one subfolder per class, e.g. an ImageNet val folder by synset), or the "
        "CIFAR-10/100 Python pickles (test split) (default: imagefolder)",
    )
    group.add_argument(
        "--class-names", default=None,
        help="readable class names: one per line in sorted folder order, 'folder name' lines "
        "(e.g. 'n01440764 tench'), or a JSON object (default: folder names, '_' as spaces)",
    )
    group.add_argument(
        "--templates", default=None,
        help="prompt templates, one per line with {} for the class name (default: a built-in "
        "ensemble of 7 photo prompts)",
    )


def _add_scores(group: argparse._ArgumentGroup) -> None:
    """The K values, and where the table goes besides stdout (--out, --card)."""
    ks = group.add_mutually_exclusive_group()
    ks.add_argument(
        "--ks", type=int, nargs="+", default=None,
        help="K values for Recall@K (default: 1 5 25 50, or 1 5 10 when records have several captions) or "
        "for top-K accuracy (default: 1 5)",
    )
    ks.add_argument(
        "--ks-preset", choices=tuple(KS_PRESETS), default=None,
        help="the K values a paper reports: goal = 1 5 25 50 (GOAL and FAST-GOAL on long captions), "
        "fastgoal-coco = 1 5 10 15 (the K set FAST-GOAL's text names for COCO and Flickr30k; no table of the "
        "paper reports it)",
    )
    add_options(group, EvalConfig, ["out"])
    group.add_argument(
        "--card", action="append", default=[], metavar="MODEL",
        help="a --model folder whose README.md model card gets this evaluation's table (replacing the one an "
        "earlier --card wrote; a folder without a card gets a minimal one); repeatable",
    )


def _add_running(group: argparse._ArgumentGroup) -> None:
    """Where and how the models encode: batches, workers, device, precision, the embedding cache."""
    add_options(group, EvalConfig, ["batch_size", "num_workers"])
    add_device(group, "the models")
    group.add_argument(
        "--precision", choices=PRECISION_CHOICES, default="auto",
        help="weights and activations dtype; embeddings are compared in fp32 either way; auto = bf16 on CUDA, "
        "fp32 elsewhere; fp32 uses TF32 matmuls on CUDA (default: auto)",
    )
    add_options(group, EvalConfig, ["cache_dir", "progress", "max_image_pixels"])


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
    from goalclip.evaluation.retrieval import evaluate, markdown_table, row_names, write_results

    ks = KS_PRESETS[args.ks_preset] if args.ks_preset else args.ks
    config = EvalConfig(**{**values_from_args(args, EvalConfig), "ks": ks, "device": resolve_device(args.device)})
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
    parts.append(_contexts(results, row_names([row["model"] for row in results["models"]])))
    where = f"; metrics -> {config.out}" if config.out else ""
    return f"evaluated {len(results['models'])} model(s); {'; '.join(parts)}; {results['elapsed_s']:.1f}s{where}"


def _contexts(results: dict[str, Any], names: list[str]) -> str:
    """``text context: a 248, blip2 248 (12 cut) tokens``: what each row read of the texts, and how many it cut."""
    contexts = []
    for name, row in zip(names, results["models"]):
        cut = sum(row["truncated_texts"].values())
        contexts.append(f"{name} {row['text_len']}" + (f" ({cut} cut)" if cut else ""))
    return f"text context: {', '.join(contexts)} tokens"


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
        out=args.out, progress=args.progress,
    )
    set_max_image_pixels(args.max_image_pixels)
    results = classify(config)
    print(markdown_table(results))
    _add_cards(args.card, results, args.data)
    where = f"; metrics -> {config.out}" if config.out else ""
    return (f"classified {results['images']} images into {results['classes']} classes with "
            f"{len(results['templates'])} templates, {len(results['models'])} model(s); "
            f"{results['elapsed_s']:.1f}s{where}")
