"""Text-to-image search over a folder of images with a cached, incremental embedding index.

``goalclip search --model M --images DIR --query "..."`` is the quickest way to feel what a
fine-tuned model learned: type a long, detailed description and look at what comes back.

The folder's images are embedded once and cached next to them
(``DIR/.goalclip-index/<model-key>.safetensors`` plus a JSON listing path, size and mtime per
row). The next run re-embeds only new or changed files and drops removed ones, so searching a
large photo folder again costs one text forward. The model key hashes the model's files, so a
retrained checkpoint in the same folder gets a fresh index instead of stale embeddings.

Ranking is exact inner product of L2-normalised embeddings (cosine): faiss ``IndexFlatIP`` when
it is importable, a torch matmul + topk otherwise; both give the same results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from goalclip.core.images import ImageError, load_rgb
from goalclip.core.manifest import IMAGE_SUFFIXES, atomic_write
from goalclip.models.clip import ClipBundle, load_clip
from goalclip.models.embed import encode_images, encode_texts

logger = logging.getLogger(__name__)

INDEX_DIRNAME = ".goalclip-index"
INDEX_VERSION = 1


class SearchError(ValueError):
    """Search cannot run: no images or no queries; the message says which."""


# ----------------------------------------------------------------------------- models


def model_key(source: str, base: str | None = None) -> str:
    """A file-name-safe key for a model: its name plus a hash of its files' sizes and mtimes.

    Hashing the files (not just the path) means that retraining into the same folder, or
    changing its image processor, gives a new key and therefore a fresh index. Hub ids hash
    the id only: pass ``--rebuild`` after the hub copy changes.
    """
    parts: list[str] = []
    for item in (source, base):
        if not item:
            continue
        path = Path(item)
        if path.exists():
            parts.append(str(path.resolve()))
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            for file in files:
                stat = file.stat()
                parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
        else:
            parts.append(item)
    digest = hashlib.sha1("\n".join(parts).encode("utf-8")).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.rstrip("/\\")).name or "model")[:40]
    return f"{stem}-{digest}"


# ----------------------------------------------------------------------------- index


@dataclass
class Index:
    """Embeddings of a folder's readable images, with what the last build did.

    ``paths`` are absolute; ``embeddings`` are L2-normalised float32 rows on the CPU, in the
    same order. ``embedded``/``reused``/``removed`` count this build's work, which is how the
    incremental behaviour is observed (and tested).
    """

    folder: Path
    model_key: str
    paths: list[str]
    embeddings: torch.Tensor
    embedded: int = 0
    reused: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), skipping hidden folders such as the index."""
    root = Path(folder)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _index_files(index_dir: Path, key: str) -> tuple[Path, Path]:
    return index_dir / f"{key}.safetensors", index_dir / f"{key}.json"


def _load_cache(index_dir: Path, key: str, dim: int) -> dict[str, tuple[tuple[int, int], torch.Tensor]]:
    """Cached rows by relative path; an inconsistent or foreign cache is ignored with a warning."""
    from safetensors import safe_open

    tensor_file, listing_file = _index_files(index_dir, key)
    if not (tensor_file.is_file() and listing_file.is_file()):
        return {}
    try:
        listing = json.loads(listing_file.read_text(encoding="utf-8"))
        with safe_open(str(tensor_file), framework="pt") as handle:
            token = (handle.metadata() or {}).get("token")
            embeddings = handle.get_tensor("embeddings")
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable index %s (%s); rebuilding", listing_file, exc)
        return {}
    rows = listing.get("rows", [])
    if (
        listing.get("version") != INDEX_VERSION
        or listing.get("token") != token
        or embeddings.ndim != 2
        or embeddings.shape != (len(rows), dim)
    ):
        logger.warning("index %s does not match its embeddings or this model; rebuilding", listing_file)
        return {}
    return {row["path"]: ((int(row["size"]), int(row["mtime_ns"])), embeddings[i]) for i, row in enumerate(rows)}


