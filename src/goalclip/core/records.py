"""Records from a JSONL manifest or WebDataset shards alike: every command reads its ``--data`` here.

Above both formats (:mod:`goalclip.core.manifest` for JSONL, :mod:`goalclip.core.shards` for tar
shards), so neither reader imports the other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from goalclip.core.manifest import ManifestError, SkipReport, iter_jsonl, validate_record
from goalclip.core.shards import image_exists, is_shards, iter_shard_objects


def iter_objects(
    path: str | os.PathLike, *, skipped: SkipReport | None = None
) -> Iterator[tuple[str, dict[str, Any], Path]]:
    """``(where, object, folder)`` of a JSONL manifest or of WebDataset shards (see
    :mod:`goalclip.core.shards`): ``where`` is ``file:line`` or ``shard:member``, and relative image
    paths start from ``folder``. Bad lines/members raise, or are counted in ``skipped`` (see
    :func:`iter_jsonl`)."""
    if is_shards(path):
        yield from iter_shard_objects(str(path), skipped=skipped)
        return
    base = Path(path).resolve().parent
    for lineno, obj in iter_jsonl(path, skipped=skipped):
        yield f"{path}:{lineno}", obj, base


def iter_records(
    path: str | os.PathLike,
    *,
    skip_invalid: bool = False,
    skipped: SkipReport | None = None,
    check_images: bool = False,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for each valid record; ``where`` is ``file:line`` (or
    ``shard:member`` for shards) for messages.

    Invalid records raise ManifestError (file:line: field) unless ``skip_invalid``, in which case
    they are counted in ``skipped``. Duplicate ids are always an error: they would silently shift
    ground truth in evaluation. Image paths are made absolute; ``check_images`` also requires
    each image file (or shard member) to exist.
    """
    seen: dict[str, str] = {}
    if skip_invalid and skipped is None:
        skipped = SkipReport()
    for where, record, base in iter_objects(path, skipped=skipped if skip_invalid else None):
        try:
            validate_record(record, where)
            record["image"] = str(base / record["image"])  # an absolute path stays as it is
            if isinstance(record.get("local"), dict) and "image" in record["local"]:  # a crop file
                record["local"]["image"] = str(base / record["local"]["image"])
            if check_images and not image_exists(record["image"]):
                raise ManifestError(f"{where}: field 'image': file not found: {record['image']}")
        except ManifestError as exc:
            if not skip_invalid:
                raise
            if skipped is not None:
                skipped.add(str(exc))
            continue
        if record["id"] in seen:
            raise ManifestError(f"{where}: duplicate id {record['id']!r} (first at {seen[record['id']]})")
        seen[record["id"]] = where
        yield where, record


def read_manifest(
    path: str | os.PathLike,
    *,
    skip_invalid: bool = False,
    skipped: SkipReport | None = None,
    check_images: bool = False,
) -> list[dict[str, Any]]:
    """Read and validate a whole captioned/mined manifest (see ``iter_records``)."""
    return [
        record
        for _, record in iter_records(path, skip_invalid=skip_invalid, skipped=skipped, check_images=check_images)
    ]
