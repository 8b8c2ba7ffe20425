"""Image lists from a folder or a manifest (captions optional), and seeded samples of them.

``goalclip caption`` and ``goalclip data sample`` start from raw images, so unlike
:func:`~goalclip.core.records.read_manifest` a record here needs only ``id`` and ``image``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from goalclip.core.manifest import IMAGE_SUFFIXES, ManifestError, write_manifest

from goalclip.core.records import iter_objects
from goalclip.core.shards import is_shards

Record = dict[str, Any]


def folder_images(folder: Path) -> list[Record]:
    """Every image under ``folder`` (recursively, sorted); the id is the path without its suffix."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    records, seen = [], {}
    for path in paths:
        rid = path.relative_to(folder).with_suffix("").as_posix()
        if rid in seen:
            raise ValueError(f"{folder}: {seen[rid]} and {path.name} would both get id {rid!r}; rename one")
        seen[rid] = path.name
        records.append({"id": rid, "image": str(path.resolve())})
    if not records:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return records


def manifest_images(path: str | os.PathLike) -> list[Record]:
    """Records of a manifest that may lack captions; ``id`` and ``image`` are checked, other fields kept."""
    records, seen = [], {}
    for where, record, base in iter_objects(path):
        if not isinstance(record.get("id"), str) or not record["id"]:
            raise ManifestError(f"{where}: field 'id' must be a non-empty string")
        if not isinstance(record.get("image"), str) or not record["image"]:
            raise ManifestError(f"{where}: field 'image' must be a path string")
        if record["id"] in seen:
            raise ManifestError(f"{where}: duplicate id {record['id']!r} (first at {seen[record['id']]})")
        seen[record["id"]] = where
        image = Path(record["image"])
        records.append({**record, "image": str(image if image.is_absolute() else base / image)})
    return records


def read_images(source: str | os.PathLike) -> list[Record]:
    """Image records from a folder of images, a JSONL manifest or shards, image paths absolute."""
    if is_shards(source):
        return manifest_images(str(source))
    path = Path(source)
    if path.is_dir():
        return folder_images(path)
    if path.is_file():
        return manifest_images(path)
    raise FileNotFoundError(f"{path}: no such folder or manifest")


def sample_records(records: list[Record], n: int, seed: int) -> list[Record]:
    """A seeded sample of ``n`` records in their original order (all of them when ``n`` is 0 or larger)."""
    if n <= 0 or n >= len(records):
        return list(records)
    keep = set(random.Random(seed).sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i in keep]


def sample_images(source: str | os.PathLike, out: str | os.PathLike, n: int, seed: int = 0) -> dict[str, Any]:
    """Write a seeded sample of ``n`` images of a folder or manifest as a manifest at ``out``."""
    if n < 1:
        raise ValueError(f"the sample size must be at least 1, got {n}")
    records = read_images(source)
    picked = sample_records(records, n, seed)
    write_manifest(out, picked)
    return {"out": str(out), "available": len(records), "written": len(picked), "seed": seed}
