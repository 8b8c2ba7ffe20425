"""``goalclip data shard``: a manifest written as WebDataset tar shards (read back by :mod:`goalclip.core.shards`).

Record ``i`` of the manifest (in its order) becomes the members ``<key>.json`` (the record, its
``image`` replaced by the image member's name) and ``<key>.<ext>`` (the image file's bytes,
unchanged; ``ext`` is the file's lower-cased suffix), with ``key`` = ``i`` in nine digits; a joint
test's local crop file (``local.image``) becomes ``<key>.local.<ext>``. Shards are
``<prefix>-000000.tar``, ``<prefix>-000001.tar``, ... and are byte-for-byte reproducible (members
in record order, zero mtimes and owners), so re-sharding the same manifest gives the same files.

A record is checked as captioning's input is (``id``, ``image``, unique ids); the rest of it is
copied as it is and validated by the command that reads the shards, as for JSONL. A record whose
image is missing or unreadable (its header, as training's validation reads it) is skipped and
counted, not packed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from goalclip.core.images import ImageError, image_size, load_rgb
from goalclip.core.manifest import ManifestError, SkipReport, atomic_write
from goalclip.core.shards import read_member
from goalclip.datasets.sample import manifest_images

logger = logging.getLogger(__name__)

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE  # tarfile pads a closed archive to a multiple of this


def _padded(size: int) -> int:
    return _BLOCK + -(-size // _BLOCK) * _BLOCK  # header + data rounded up to whole blocks


def _file_size(offset: int) -> int:
    """The size of a closed shard whose members end at ``offset`` (two zero blocks, then padding)."""
    end = offset + 2 * _BLOCK
    return -(-end // _RECORD) * _RECORD


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower().lstrip(".") or "img"


BOX_FIELDS = ("local", "candidates", "objects")
"""Record fields whose ``box`` (one object, or each object of a list) is in the image's pixels."""


def _shrunk(record: dict[str, Any], max_side: int) -> tuple[dict[str, Any], bytes, str] | None:
    """The record with its boxes scaled, the image re-encoded (JPEG stays JPEG at quality 95, others
    become PNG) and its suffix, when the image's longer side exceeds ``max_side``; else None.

    The image is decoded as displayed (EXIF orientation applied), so the stored pixels, which carry
    no orientation, are the boxes' frame.
    """
    width, height = image_size(record["image"])
    if max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = load_rgb(record["image"]).resize(size, Image.Resampling.LANCZOS)
    sx, sy = size[0] / width, size[1] / height
    scaled = dict(record)
    for name in BOX_FIELDS:
        value = record.get(name)
        entries = value if isinstance(value, list) else [value]
        if any(isinstance(e, dict) and isinstance(e.get("box"), list) and len(e["box"]) == 4 for e in entries):
            moved = [{**e, "box": [v * f for v, f in zip(e["box"], (sx, sy, sx, sy))]}
                     if isinstance(e, dict) and isinstance(e.get("box"), list) and len(e["box"]) == 4 else e
                     for e in entries]
            scaled[name] = moved if isinstance(value, list) else moved[0]
    jpeg = _suffix(record["image"]) in ("jpg", "jpeg")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if jpeg else "PNG", **({"quality": 95} if jpeg else {}))
    return scaled, buffer.getvalue(), "jpg" if jpeg else "png"


def _sample(index: int, record: dict[str, Any], base: Path, max_side: int | None = None) -> list[tuple[str, bytes]]:
    """The members of one record; ImageError/OSError when its image (or crop file) cannot be read.
    ``base``: the manifest's folder, where a relative crop file path starts; ``max_side``: see
    :func:`_shrunk`."""
    key = f"{index:09d}"
    image_size(record["image"])  # the header, as training's validation reads it
    shrunk = _shrunk(record, max_side) if max_side else None
    if shrunk is None:
        members = [(f"{key}.{_suffix(record['image'])}", read_member(record["image"]))]
    else:
        record, payload, suffix = shrunk
        members = [(f"{key}.{suffix}", payload)]
    packed = {**record, "image": members[0][0]}
    local = record.get("local")
    if isinstance(local, dict) and isinstance(local.get("image"), str) and local["image"]:
        crop = str(base / local["image"])  # an absolute path (or member reference) stays as it is
        members.append((f"{key}.local.{_suffix(crop)}", read_member(crop)))
        packed["local"] = {**local, "image": members[1][0]}
    return [(f"{key}.json", json.dumps(packed, ensure_ascii=False).encode("utf-8")), *members]


