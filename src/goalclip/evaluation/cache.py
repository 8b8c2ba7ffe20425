"""The embedding cache of ``goalclip eval --cache-dir``: one safetensors file per model and item set.

Embeddings are keyed on the model + manifest + the bytes of its images + text length + precision, so
recomputing a metric or adding a model to a table never re-encodes the others, and an image changed
in place is never scored from stale embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from goalclip.core.fingerprint import digest_of, fingerprint
from goalclip.core.manifest import atomic_write
from goalclip.evaluation.config import EvalConfig
from goalclip.evaluation.gallery import Embeddings
from goalclip.evaluation.items import EvalItems
from goalclip.models.open_clip import is_open_clip, spec_fingerprint

# Bumped whenever the cached content, its meaning or its key changes, so old caches are never misread.
CACHE_VERSION = 3


def cache_path(config: EvalConfig, source: str, items: EvalItems) -> Path | None:
    """Where one model's embeddings of one item set are cached (None when caching is off)."""
    if config.cache_dir is None:
        return None
    key = {
        "version": CACHE_VERSION,
        "kind": items.kind,
        "model": spec_fingerprint(source) if is_open_clip(source) else fingerprint(source),
        "base": fingerprint(config.base) if Path(source).is_file() else None,
        "data": items.data_key,
        "max_text_len": config.max_text_len,
        "precision": config.precision,
        # the stretch changes the model; None when no stretch is asked for (old keys stay valid)
        "context": [config.context, config.keep_positions] if config.context is not None else None,
    }
    return Path(config.cache_dir) / f"{items.kind}-{digest_of(key)}.safetensors"


def save_embeddings(path: Path, embeddings: Embeddings) -> None:
    """Write embeddings atomically as safetensors; failures and counts go in the metadata."""
    from safetensors.torch import save

    tensors = {
        "images": embeddings.images.contiguous(),
        "image_ok": embeddings.image_ok.contiguous(),
        "texts": embeddings.texts.contiguous(),
    }
    metadata = {
        "failures": json.dumps(embeddings.failures),
        "truncated": str(embeddings.truncated),
        "text_len": str(embeddings.text_len),
    }
    with atomic_write(path, "wb") as handle:
        handle.write(save(tensors, metadata=metadata))


def load_embeddings(path: Path) -> Embeddings:
    """Read embeddings written by ``save_embeddings``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in ("images", "image_ok", "texts")}
    return Embeddings(
        images=tensors["images"],
        image_ok=tensors["image_ok"],
        texts=tensors["texts"],
        failures=[(int(i), str(m)) for i, m in json.loads(metadata["failures"])],
        truncated=int(metadata["truncated"]),
        text_len=int(metadata["text_len"]),
        cached=True,
    )


def cache_hit(state: PartialState, path: Path | None) -> bool:
    """Whether ``path`` exists, decided by the main process so every process takes the same branch."""
    hit = [path is not None and path.is_file()]
    if state.num_processes > 1:
        broadcast_object_list(hit)
    return bool(hit[0])