def _save_cache(
    index_dir: Path, key: str, rel_paths: list[str], signatures: list[tuple[int, int]], embeddings: torch.Tensor
) -> None:
    """Write embeddings then listing, tied by a random token so a crash between the two is detected."""
    from safetensors.torch import save

    token = uuid.uuid4().hex
    tensor_file, listing_file = _index_files(index_dir, key)
    with atomic_write(tensor_file, "wb") as handle:
        handle.write(save({"embeddings": embeddings.contiguous()}, metadata={"token": token}))
    listing = {
        "version": INDEX_VERSION,
        "model_key": key,
        "token": token,
        "dim": int(embeddings.shape[1]),
        "rows": [{"path": p, "size": s, "mtime_ns": m} for p, (s, m) in zip(rel_paths, signatures)],
    }
    with atomic_write(listing_file) as handle:
        json.dump(listing, handle, indent=1)


def build_index(
    bundle: ClipBundle,
    folder: str | os.PathLike,
    model_key: str,
    *,
    rebuild: bool = False,
    index_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> Index:
    """Embed the folder's images, reusing cached rows whose file size and mtime are unchanged.

    Only new or changed files go through the model; files gone from the folder drop out of
    the index. Unreadable images are skipped (logged, listed in ``Index.failed``) and retried
    next time, so fixing a file is enough to get it indexed. An empty folder, or one whose
    images are all unreadable, is an error rather than an index that silently finds nothing.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SearchError(f"{root}: not a folder")
    files = list_images(root)
    if not files:
        raise SearchError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    cache_dir = Path(index_dir) if index_dir is not None else root / INDEX_DIRNAME
    dim = int(bundle.model.config.projection_dim)
    cached = {} if rebuild else _load_cache(cache_dir, model_key, dim)

    rel_paths = [p.relative_to(root).as_posix() for p in files]
    signatures = [_signature(p) for p in files]
    rows: dict[int, torch.Tensor] = {}
    todo: list[int] = []
    for i, (rel, sig) in enumerate(zip(rel_paths, signatures)):
        hit = cached.get(rel)
        if hit is not None and hit[0] == sig:
            rows[i] = hit[1]
        else:
            todo.append(i)
    reused = len(rows)
    removed = len(set(cached) - set(rel_paths))

    failed: list[tuple[str, str]] = []
    if todo:
        logger.info("embedding %d new or changed images (%d reused from the index)", len(todo), reused)
        embeddings, ok, bad = encode_images(
            bundle, [str(files[i]) for i in todo], batch_size=batch_size, num_workers=num_workers, progress=progress
        )
        for row, local in zip(embeddings, ok):
            rows[todo[local]] = row
        failed = [(str(files[todo[local]]), message) for local, message in bad]
    if not rows:
        raise SearchError(f"{root}: none of the {len(files)} image files could be read")

    order = sorted(rows)
    matrix = torch.stack([rows[i] for i in order]).float()
    if todo or removed or rebuild:
        try:
            _save_cache(cache_dir, model_key, [rel_paths[i] for i in order], [signatures[i] for i in order], matrix)
        except OSError as exc:
            logger.warning("could not write the index to %s (%s); it will be rebuilt next time", cache_dir, exc)
    return Index(
        folder=root.resolve(),
        model_key=model_key,
        paths=[str(files[i].resolve()) for i in order],
        embeddings=matrix,
        embedded=len(todo) - len(failed),
        reused=reused,
        removed=removed,
        failed=failed,
    )


# ----------------------------------------------------------------------------- ranking


def _faiss_topk(embeddings: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexFlatIP(int(embeddings.shape[1]))
    index.add(embeddings.float().numpy())
    scores, ids = index.search(queries.float().numpy(), k)
    return torch.from_numpy(scores), torch.from_numpy(ids)


def topk_inner_product(
    embeddings: torch.Tensor, queries: torch.Tensor, k: int, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product: ``(scores [Q, k], indices [Q, k])``, best first.

    ``backend``: ``"faiss"`` (must be importable), ``"torch"``, or ``"auto"`` (faiss if present).
    Both are exact; faiss is just faster on large CPU galleries.
    """
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be auto, faiss or torch, got {backend!r}")
    k = min(k, int(embeddings.shape[0]))
    if backend in ("auto", "faiss"):
        found = _faiss_topk(embeddings, queries, k)
        if found is not None:
            return found
        if backend == "faiss":
            raise SearchError("backend 'faiss' requested but faiss is not installed (pip install faiss-cpu)")
    scores, ids = (queries.float() @ embeddings.float().T).topk(k, dim=1)
    return scores, ids


def search(
    index: Index, bundle: ClipBundle, queries: Sequence[str], k: int = 10, *, backend: str = "auto"
) -> list[list[tuple[str, float]]]:
    """Top-k ``(image path, cosine score)`` per query, best first."""
    if not queries:
        return []
    if k < 1:
        raise SearchError(f"k must be at least 1, got {k}")
    query_embeddings = encode_texts(bundle, list(queries), desc="queries", warn_truncated=True).cpu()
    scores, ids = topk_inner_product(index.embeddings, query_embeddings, k, backend=backend)
    return [
        [(index.paths[int(i)], float(s)) for s, i in zip(row_scores, row_ids)]
        for row_scores, row_ids in zip(scores, ids)
    ]


# ----------------------------------------------------------------------------- contact sheet


def write_sheet(
    queries: Sequence[str], results: Sequence[Sequence[tuple[str, float]]], out: str | os.PathLike, *, thumb: int = 160
) -> Path:
    """A contact sheet: one row per query, titled with the query, thumbnails with their scores."""
    from matplotlib.figure import Figure

    k = max((len(r) for r in results), default=1)
    rows = max(len(queries), 1)
    fig = Figure(figsize=(1.9 * k, 2.6 * rows), layout="constrained")
    subfigs = fig.subfigures(rows, 1, squeeze=False)[:, 0]
    for subfig, query, hits in zip(subfigs, queries, results):
        subfig.suptitle(textwrap.fill(query, width=28 * k // 2, max_lines=3, placeholder=" …"), fontsize=9)
        axes = subfig.subplots(1, k, squeeze=False)[0]
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
        for rank, (ax, (path, score)) in enumerate(zip(axes, hits), start=1):
            ax.set_xlabel(f"#{rank}  {score:.3f}\n{textwrap.shorten(Path(path).name, 24)}", fontsize=7)
            try:
                image = load_rgb(path)
            except ImageError as exc:
                logger.warning("sheet: %s", exc)
                continue
            image.thumbnail((thumb, thumb))
            ax.imshow(image)
    out = Path(out)
    with atomic_write(out, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    return out


# ----------------------------------------------------------------------------- command line


def add_search_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``goalclip search``."""
    parser.add_argument("--model", required=True, help="hub id, model folder, or state-dict file (with --base)")
    parser.add_argument("--base", default=None, help="architecture to load a bare state-dict --model into")
    parser.add_argument("--images", required=True, help="folder of images to search (searched recursively)")
    parser.add_argument("--query", action="append", default=[], help="a text query (repeatable)")
    parser.add_argument("--queries", default=None, help="file with one query per line (blank lines skipped)")
    parser.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--sheet", default=None, help="also write a contact-sheet PNG of the results here")
    parser.add_argument("--rebuild", action="store_true", help="re-embed every image instead of reusing the index")
    parser.add_argument("--index-dir", default=None, help="where to keep the index (default DIR/.goalclip-index)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass when indexing")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    parser.add_argument(
        "--backend",
        choices=("auto", "faiss", "torch"),
        default="auto",
        help="exact ranking with faiss IndexFlatIP or torch matmul (auto: faiss when installed)",
    )
    return parser


def _read_queries(args: argparse.Namespace) -> list[str]:
    queries = [q for q in args.query if q.strip()]
    if args.queries:
        path = Path(args.queries)
        if not path.is_file():
            raise SearchError(f"{path}: no such queries file")
        queries.extend(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not queries:
        raise SearchError("no queries: pass --query TEXT (repeatable) or --queries FILE")
    return queries


def run_search(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``goalclip search``: index (incrementally), rank, print, optionally sheet and JSON."""
    queries = _read_queries(args)
    bundle = load_clip(args.model, base=args.base, device=args.device)
    bundle.model.eval()
    index = build_index(
        bundle,
        args.images,
        model_key(args.model, args.base),
        rebuild=args.rebuild,
        index_dir=args.index_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=True,
    )
    for path, message in index.failed:
        print(f"skipped unreadable image {path}: {message}")
    results = search(index, bundle, queries, args.k, backend=args.backend)
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
    print(
        f"search: {len(queries)} queries over {len(index)} images "
        f"({index.embedded} embedded, {index.reused} reused, {index.removed} removed, "
        f"{len(index.failed)} unreadable)" + (f"; sheet {summary['sheet']}" if args.sheet else "")
    )
    return summary