def existing_shards(prefix: Path) -> list[Path]:
    """Shards ``<prefix>-NNNNNN.tar`` already in the output folder."""
    if not prefix.parent.is_dir():
        return []
    pattern = re.compile(re.escape(prefix.name) + r"-\d{6}\.tar")
    return sorted(p for p in prefix.parent.iterdir() if pattern.fullmatch(p.name))


def write_shards(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_count: int = 1000,
    max_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_side: int | None = None,
) -> dict[str, Any]:
    """Write ``data`` (a JSONL manifest) as shards ``<out>-NNNNNN.tar``; returns the summary.

    With ``max_side`` an image whose longer side is larger is stored resized to it (Lanczos), with
    the boxes of its record (``local``, ``candidates``, ``objects``) scaled to match: a large
    dataset kept at a working resolution decodes and resizes faster in every later command. Boxes
    in separate files (``mine --boxes``) are not scaled: mine from the shards after sharding.

    A shard is closed at ``max_count`` records, or before a record would take its file past
    ``max_size`` bytes (tar headers and padding counted; a record larger than that gets a shard of
    its own). Existing shards of ``out`` are an error unless ``overwrite``, which also removes
    those of the old set that the new one does not replace.
    """
    if max_count < 1:
        raise ValueError(f"--max-per-shard must be at least 1, got {max_count}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"--max-side must be at least 1, got {max_side}")
    prefix = Path(os.path.abspath(out))
    old = existing_shards(prefix)
    if old and not overwrite:
        raise FileExistsError(f"{prefix}-*.tar: {len(old)} shards exist (first: {old[0]}); pass --overwrite to "
                              "replace them or choose another --out")
    records = manifest_images(data)
    base = Path(data).resolve().parent
    skipped = SkipReport()
    written: list[Path] = []
    counts: list[int] = []
    resized = 0
    with ExitStack() as stack, tqdm(total=len(records), desc="shard", unit="img", disable=not progress) as bar:
        tar, offset = None, 0
        for index, record in enumerate(records):
            bar.update(1)
            try:
                members = _sample(index, record, base, max_side)
            except (ImageError, OSError) as exc:
                skipped.skip("unreadable image", record["id"], str(exc))
                logger.warning("skipping %s: %s", record["id"], exc)
                continue
            resized += bool(max_side) and max(image_size(record["image"])) > max_side
            size = sum(_padded(len(payload)) for _, payload in members)
            full = counts and (counts[-1] >= max_count or (max_size and _file_size(offset + size) > max_size))
            if tar is None or full:
                stack.close()
                written.append(Path(f"{prefix}-{len(written):06d}.tar"))
                handle = stack.enter_context(atomic_write(written[-1], "wb"))
                tar = stack.enter_context(tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT))
                offset = 0
                counts.append(0)
            for name, payload in members:
                _add(tar, name, payload)
            offset += size
            counts[-1] += 1
    if not written:
        raise ManifestError(f"{data}: no record has a readable image ({len(skipped)} skipped); nothing written")
    for stale in old:
        if stale not in written:
            stale.unlink()
    skipped.log()
    last = len(written) - 1
    pattern = str(written[0]) if last == 0 else f"{prefix}-{{000000..{last:06d}}}.tar"
    return {
        "data": pattern, "shards": len(written), "written": sum(counts), "records_per_shard": counts,
        "bytes": sum(p.stat().st_size for p in written), "skipped": len(skipped),
        "skipped_reasons": dict(skipped.skipped), "skipped_examples": skipped.examples, "resized": resized,
    }
