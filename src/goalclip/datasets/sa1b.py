"""SA-1B (Segment Anything) images and their masks' boxes, for captioning and mining without SAM.

SA-1B ships ``sa_<n>.jpg`` with ``sa_<n>.json`` beside it: ``{"image": {"width", "height", ...},
"annotations": [{"bbox": [x, y, w, h], "area": pixels, ...}, ...]}``, in chunk folders
(``sa_000000/`` ...). The images become a manifest without captions (``goalclip caption`` writes
them); the masks become external boxes for ``goalclip mine --regions external``, filtered by mask
area as LISM filters SAM's masks: tiny masks are texture, huge ones are the whole scene.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from goalclip.core.manifest import ManifestError, SkipReport
from goalclip.datasets.fields import dataset_root, load_json, natural_key, get_field, get_number


Record = dict[str, Any]

MIN_AREA_FRACTION = 0.01
MAX_AREA_FRACTION = 0.8


def _annotation_files(root: str | os.PathLike, split: str) -> list[Path]:
    """``sa_*.json`` of the whole root (``split`` "all") or of one chunk folder named by ``split``."""
    base = dataset_root(root)
    if split != "all":
        base = base / split
        if not base.is_dir():
            raise ValueError(f"sa1b: split must be 'all' or a chunk folder under {root}; {base} is not a folder")
    files = sorted(base.rglob("sa_*.json"), key=lambda p: natural_key(str(p.relative_to(base))))
    if not files:
        raise ValueError(f"sa1b: no sa_*.json annotation files under {base}")
    return files


def _image_info(obj: Any, where: str) -> tuple[float, float]:
    info = get_field(obj, "image", where, dict)
    return get_number(info, "width", f"{where}: field 'image'"), get_number(info, "height", f"{where}: field 'image'")


def convert_sa1b(
    root: str | os.PathLike, split: str = "all", *, check_images: bool = True, tally: SkipReport | None = None
) -> list[Record]:
    """SA-1B images as records ``{"id", "image", "width", "height"}`` (no caption), in file-name order."""
    tally = tally if tally is not None else SkipReport()
    records = []
    for path in _annotation_files(root, split):
        width, height = _image_info(load_json(path), str(path))
        image = path.with_suffix(".jpg")
        if check_images and not image.is_file():
            tally.skip("image file not found", path.stem)
            continue
        records.append({"id": path.stem, "image": str(image), "width": int(width), "height": int(height)})
    return records


def sa1b_boxes(
    root: str | os.PathLike,
    split: str = "all",
    *,
    min_fraction: float = MIN_AREA_FRACTION,
    max_fraction: float = MAX_AREA_FRACTION,
    tally: SkipReport | None = None,
) -> list[Record]:
    """Each image's mask boxes ``{"id", "boxes": [[x1, y1, x2, y2], ...]}`` (XYWH turned into corners).

    A mask whose area is under ``min_fraction`` or over ``max_fraction`` of the image is left out,
    as are boxes without area and repeats; an image with no box left is not listed.
    """
    tally = tally if tally is not None else SkipReport()
    out: list[Record] = []
    for path in _annotation_files(root, split):
        where = str(path)
        obj = load_json(path)
        width, height = _image_info(obj, where)
        boxes: list[list[float]] = []
        for index, annotation in enumerate(get_field(obj, "annotations", where, list)):
            at = f"{where}: annotations[{index}]"
            bbox = get_field(annotation, "bbox", at, list)
            if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
                raise ManifestError(f"{at}: field 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
            fraction = get_number(annotation, "area", at) / (width * height)
            x, y, w, h = (float(v) for v in bbox)
            box = [x, y, x + w, y + h]
            if not min_fraction <= fraction <= max_fraction:
                tally.note("mask area outside the kept range", path.stem)
            elif w <= 0 or h <= 0:
                tally.note("mask box without area", path.stem)
            elif box not in boxes:
                boxes.append(box)
        if boxes:
            out.append({"id": path.stem, "boxes": boxes})
        else:
            tally.note("no mask box in the kept area range", path.stem)
    return out
