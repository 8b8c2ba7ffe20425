"""``goalclip search``: long-text search over an image folder with a cached index."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from goalclip.cli.common import add_device, add_max_image_pixels, add_model, add_no_progress, resolve_device
from goalclip.core.options import INFERENCE_PRECISION_HELP, INFERENCE_PRECISIONS

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    help_text = "long-text search over an image folder with a cached index"
    parser = sub.add_parser("search", help=help_text, description=help_text)
    add_model(parser, "hub id, model folder, or state-dict file (with --base)")
    parser.add_argument("--images", required=True, help="folder of images to search (searched recursively)")
    parser.add_argument("--query", action="append", default=[], help="a text query (repeatable)")
    parser.add_argument("--queries", default=None, help="file with one query per line (blank lines skipped)")
    parser.add_argument("--k", type=int, default=10, help="results per query (default: 10)")
    parser.add_argument("--sheet", default=None, help="also write a contact-sheet PNG of the results here")
    parser.add_argument("--rebuild", action="store_true", help="re-embed every image instead of reusing the index")
    parser.add_argument("--index-dir", default=None, help="where to keep the index (default: DIR/.goalclip-index)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    add_device(parser)
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto",
                        help=f"{INFERENCE_PRECISION_HELP}; each precision keeps its own index (default: auto)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images per forward pass when indexing (default: 64)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images (default: 0)")
    parser.add_argument(
        "--backend", choices=("auto", "faiss", "torch"), default="auto",
        help="exact ranking with faiss IndexFlatIP or torch matmul (default: auto = faiss when installed)",
    )
    add_no_progress(parser)
    add_max_image_pixels(parser)
    parser.set_defaults(func=run)


def _read_queries(args: argparse.Namespace) -> list[str]:
    queries = [q for q in args.query if q.strip()]
    if args.queries:
        path = Path(args.queries)
        if not path.is_file():
            raise ValueError(f"{path}: no such queries file")
        queries.extend(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not queries:
        raise ValueError("no queries: pass --query TEXT (repeatable) or --queries FILE")
    return queries


def run(args: argparse.Namespace) -> str:
    """Index (incrementally), rank, print the hits; optionally a contact sheet and JSON."""
    import torch

    from goalclip.core.images import set_max_image_pixels
    from goalclip.core.manifest import atomic_write
    from goalclip.models.clip import load_clip
    from goalclip.models.precision import describe, inference_precision, resolve_precision
    from goalclip.viz.search import build_index, model_key, search, write_sheet

    queries = _read_queries(args)
    set_max_image_pixels(args.max_image_pixels)
    device = torch.device(resolve_device(args.device))
    bundle = load_clip(args.model, base=args.base, device=device)
    bundle.model.eval()
    precision = resolve_precision(args.precision, device)
    logger.info("searching in %s", describe(precision, bundle.model, device))
    with inference_precision(precision, device):
        index = build_index(
            bundle, args.images, f"{model_key(args.model, args.base)}-{precision}", rebuild=args.rebuild,
            index_dir=args.index_dir, batch_size=args.batch_size, num_workers=args.num_workers,
            progress=not args.no_progress,
        )
        results = search(index, bundle, queries, args.k, backend=args.backend)
    for path, message in index.failed:
        print(f"skipped unreadable image {path}: {message}")
    for query, hits in zip(queries, results):
        print(f"\nquery: {query}")
        for rank, (path, score) in enumerate(hits, start=1):
            print(f"  {rank:>3}. {score:.4f}  {os.path.relpath(path, index.folder)}")
    summary: dict[str, Any] = {
        "model": args.model,
        "images": str(index.folder),
        "indexed": len(index),
        "embedded": index.embedded,
        "reused": index.reused,
        "removed": index.removed,
        "skipped": [{"path": p, "error": m} for p, m in index.failed],
        "results": [
            {"query": q, "hits": [{"path": p, "score": s} for p, s in hits]} for q, hits in zip(queries, results)
        ],
    }
    if args.sheet:
        summary["sheet"] = str(write_sheet(queries, results, args.sheet))
    if args.out:
        with atomic_write(args.out) as handle:
            json.dump(summary, handle, indent=1)
    return (
        f"search: {len(queries)} queries over {len(index)} images "
        f"({index.embedded} embedded, {index.reused} reused, {index.removed} removed, "
        f"{len(index.failed)} unreadable)" + (f"; sheet {summary['sheet']}" if args.sheet else "")
    )
