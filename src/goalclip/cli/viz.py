"""``goalclip viz``: attention maps, retrieval grids and mined pairs as PNG files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from goalclip.cli.common import add_device, add_max_image_pixels, add_model, add_no_progress, resolve_device


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True,
                        help="hub id, model folder or state-dict file; repeat to compare checkpoints")
    parser.add_argument("--label", action="append", default=None,
                        help="name shown for each --model, in the same order (default: folder names)")
    parser.add_argument("--base", default=None, help="architecture to load bare state-dict models into")
    add_device(parser, "the models")
    add_no_progress(parser)
    add_max_image_pixels(parser)


def add_parser(sub: argparse._SubParsersAction) -> None:
    help_text = "attention maps, retrieval grids and mined pairs as PNG files"
    parser = sub.add_parser("viz", help=help_text, description=help_text)
    viz_sub = parser.add_subparsers(dest="viz_command", required=True, metavar="{attention,retrieval,errors,pairs}")

    attention = viz_sub.add_parser(
        "attention", help="CLS attention and patch-PCA maps, models side by side",
        description="For each image and model: the last layer's CLS-to-patch attention and the top-3 principal "
        "components of the patch tokens as RGB (the attention and PCA figures of GOAL / FAST-GOAL); with --kind "
        "pca, the top-3 principal components of a layer's self-attention as RGB (FAST-GOAL's Fig. 5).")
    _model_options(attention)
    attention.add_argument("--images", nargs="+", required=True,
                           help="image files, or a folder whose images are used (sorted)")
    attention.add_argument("--limit", type=int, default=8, help="at most this many images (default: 8)")
    attention.add_argument(
        "--kind", choices=("cls", "patch", "pca"), default="cls",
        help="cls: the CLS token's attention to each patch; patch: the mean "
        "attention each patch receives from all patches (the maps the GOAL authors' code draws); pca: the top-3 "
        "principal components of the self-attention itself (each patch's attention row over the patches) as RGB "
        "(FAST-GOAL's Fig. 5) (default: cls)")
    attention.add_argument("--layer", type=int, default=-1,
                           help="with --kind pca: the vision layer whose attention is drawn, from 0; negative "
                           "counts from the last (default: -1, the last)")
    attention.add_argument("--out", required=True, help="output PNG")
    attention.set_defaults(func=run_attention)

    retrieval = viz_sub.add_parser("retrieval", help="text->image top-k grids and image->text captions")
    _model_options(retrieval)
    retrieval.add_argument("--data", required=True, help="captioned-image manifest (JSON Lines)")
    retrieval.add_argument("--queries", type=int, default=4, help="number of caption queries (default: 4)")
    retrieval.add_argument("--k", type=int, default=5, help="images shown per query and model (default: 5)")
    retrieval.add_argument("--seed", type=int, default=0, help="seed choosing the queries (default: 0)")
    retrieval.add_argument("--out", required=True, help="output PNG; ranks go to the same name with .json")
    retrieval.set_defaults(func=run_retrieval)

    errors = viz_sub.add_parser(
        "errors", help="the most confident image->text mistakes, with the words that differ marked",
        description="For each image, retrieve the top caption; draw the failures with the largest margin "
        "(retrieved score minus the best own-caption score) with ground truth vs retrieved caption, differing "
        "words highlighted (FAST-GOAL's error-analysis figure). The full list goes to the same name with .json.")
    add_model(errors, "hub id, model folder or state-dict file (with --base)")
    add_device(errors)
    add_no_progress(errors)
    add_max_image_pixels(errors)
    errors.add_argument("--data", required=True, help="captioned-image manifest (JSON Lines)")
    errors.add_argument("--limit", type=int, default=8, help="failures drawn, largest margin first (default: 8)")
    errors.add_argument("--out", required=True, help="output PNG; the failure list goes to the same name with .json")
    errors.set_defaults(func=run_errors)

    pairs = viz_sub.add_parser("pairs", help="mined local pairs: box on the image with sentence, score, source")
    pairs.add_argument("--data", required=True, help="mined-pairs manifest (JSON Lines with 'local')")
    pairs.add_argument("--limit", type=int, default=50, help="at most this many pairs (default: 50)")
    pairs.add_argument("--out", required=True, help="output folder for one PNG per pair")
    add_max_image_pixels(pairs)
    pairs.set_defaults(func=run_pairs)


def _limit_image_pixels(args: argparse.Namespace) -> None:
    from goalclip.core.images import set_max_image_pixels

    set_max_image_pixels(args.max_image_pixels)


def run_attention(args: argparse.Namespace) -> str:
    _limit_image_pixels(args)
    from goalclip.viz.drawing import expand_images
    from goalclip.viz.figures import plot_attention

    images = expand_images(args.images, args.limit)
    result = plot_attention(args.model, images, args.out, args.label, base=args.base,
                            device=resolve_device(args.device), kind=args.kind, layer=args.layer)
    return f"viz attention: {len(images)} images x {len(args.model)} models -> {result['out']}"


def run_retrieval(args: argparse.Namespace) -> str:
    _limit_image_pixels(args)
    import numpy as np

    from goalclip.core.manifest import atomic_write
    from goalclip.viz.figures import plot_retrieval

    result = plot_retrieval(args.model, args.data, args.out, queries=args.queries, k=args.k, seed=args.seed,
                            labels=args.label, base=args.base, device=resolve_device(args.device))
    ranks_file = Path(args.out).with_suffix(".json")
    with atomic_write(ranks_file) as handle:
        json.dump(result, handle, indent=1)
    hits = ", ".join(
        f"{name} R@1 {np.mean([row[0] for row in result['t2i'][name]['hits']]):.2f}" for name in result["models"]
    )
    return f"viz retrieval: {len(result['queries'])} queries ({hits}) -> {result['out']}, ranks {ranks_file}"


def run_pairs(args: argparse.Namespace) -> str:
    _limit_image_pixels(args)
    from goalclip.viz.pairs import plot_pairs

    files = plot_pairs(args.data, args.out, limit=args.limit)
    return f"viz pairs: {len(files)} pairs -> {args.out}"


def run_errors(args: argparse.Namespace) -> str:
    _limit_image_pixels(args)
    from goalclip.viz.errors import plot_errors

    result = plot_errors(args.model, args.data, args.out, limit=args.limit, base=args.base,
                         device=resolve_device(args.device), progress=not args.no_progress)
    return (f"viz errors: {result['failures']} of {result['images']} images fail image->text; "
            f"{len(result['shown'])} drawn -> {result['out']}")
