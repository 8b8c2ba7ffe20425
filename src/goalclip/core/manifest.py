"""JSON Lines manifests: reading with line-numbered errors, validation, atomic writing.

Every command reads and writes the same record shapes (see DESIGN.md "Data formats"):

- captioned image: ``{"id", "image", "caption"}`` or ``{"id", "image", "captions": [...]}``
- mined pair: the above plus ``"local": {"sentence", "box", "score", "source"}`` and ``"candidates"``
- external boxes: ``{"id", "boxes": [[x1, y1, x2, y2], ...]}``

Image paths in a file are relative to the file's folder (or absolute); in memory they are
absolute, so records can be moved between manifests in different folders without breaking.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCAL_SOURCES = ("detector", "grid", "sam", "external", "whole")
# File endings that count as images when a folder is listed (dataset adapters, search, viz).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ManifestError(ValueError):
    """A manifest line is malformed; the message names the file, line and field."""


@dataclass
class SkipReport:
    """Records dropped by validation with ``skip_invalid=True``, kept for the run's summary."""

    reasons: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.reasons.append(message)
        logger.warning("skipping: %s", message)

    def __len__(self) -> int:
        return len(self.reasons)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", fsync: bool = True):
    """Open a temporary file next to ``path`` and rename it over ``path`` only on success.

    A crash mid-write leaves the previous file (or nothing) in place, never half a file.
    ``fsync=False`` skips forcing the data to disk, for many small files (rendered images)
    whose manifest, written last with fsync, is the commit point.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def iter_jsonl(
    path: str | os.PathLike, *, skipped: SkipReport | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; malformed JSON raises ManifestError
    (or, when a ``skipped`` report is given, is counted there and skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                error = ManifestError(f"{path}:{lineno}: malformed JSON ({exc.msg})")
            else:
                if isinstance(obj, dict):
                    yield lineno, obj
                    continue
                error = ManifestError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if skipped is None:
                raise error
            skipped.add(str(error))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Atomically write plain JSON objects, one per line; returns the count."""
    count = 0
    with atomic_write(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def captions_of(record: dict[str, Any]) -> list[str]:
    """All captions of a record, whichever of ``caption`` / ``captions`` it uses."""
    if "captions" in record:
        return list(record["captions"])
    return [record["caption"]]


def _check_box(box: Any, where: str, require_area: bool = True) -> list[float]:
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise ManifestError(f"{where}: a box must be [x1, y1, x2, y2] numbers, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if require_area and not (x2 > x1 and y2 > y1):
        raise ManifestError(f"{where}: box {box!r} has zero or negative area")
    return [x1, y1, x2, y2]


def validate_record(record: dict[str, Any], where: str) -> None:
    """Check one captioned (or mined) record's fields; raise ManifestError naming the field."""
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        raise ManifestError(f"{where}: field 'id' must be a non-empty string")
    if not isinstance(record.get("image"), str) or not record["image"]:
        raise ManifestError(f"{where}: field 'image' must be a path string")
    if "captions" in record:
        caps = record["captions"]
        if not isinstance(caps, list) or not caps:
            raise ManifestError(f"{where}: field 'captions' must be a non-empty list of strings")
        fieldname = "captions"
    elif "caption" in record:
        caps = [record["caption"]]
        fieldname = "caption"
    else:
        raise ManifestError(f"{where}: needs field 'caption' or 'captions'")
    for cap in caps:
        if not isinstance(cap, str) or not cap.strip():
            raise ManifestError(f"{where}: field '{fieldname}' holds an empty or non-string caption")
    local = record.get("local")
    if local is not None:
        if not isinstance(local, dict):
            raise ManifestError(f"{where}: field 'local' must be an object")
        sentence = local.get("sentence")
        if not isinstance(sentence, str) or not sentence.strip():
            raise ManifestError(f"{where}: field 'local.sentence' must be a non-empty string")
        local["box"] = _check_box(local.get("box"), f"{where}: field 'local.box'")


def iter_records(
    path: str | os.PathLike,
    *,
    skip_invalid: bool = False,
    skipped: SkipReport | None = None,
    check_images: bool = False,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for each valid record; ``where`` is ``file:line`` for messages.

    Invalid records raise ManifestError (file:line: field) unless ``skip_invalid``, in which case
    they are counted in ``skipped``. Duplicate ids are always an error: they would silently shift
    ground truth in evaluation. Image paths are made absolute; ``check_images`` also requires
    each image file to exist.
    """
    path = Path(path)
    base = path.resolve().parent
    seen: dict[str, int] = {}
    if skip_invalid and skipped is None:
        skipped = SkipReport()
    for lineno, record in iter_jsonl(path, skipped=skipped if skip_invalid else None):
        where = f"{path}:{lineno}"
        try:
            validate_record(record, where)
            image = Path(record["image"])
            record["image"] = str(image if image.is_absolute() else base / image)
            if check_images and not Path(record["image"]).is_file():
                raise ManifestError(f"{where}: field 'image': file not found: {record['image']}")
        except ManifestError as exc:
            if not skip_invalid:
                raise
            if skipped is not None:
                skipped.add(str(exc))
            continue
        if record["id"] in seen:
            raise ManifestError(f"{where}: duplicate id {record['id']!r} (first on line {seen[record['id']]})")
        seen[record["id"]] = lineno
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


def relativize(record: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """Copy of ``record`` whose image path is relative to ``folder`` (where the manifest lives)."""
    out = dict(record)
    try:
        out["image"] = os.path.relpath(record["image"], Path(folder).resolve())
    except ValueError:  # different drive on Windows: keep absolute
        out["image"] = str(record["image"])
    return out


def write_manifest(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Atomically write records with image paths made relative to the manifest's folder."""
    folder = Path(path).resolve().parent
    return write_jsonl(path, (relativize(r, folder) for r in records))


def read_boxes(path: str | os.PathLike) -> dict[str, list[list[float]]]:
    """Read an external-boxes file ``{"id", "boxes": [[x1, y1, x2, y2], ...]}`` keyed by id.

    Only the shape is checked here; clipping to the image and dropping empty boxes is the
    region proposer's job, since only it knows the image size.
    """
    out: dict[str, list[list[float]]] = {}
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        rid = record.get("id")
        if not isinstance(rid, str) or not rid:
            raise ManifestError(f"{where}: field 'id' must be a non-empty string")
        boxes = record.get("boxes")
        if not isinstance(boxes, list):
            raise ManifestError(f"{where}: field 'boxes' must be a list of [x1, y1, x2, y2]")
        out.setdefault(rid, []).extend(
            _check_box(b, f"{where}: field 'boxes[{i}]'", require_area=False) for i, b in enumerate(boxes)
        )
    return out
