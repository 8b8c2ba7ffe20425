"""The long-caption test sets: DOCCI, Densely Captioned Images (with its mask boxes) and Urban1k.

Each reads the dataset's own layout (see each function) under the shared rules of
:mod:`goalclip.datasets.collect`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from goalclip.core.manifest import IMAGE_SUFFIXES, ManifestError, SkipReport, iter_jsonl, write_jsonl
from goalclip.datasets.collect import Collector, Record, check_split
from goalclip.datasets.fields import dataset_root, get_field, get_number, load_json, natural_key

DOCCI_SPLITS = ("train", "test", "qual_dev", "qual_test")
DCI_SPLITS = ("train", "valid", "test", "all")
DCI_CAPTIONS = ("extra", "short", "short+extra", "summary")
URBAN1K_SPLITS = ("test",)


def convert_docci(
    root: str | os.PathLike,
    split: str,
    *,
    check_images: bool = True,
    tally: SkipReport | None = None,
) -> list[Record]:
    """DOCCI: ``docci_descriptions.jsonlines`` (one JSON object a line) with photos in ``images/``.

    Each line has ``example_id``, ``split``, ``image_file`` and ``description``. A line belongs to
    a split when its ``split`` field names it *and* its ``example_id`` starts with the split's
    name: the official loader selects the same way, which keeps the aspect-ratio variants
    (``aar_...`` ids, photos shipped in a separate archive) out of the standard splits. Splits:
    train (9,647), test (5,000), qual_dev and qual_test (100 each); ``+`` joins several in the
    given order, e.g. ``test+qual_test`` (5,100 images, the test set some papers report).
    """
    root = dataset_root(root)
    splits = split.split("+")
    for part in splits:
        if part not in DOCCI_SPLITS:
            raise ValueError(f"docci: unknown split {split!r}; choose from {', '.join(DOCCI_SPLITS)} "
                             "or several joined by '+' (e.g. test+qual_test)")
    path = root / "docci_descriptions.jsonlines"
    if not path.is_file():
        raise ManifestError(f"{path}: no such file (expected DOCCI's descriptions next to images/)")
    collect = Collector(tally, check_images)
    for part in splits:
        for lineno, obj in iter_jsonl(path):
            where = f"{path}:{lineno}"
            if get_field(obj, "split", where) != part:
                continue
            rid = get_field(obj, "example_id", where)
            if not rid.startswith(part):
                continue
            image = root / "images" / get_field(obj, "image_file", where)
            collect.add(rid, image, get_field(obj, "description", where), where)
    return collect.result()


def _dci_base(root: str | os.PathLike) -> Path:
    """DCI's own folder (``photos/``, ``annotations/``, ``splits.json``), or its parent."""
    root = dataset_root(root)
    nested = root / "densely_captioned_images"
    return nested if nested.is_dir() else root


def _dci_files(base: Path, split: str, prefer_complete: bool) -> list[Path]:
    """The per-image JSON files of a split, in ``splits.json`` order (sorted for ``all``).

    ``complete/`` holds the same files as ``annotations/`` plus the LLM summaries, so it is read
    first only when summaries are wanted, and used as a fallback when ``annotations/`` is absent.
    """
    order = ["complete", "annotations"] if prefer_complete else ["annotations", "complete"]
    folder = next((base / name for name in order if (base / name).is_dir()), None)
    if folder is None:
        raise ManifestError(
            f"{base}: neither annotations/ nor complete/ found (is this DCI's densely_captioned_images folder?)"
        )
    if split == "all":
        return sorted(folder.glob("*.json"), key=lambda p: natural_key(p.name))
    splits_path = base / "splits.json"
    splits = load_json(splits_path)
    names = get_field(splits, split, str(splits_path), list)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ManifestError(f"{splits_path}: field '{split}[{i}]' must be a file name string")
    return [folder / name for name in names]


def _dci_caption(obj: Any, caption: str, where: str) -> str:
    if caption == "extra":
        return get_field(obj, "extra_caption", where)
    if caption == "short":
        return get_field(obj, "short_caption", where)
    if caption == "short+extra":
        parts = (get_field(obj, "short_caption", where).strip(), get_field(obj, "extra_caption", where).strip())
        return "\n".join(p for p in parts if p)
    summaries = get_field(obj, "summaries", where, dict)
    base = get_field(summaries, "base", f"{where}: field 'summaries'", (str, list))
    if isinstance(base, list):
        if not base or not isinstance(base[0], str):
            raise ManifestError(f"{where}: field 'summaries.base' must hold at least one string")
        return base[0]
    return base


