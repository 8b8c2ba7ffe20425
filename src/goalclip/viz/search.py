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

import json
import logging
import os
import re
import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from goalclip.core.fingerprint import digest_of, fingerprint
from goalclip.core.images import ImageError, load_rgb
from goalclip.core.manifest import IMAGE_SUFFIXES, atomic_write
from goalclip.models.clip import ClipBundle
from goalclip.models.embed import embed_image_files, embed_text_strings

logger = logging.getLogger(__name__)

INDEX_DIRNAME = ".goalclip-index"
INDEX_VERSION = 1


class SearchError(ValueError):
    """Search cannot run: no images or no queries; the message says which."""


# ----------------------------------------------------------------------------- models


def model_key(source: str, base: str | None = None) -> str:
    """A file-name-safe key for a model: its name plus a digest of its fingerprint (and its base's).

    The fingerprint covers every file's size and mtime (``core.fingerprint``, shared with the eval
    cache), so retraining into the same folder, or changing its image processor, gives a new key
    and therefore a fresh index. Hub ids hash the id only: pass ``--rebuild`` after the hub copy changes.
    """
    digest = digest_of([fingerprint(source), fingerprint(base)], length=12)
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
    files: Sequence[str | os.PathLike] | None = None,
) -> Index:
    """Embed the folder's images (or ``files``, all under it), reusing cached rows whose size and mtime are unchanged.

    Only new or changed files go through the model; files gone from the folder drop out of
    the index. Unreadable images are skipped (logged, listed in ``Index.failed``) and retried
    next time, so fixing a file is enough to get it indexed. An empty folder, or one whose
    images are all unreadable, is an error rather than an index that silently finds nothing.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SearchError(f"{root}: not a folder")
    files = list_images(root) if files is None else [Path(f) for f in files]
    if not files:
        raise SearchError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    cache_dir = Path(index_dir) if index_dir is not None else root / INDEX_DIRNAME
    dim = bundle.embed_dim
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
        embeddings, ok, bad = embed_image_files(
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
    query_embeddings = embed_text_strings(bundle, list(queries), desc="queries", warn_truncated=True).cpu()
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
