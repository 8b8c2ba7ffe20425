"""``goalclip eval``: retrieval Recall@K and joint mAP@K for several models on the same data."""

from __future__ import annotations

import argparse
from typing import Any

from goalclip.cli.common import add_device, add_no_progress, resolve_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    help_text = "retrieval Recall@K and joint mAP@K for one or more models on the same data"
    parser = sub.add_parser("eval", help=help_text, description=help_text)
    parser.add_argument(
        "--model", action="append", required=True, dest="models", metavar="M",
        help="model to evaluate: a hub id, a local folder (CLIPModel + tokenizer + image processor) "
        "or a state-dict file (needs --base); repeat to compare several models in one table",
    )
    parser.add_argument(
        "--base", default=None,
        help="architecture (hub id or folder) that state-dict files given to --model are loaded onto",
    )
    parser.add_argument(
        "--data", required=True,
        help="test manifest (JSON Lines: id, image, caption or captions) for Recall@K both ways",
    )
    parser.add_argument(
        "--joint", default=None,
        help="mined manifest (records with a 'local' pair) for the global-local joint test: global "
        "image + crop and caption + sentence per record, scored with mAP@10 both ways",
    )
    parser.add_argument(
        "--ks", type=int, nargs="+", default=None,
        help="K values for Recall@K (default: 1 5 25 50, or 1 5 10 when records have several captions)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images or texts per forward pass (default: 64)")
    parser.add_argument(
        "--num-workers", type=int, default=0,
        help="DataLoader worker processes decoding images (default: 0 = in process)",
    )
    add_device(parser, "the models")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
        help="weights and activations dtype; embeddings are compared in fp32 either way (default: fp32)",
    )
    parser.add_argument(
        "--cache-dir", default=None,
        help="folder caching embeddings per model + data + max text length + precision, so reruns "
        "and added models do not re-encode (default: no cache)",
    )
    parser.add_argument("--out", default=None, help="write metrics, counts and timing as JSON to this file")
    parser.add_argument(
        "--max-text-len", type=int, default=None,
        help="truncate texts to this many tokens (default and upper bound: each model's own context)",
    )
    add_no_progress(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    """Evaluate, print the Markdown table, return the summary line (empty on non-main processes)."""
    from goalclip.evaluation.retrieval import EvalConfig, evaluate, markdown_table

    config = EvalConfig(
        models=list(args.models), data=args.data, base=args.base, joint=args.joint, ks=args.ks,
        batch_size=args.batch_size, num_workers=args.num_workers, device=resolve_device(args.device),
        precision=args.precision, cache_dir=args.cache_dir, out=args.out, progress=not args.no_progress,
        max_text_len=args.max_text_len,
    )
    results: dict[str, Any] = evaluate(config)
    if not results:
        return ""
    print(markdown_table(results))
    parts = [
        f"{kind}: {s['image_items']} images / {s['text_items']} texts"
        + (f" ({len(s['excluded_ids'])} records excluded)" if s["excluded_ids"] else "")
        for kind, s in results["sets"].items()
    ]
    where = f"; metrics -> {config.out}" if config.out else ""
    return f"evaluated {len(results['models'])} model(s); {'; '.join(parts)}; {results['elapsed_s']:.1f}s{where}"