def convert_dci(
    root: str | os.PathLike,
    split: str,
    *,
    caption: str = "extra",
    check_images: bool = True,
    tally: SkipReport | None = None,
) -> list[Record]:
    """Densely Captioned Images: one JSON per image in ``annotations/``, photos in ``photos/``.

    Each file has ``image`` (a name inside ``photos/``), ``short_caption``, ``extra_caption`` and
    ``mask_data`` (per-mask ``bounds``, ``label``, ``caption``); the files in ``complete/`` add
    ``summaries`` (LLM summaries, ``summaries["base"]`` for the whole image). Splits come from
    ``splits.json`` (train / valid / test); ``all`` takes every file.

    ``caption`` picks the long caption: ``extra`` (default) is what GOAL's mining and test sets
    use (its LISM scripts read ``extra_caption``); ``short+extra`` joins both with a newline, as
    DCI's own "extended caption" and several long-caption benchmarks do; ``short`` and
    ``summary`` give the short forms. Ids are the photo's file stem (``sa_1543972``), the same
    ids that :func:`dci_boxes` and the GOAL repo's JSON files produce.
    """
    check_split(split, DCI_SPLITS, "dci")
    if caption not in DCI_CAPTIONS:
        raise ValueError(f"dci: unknown caption {caption!r}; choose from {', '.join(DCI_CAPTIONS)}")
    base = _dci_base(root)
    collect = Collector(tally, check_images)
    for path in _dci_files(base, split, prefer_complete=caption == "summary"):
        obj = load_json(path)
        where = str(path)
        image_name = get_field(obj, "image", where)
        collect.add(
            PurePosixPath(image_name).stem, base / "photos" / image_name, _dci_caption(obj, caption, where), where
        )
    return collect.result()


def _dci_mask_box(mask: Any, where: str) -> list[float]:
    bounds = get_field(mask, "bounds", where, dict)
    top_left = get_field(bounds, "topLeft", f"{where}: field 'bounds'", dict)
    bottom_right = get_field(bounds, "bottomRight", f"{where}: field 'bounds'", dict)
    return [
        get_number(top_left, "x", f"{where}: field 'bounds.topLeft'"),
        get_number(top_left, "y", f"{where}: field 'bounds.topLeft'"),
        get_number(bottom_right, "x", f"{where}: field 'bounds.bottomRight'"),
        get_number(bottom_right, "y", f"{where}: field 'bounds.bottomRight'"),
    ]


def dci_boxes(
    root: str | os.PathLike,
    split: str,
    *,
    out_path: str | os.PathLike | None = None,
    tally: SkipReport | None = None,
) -> list[Record]:
    """DCI's human mask boxes as external boxes ``{"id", "boxes": [[x1, y1, x2, y2], ...]}``.

    For ``goalclip mine --regions external``: the annotators' masks are better regions than any
    detector's. Boxes are each mask's ``bounds`` in original pixels, in mask-index order; masks
    marked unusable (``mask_quality`` 2, which DCI's own loader also drops), boxes without area
    and repeated boxes are left out, and an image with no box left is not listed. Written to
    ``out_path`` (atomically) when given; always returned.
    """
    check_split(split, DCI_SPLITS, "dci")
    base = _dci_base(root)
    own_tally = tally is None
    tally = tally if tally is not None else SkipReport()
    out: list[Record] = []
    for path in _dci_files(base, split, prefer_complete=False):
        obj = load_json(path)
        where = str(path)
        rid = PurePosixPath(get_field(obj, "image", where)).stem
        masks = get_field(obj, "mask_data", where, dict)
        boxes: list[list[float]] = []
        for key in sorted(masks, key=natural_key):
            mask_where = f"{where}: mask_data[{key!r}]"
            mask = masks[key]
            if isinstance(mask, dict) and mask.get("mask_quality") == 2:
                continue
            box = _dci_mask_box(mask, mask_where)
            if not all(math.isfinite(v) for v in box):
                tally.note("mask box not finite", rid)
            elif box[2] <= box[0] or box[3] <= box[1]:
                tally.note("mask box without area", rid)
            elif box not in boxes:
                boxes.append(box)
        if boxes:
            out.append({"id": rid, "boxes": boxes})
        else:
            tally.note("no usable mask box", rid)
    if out_path is not None:
        write_jsonl(out_path, out)
    if own_tally:
        tally.log()
    return out


def convert_urban1k(
    root: str | os.PathLike,
    split: str = "test",
    *,
    check_images: bool = True,
    tally: SkipReport | None = None,
) -> list[Record]:
    """Urban1k: ``image/<n>.jpg`` and ``caption/<n>.txt`` (same stem), 1,000 pairs, test only.

    ``root`` is the ``Urban1k`` folder or its parent. The caption is the whole text file with its
    lines joined by spaces (the files hold one paragraph; Long-CLIP's loader reads the first
    line). Ids are ``urban1k_<stem>`` in natural order, since the stems are bare numbers.
    Images without a caption file are skipped and counted.
    """
    root = dataset_root(root)
    check_split(split, URBAN1K_SPLITS, "urban1k")
    if not (root / "caption").is_dir() and (root / "Urban1k").is_dir():
        root = root / "Urban1k"
    image_dir, caption_dir = root / "image", root / "caption"
    for folder in (image_dir, caption_dir):
        if not folder.is_dir():
            raise ManifestError(f"{folder}: no such folder (Urban1k ships image/ and caption/)")
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    collect = Collector(tally, check_images)
    captioned: set[str] = set()
    for path in sorted(caption_dir.glob("*.txt"), key=lambda p: natural_key(p.name)):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{path}: caption is not UTF-8 text ({exc.reason})") from None
        caption = " ".join(line.strip() for line in text.splitlines() if line.strip())
        captioned.add(path.stem)
        image = images.get(path.stem, image_dir / f"{path.stem}.jpg")
        collect.add(f"urban1k_{path.stem}", image, caption, str(path))
    for stem in sorted(set(images) - captioned, key=natural_key):
        collect.tally.skip("image without a caption file", f"urban1k_{stem}")
    return collect.result()
