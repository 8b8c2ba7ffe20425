"""Dataset adapters: public long-caption and retrieval datasets, in their own layouts, to manifests.

Every adapter reads a dataset exactly as its authors ship it and returns captioned records
(``{"id", "image", "caption"}`` or ``"captions": [...]``, see docs/design.md, "Data formats") with
absolute image paths; :func:`convert` writes them with :func:`~goalclip.core.manifest.write_manifest`,
which makes the paths relative to the manifest. Nothing is copied or re-encoded.

Shared rules, so that every manifest can be trusted the same way:

- a malformed source (a missing field, a wrong type, broken JSON) raises
  :class:`~goalclip.core.manifest.ManifestError` naming the file, the entry and the field: silently
  guessing would produce a manifest that evaluates on the wrong captions;
- broken *entries* (an empty caption, a photo that is not on disk, a repeated id) are skipped and
  tallied, with the first few ids, because real downloads always miss a few files and one of them
  must not stop a conversion of thousands; but a conversion that would write nothing, or that
  misses the images of more than half its records (the sign of a wrong ``--root`` or
  ``--image-root``), fails without writing, unless ``allow_skips`` (``--allow-skips``) accepts it;
- captions are stripped; ids are unique within a manifest and stable across runs (the dataset's
  own id or the image's file stem, prefixed with the dataset's name where that stem is a bare
  number); records come out in the dataset's own order (or natural file-name order where the
  dataset has none), so two runs write byte-identical manifests.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from goalclip.core.manifest import (
    IMAGE_SUFFIXES,
    ManifestError,
    SkipReport,
    iter_jsonl,
    validate_record,
    write_jsonl,
    write_manifest,
)
from goalclip.datasets.fields import dataset_root, load_json, natural_key, get_field, get_number
from goalclip.datasets.sa1b import convert_sa1b, sa1b_boxes
from goalclip.datasets.sample import manifest_images

logger = logging.getLogger(__name__)

Record = dict[str, Any]

DOCCI_SPLITS = ("train", "test", "qual_dev", "qual_test")
DCI_SPLITS = ("train", "valid", "test", "all")
DCI_CAPTIONS = ("extra", "short", "short+extra", "summary")
URBAN1K_SPLITS = ("test",)
COCO_SPLITS = ("train", "val", "test", "restval")
FLICKR30K_SPLITS = ("train", "val", "test")
SHAREGPT4V_SPLITS = ("test1k", "train")
SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"

# GOAL's mining scripts store CLIP ``logits_per_image`` (cosine x logit scale); OpenAI CLIP's
# logit scale is exactly 100, so dividing gives back the cosine that goalclip's miner reports.
GOAL_LOGIT_SCALE = 100.0

MAX_MISSING_SHARE = 0.5
"""A conversion missing the images of more records than this share fails (unless allow_skips)."""


class _Collector:
    """Applies the rules every adapter shares: strip, drop empties, unique ids, image on disk.

    Without a caller's tally it keeps its own and logs it in :meth:`result`, so an adapter called
    directly still warns about what it skipped.
    """

    def __init__(self, tally: SkipReport | None, check_images: bool) -> None:
        self.owns_tally = tally is None
        self.tally = tally if tally is not None else SkipReport()
        self.check_images = check_images
        self.records: list[Record] = []
        self._seen: set[str] = set()

    def add(
        self,
        rid: str,
        image: Path,
        captions: str | list[str],
        where: str,
        *,
        limit: int | None = None,
        extra: Callable[[], Record] | None = None,
    ) -> Record | None:
        """Build, check and keep one record; return it, or None when it was skipped.

        A string gives a single ``caption``; a list gives ``captions`` (empty ones dropped, then
        the first ``limit`` kept). Ids are marked as seen on their first appearance, so a repeated
        id is always skipped, whatever happened to its first record. ``extra`` builds further
        fields only once the record is known to be kept, so what it tallies is about kept records.
        """
        if rid in self._seen:
            self.tally.skip("duplicate id", rid)
            return None
        self._seen.add(rid)
        record: Record = {"id": rid, "image": str(image)}
        if isinstance(captions, str):
            text = captions.strip()
            if not text:
                self.tally.skip("empty caption", rid)
                return None
            record["caption"] = text
        else:
            kept = [c.strip() for c in captions if c.strip()]
            if not kept:
                self.tally.skip("empty caption", rid)
                return None
            if len(kept) < len(captions):
                self.tally.note("empty caption dropped", rid)
            record["captions"] = kept[:limit] if limit else kept
        if self.check_images and not image.is_file():
            self.tally.skip("missing image", rid, detail=str(image))
            return None
        validate_record(record, where)
        if extra is not None:  # the adapter checks what it adds (a crop-file pair has no box to validate)
            record.update(extra())
        self.records.append(record)
        return record

    def result(self) -> list[Record]:
        """The kept records (logging the tally first when it is this collector's own)."""
        if self.owns_tally:
            self.tally.log()
        return self.records


# ----------------------------------------------------------------------------- small helpers


def _check_split(split: str, allowed: tuple[str, ...], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset}: unknown split {split!r}; choose from {', '.join(allowed)}")


def _first_file(candidates: list[Path], what: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise ManifestError(f"no {what} found; looked for: {', '.join(str(p) for p in candidates)}")


# ----------------------------------------------------------------------------- DOCCI


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
    collect = _Collector(tally, check_images)
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


# ----------------------------------------------------------------------------- DCI


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
    _check_split(split, DCI_SPLITS, "dci")
    if caption not in DCI_CAPTIONS:
        raise ValueError(f"dci: unknown caption {caption!r}; choose from {', '.join(DCI_CAPTIONS)}")
    base = _dci_base(root)
    collect = _Collector(tally, check_images)
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
    _check_split(split, DCI_SPLITS, "dci")
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


# ----------------------------------------------------------------------------- Urban1k


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
    _check_split(split, URBAN1K_SPLITS, "urban1k")
    if not (root / "caption").is_dir() and (root / "Urban1k").is_dir():
        root = root / "Urban1k"
    image_dir, caption_dir = root / "image", root / "caption"
    for folder in (image_dir, caption_dir):
        if not folder.is_dir():
            raise ManifestError(f"{folder}: no such folder (Urban1k ships image/ and caption/)")
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    collect = _Collector(tally, check_images)
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


# ----------------------------------------------------------------------------- COCO / Flickr30k (Karpathy)


def _convert_karpathy(
    dataset: str,
    path: Path,
    wanted: set[str],
    image_of: Callable[[Record, str], Path],
    id_of: Callable[[str], str],
    max_captions: int | None,
    check_images: bool,
    tally: SkipReport | None,
) -> list[Record]:
    """Shared reader of Karpathy's split files: ``{"images": [{filename, split, sentences}]}``."""
    data = load_json(path)
    images = get_field(data, "images", str(path), list)
    collect = _Collector(tally, check_images)
    for i, item in enumerate(images):
        where = f"{path}: images[{i}]"
        if get_field(item, "split", where) not in wanted:
            continue
        filename = get_field(item, "filename", where)
        sentences = get_field(item, "sentences", where, list)
        captions = [get_field(s, "raw", f"{where}.sentences[{j}]") for j, s in enumerate(sentences)]
        collect.add(id_of(filename), image_of(item, filename), captions, where, limit=max_captions)
    logger.debug("%s: %d of %d images in split(s) %s", dataset, len(collect.records), len(images), sorted(wanted))
    return collect.result()


def _karpathy_file(root: Path, name: str, annotation: str | os.PathLike | None) -> Path:
    if annotation is not None:
        return Path(annotation).expanduser().resolve()
    return _first_file([root / name, root / "annotations" / name, root / "caption_datasets" / name], name)


def convert_coco(
    root: str | os.PathLike,
    split: str,
    *,
    annotation: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    restval_into_train: bool = True,
    max_captions: int | None = 5,
    check_images: bool = True,
    tally: SkipReport | None = None,
) -> list[Record]:
    """MS-COCO with Karpathy's splits (``dataset_coco.json``): 5,000 val, 5,000 test images.

    Each image entry has ``filepath`` (``train2014``/``val2014``), ``filename``, ``split``
    (train/val/test/restval), ``sentences: [{"raw"}]`` and ``cocoid``. Records carry
    ``captions``: the first ``max_captions`` non-empty ones (5, as the standard 25,000-caption 5k
    test uses; a few images have 6 or 7; 0 or None keeps all). ``restval_into_train`` folds the
    30,504 restval images into train, the usual 113k training set. Images are
    ``image_root/filepath/filename`` (``image_root`` defaults to ``root``); ids are the file
    stems (``COCO_val2014_000000391895``).
    """
    root = dataset_root(root)
    _check_split(split, COCO_SPLITS, "coco")
    wanted = {"train", "restval"} if split == "train" and restval_into_train else {split}
    images = Path(image_root).expanduser().resolve() if image_root is not None else root
    return _convert_karpathy(
        "coco",
        _karpathy_file(root, "dataset_coco.json", annotation),
        wanted,
        lambda item, filename: images / str(item.get("filepath") or "") / filename,
        lambda filename: PurePosixPath(filename).stem,
        max_captions,
        check_images,
        tally,
    )


def convert_flickr30k(
    root: str | os.PathLike,
    split: str,
    *,
    annotation: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    max_captions: int | None = 5,
    check_images: bool = True,
    tally: SkipReport | None = None,
) -> list[Record]:
    """Flickr30k with Karpathy's splits (``dataset_flickr30k.json``): 1,000 val, 1,000 test.

    Entries have ``filename``, ``split`` (train/val/test) and ``sentences: [{"raw"}]``; records
    carry the first ``max_captions`` captions (5). Photos are looked up in ``image_root`` when
    given, else in the first of ``flickr30k-images/``, ``flickr30k_images/``, ``Images/``,
    ``images/`` under ``root`` that exists, else ``root``. Ids are ``flickr30k_<stem>`` since
    Flickr's stems are bare numbers.
    """
    root = dataset_root(root)
    _check_split(split, FLICKR30K_SPLITS, "flickr30k")
    if image_root is not None:
        images = Path(image_root).expanduser().resolve()
    else:
        folders = ("flickr30k-images", "flickr30k_images", "Images", "images")
        images = next((root / name for name in folders if (root / name).is_dir()), root)
        logger.info("flickr30k: reading photos from %s", images)
    return _convert_karpathy(
        "flickr30k",
        _karpathy_file(root, "dataset_flickr30k.json", annotation),
        {split},
        lambda item, filename: images / filename,
        lambda filename: f"flickr30k_{PurePosixPath(filename).stem}",
        max_captions,
        check_images,
        tally,
    )


# ----------------------------------------------------------------------------- ShareGPT4V


def convert_sharegpt4v(
    root: str | os.PathLike,
    split: str,
    *,
    annotation: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    test_size: int = 1000,
    check_images: bool = True,
    tally: SkipReport | None = None,
) -> list[Record]:
    """ShareGPT4V captions: a JSON list of ``{"id", "image", "conversations": [...]}``.

    The caption is the first ``{"from": "gpt"}`` turn, with newlines turned into spaces as
    Long-CLIP's loader does. ``test1k`` is the first ``test_size`` (1,000) records of the file
    and ``train`` the rest: the ShareGPT4V-1k protocol of Long-CLIP and GOAL, so the split
    depends on the file's order and must be taken from the unmodified file
    (``share-captioner_coco_lcs_sam_1246k_1107.json`` under ``root`` unless ``annotation`` names
    another). Image paths in the file are relative to ``image_root`` (default ``root``, the
    ``data/`` folder). Ids are the file's ``id`` values; a repeated id is skipped.
    """
    root = dataset_root(root)
    _check_split(split, SHAREGPT4V_SPLITS, "sharegpt4v")
    if test_size < 0:
        raise ValueError(f"sharegpt4v: test_size must be >= 0, got {test_size}")
    path = Path(annotation).expanduser().resolve() if annotation is not None else root / SHAREGPT4V_FILE
    data = load_json(path)
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    images = Path(image_root).expanduser().resolve() if image_root is not None else root
    start, stop = (0, test_size) if split == "test1k" else (test_size, len(data))
    collect = _Collector(tally, check_images)
    for i in range(start, min(stop, len(data))):
        item = data[i]
        where = f"{path}: [{i}]"
        rid = str(get_field(item, "id", where, (str, int)))
        turns = get_field(item, "conversations", where, list)
        answer = next((t for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if answer is None:
            raise ManifestError(f'{where}: field \'conversations\' has no turn with "from": "gpt"')
        caption = get_field(answer, "value", f"{where}: gpt turn").replace("\n", " ")
        collect.add(rid, images / get_field(item, "image", where), caption, where)
    return collect.result()


# ----------------------------------------------------------------------------- GOAL repo JSON


@dataclass
class _GoalPair:
    sentence: str
    crop: str
    score: float | None
    box: list[float] | None


def _goal_pair(entry: Any, where: str) -> _GoalPair:
    score = entry.get("similarity_score") if isinstance(entry, dict) else None
    if score is not None:
        score = get_number(entry, "similarity_score", where) / GOAL_LOGIT_SCALE
    box = None
    if isinstance(entry, dict) and "bbox_coordinates" in entry:
        coords = get_field(entry, "bbox_coordinates", where, dict)
        sub = f"{where}: field 'bbox_coordinates'"
        box = [get_number(coords, key, sub) for key in ("x1", "y1", "x2", "y2")]
    return _GoalPair(get_field(entry, "caption", where).strip(), get_field(entry, "filename", where), score, box)


def _goal_is_local(entry: dict[str, Any]) -> bool:
    """A joint-test / mining entry: a crop under ``<image>_results/``, scored, maybe boxed."""
    filename = entry.get("filename")
    parent = PurePosixPath(filename).parent.name if isinstance(filename, str) else ""
    return "similarity_score" in entry or "bbox_coordinates" in entry or parent.endswith("_results")


def _goal_local(
    pairs: list[_GoalPair],
    image: Path,
    rid: str,
    tally: SkipReport,
    crop_file: Callable[[str], Path],
    check_images: bool,
) -> Record:
    """``local`` (the best-scoring usable pair) and ``candidates`` (the usable pairs with a box, best first).

    GOAL keeps crops as PNG files; its mining output for training carries each crop's box
    (``bbox_coordinates``), its published joint-test file does not. A box is never guessed from
    pixels: a pair without one keeps its crop FILE as ``local.image`` (source ``sam``: the authors'
    crops are SAM segments), which the joint test scores as the local image item; such pairs are
    left out of ``candidates``, which training uses and which need boxes. A crop named
    ``original_image.*`` means the whole photo won, so its box is the photo itself (source
    ``whole``); boxes from the file get source ``external``.
    """
    from goalclip.core.images import ImageError, image_size  # imports torch: not at parser-building time

    usable: list[Record] = []
    for pair in pairs:
        if not pair.sentence:
            tally.note("local pair with an empty sentence", rid)
            continue
        if pair.score is None:
            tally.note("local pair without a similarity_score", rid)
            continue
        if PurePosixPath(pair.crop).stem == "original_image":
            try:
                size = image_size(str(image))
            except ImageError:
                tally.note("whole-image local pair without a readable image", rid)
                continue
            box, source = [0.0, 0.0, float(size[0]), float(size[1])], "whole"
        elif pair.box is None:
            crop = crop_file(pair.crop)
            if check_images and not crop.is_file():
                tally.note("local crop file missing", rid)
                continue
            usable.append({"sentence": pair.sentence, "image": str(crop), "score": pair.score, "source": "sam"})
            continue
        else:
            box, source = pair.box, "external"
        if not all(math.isfinite(v) for v in box):
            tally.note("local pair with a non-finite box", rid)
            continue
        if box[2] <= box[0] or box[3] <= box[1]:
            tally.note("local pair with an empty box", rid)
            continue
        usable.append({"sentence": pair.sentence, "box": box, "score": pair.score, "source": source})
    if not usable:
        return {}
    usable.sort(key=lambda p: -p["score"])
    boxed = [p for p in usable if "box" in p]
    return {"local": usable[0], **({"candidates": boxed} if boxed else {})}


def convert_goal_json(
    root: str | os.PathLike,
    split: str,
    *,
    image_root: str | os.PathLike | None = None,
    crop_root: str | os.PathLike | None = None,
    check_images: bool = True,
    tally: SkipReport | None = None,
) -> list[Record]:
    """The GOAL repo's JSON files (``datasets/*.json``), which are JSON lists of three shapes.

    - test sets (``docci_test.json``, ``DCI_test.json``, ``urban_dataset_test.json``):
      ``{"filename", "caption"}`` per image -> captioned records;
    - the joint test (``DCI_test_joint_sim_max_11.json``): those entries plus, per image, its
      mined local pair ``{"filename": ".../<image>_results/<crop>.png", "caption": sentence,
      "similarity_score"}`` -> the image's record gains ``local``: the published file has no
      boxes, so the crop FILE becomes ``local.image`` (what the joint test scores; boxes are never
      guessed from the crops' pixels), and ``original_image.*`` crops become whole-image pairs;
      crop files are found through the authors' relative paths under ``root``, or as
      ``crop_root/<image>_results/<crop>`` when ``crop_root`` is given; a missing one is noted and
      its pair dropped (unless ``check_images`` is off);
    - mining output for training ``{"original_filename", "original_caption", "segment": [{
      "filename", "caption", "similarity_score", "bbox_coordinates": {x1, y1, x2, y2, ...}}]}``
      -> mined records with ``local`` and ``candidates``.

    Local entries whose image has no entry of its own (e.g. ``DCI_segment_only_...json``, which
    has no whole-image captions) are skipped and counted. ``split`` names the file: a path under
    ``root``, with or without ``.json``, or a name in ``root/datasets/``. The files' paths are
    the authors' (``../DCI/.../photos/sa_1.jpg``): they resolve against ``root`` unless
    ``image_root`` is given, in which case each image is ``image_root/<file name>``. Scores are
    CLIP logits in the files and are divided by 100 to give cosines. Ids are file stems.
    """
    root = dataset_root(root)
    path = _first_file(
        [root / split, root / f"{split}.json", root / "datasets" / f"{split}.json"], f"GOAL JSON file {split!r}"
    )
    data = load_json(path)
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    images = Path(image_root).expanduser().resolve() if image_root is not None else None

    crops = Path(crop_root).expanduser().resolve() if crop_root is not None else None

    def resolve(filename: str) -> Path:
        if images is not None:
            return images / PurePosixPath(filename).name
        return Path(os.path.normpath(root / filename))

    def crop_file(filename: str) -> Path:
        if crops is not None:  # crop names repeat across images: keep the <image>_results folder
            return crops / PurePosixPath(filename).parent.name / PurePosixPath(filename).name
        return Path(os.path.normpath(root / filename))

    collect = _Collector(tally, check_images)
    globals_: list[tuple[str, str, list[_GoalPair], str]] = []
    locals_: dict[str, list[_GoalPair]] = {}
    for i, entry in enumerate(data):
        where = f"{path}: [{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        if "original_filename" in entry:
            segments = get_field(entry, "segment", where, list)
            pairs = [_goal_pair(s, f"{where}.segment[{j}]") for j, s in enumerate(segments)]
            image, caption = get_field(entry, "original_filename", where), get_field(entry, "original_caption", where)
            globals_.append((image, caption, pairs, where))
        elif _goal_is_local(entry):
            pair = _goal_pair(entry, where)
            parent = PurePosixPath(pair.crop).parent.name
            if not parent.endswith("_results"):
                collect.tally.skip("local pair whose image cannot be identified", pair.crop)
                continue
            locals_.setdefault(parent[: -len("_results")], []).append(pair)
        else:
            globals_.append((get_field(entry, "filename", where), get_field(entry, "caption", where), [], where))

    for filename, caption, pairs, where in globals_:
        rid = PurePosixPath(filename).stem
        image = resolve(filename)
        pairs = pairs + locals_.pop(PurePosixPath(filename).name, [])
        extra = partial(_goal_local, pairs, image, rid, collect.tally, crop_file, check_images)
        collect.add(rid, image, caption, where, extra=extra)
    for name, pairs in sorted(locals_.items()):
        for _ in pairs:
            collect.tally.skip("local pair without a whole-image entry", PurePosixPath(name).stem)
    return collect.result()


# ----------------------------------------------------------------------------- registry, convert, CLI


ADAPTERS: dict[str, Callable[..., list[Record]]] = {
    "docci": convert_docci,
    "dci": convert_dci,
    "urban1k": convert_urban1k,
    "coco": convert_coco,
    "flickr30k": convert_flickr30k,
    "sharegpt4v": convert_sharegpt4v,
    "goal-json": convert_goal_json,
    "sa1b": convert_sa1b,
}


@dataclass
class ConvertSummary:
    """What :func:`convert` did: counts for the one-line summary and the run's JSON record."""

    format: str
    split: str
    root: str
    out: str
    written: int
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    boxes_out: str | None = None
    boxes_written: int = 0

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_skipped": self.total_skipped}


def adapter_options(format: str) -> list[str]:
    """The keyword options one format accepts (besides ``tally``), for help and error messages."""
    params = inspect.signature(_adapter(format)).parameters
    return [name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "tally"]


def _adapter(format: str) -> Callable[..., list[Record]]:
    try:
        return ADAPTERS[format]
    except KeyError:
        raise ValueError(f"unknown format {format!r}; choose from {', '.join(ADAPTERS)}") from None


def _check_enough_kept(format: str, split: str, kept: int, tally: SkipReport, allow_skips: bool) -> None:
    """Refuse a conversion that keeps nothing, or misses most images, with a hint at the cause."""
    missing = tally.skipped.get("missing image", 0)
    total = kept + len(tally)
    if kept and (allow_skips or missing <= MAX_MISSING_SHARE * total):
        return
    tally.log()
    reasons = ", ".join(f"{count} {kind}" for kind, count in tally.skipped.items()) or "the source has none"
    problem = f"no records to write ({reasons})" if not kept else f"{missing} of {total} records skipped: missing image"
    hint = ""
    if missing:
        example = tally.details["missing image"]
        where = "--image-root (the folder holding the images)" if "image_root" in adapter_options(format) else "--root"
        hint = (f"; e.g. {tally.examples['missing image'][0]}: {example} not found. If the images are elsewhere, "
                f"pass {where}; --no-check-images keeps records without their image")
    if kept:
        hint += f"; --allow-skips writes the {kept} records found"
    raise ManifestError(f"{format} {split}: {problem}{hint}")


def convert(
    format: str,
    root: str | os.PathLike,
    split: str,
    out_path: str | os.PathLike,
    *,
    boxes_out: str | os.PathLike | None = None,
    allow_skips: bool = False,
    **options: Any,
) -> ConvertSummary:
    """Convert one split of a dataset to a manifest at ``out_path``; return the counts.

    ``options`` go to the format's adapter (see :func:`adapter_options`); one it does not take is
    an error rather than silently ignored. ``boxes_out`` (DCI only) also writes the mask boxes of
    the records actually written, with the same ids, for ``goalclip mine --regions external``.
    Nothing is written when no record is left, or when more than :data:`MAX_MISSING_SHARE` of the
    records miss their image and ``allow_skips`` is false: a ManifestError names an example path.
    """
    adapter = _adapter(format)
    unknown = sorted(set(options) - set(adapter_options(format)))
    if unknown:
        raise ValueError(
            f"option(s) {', '.join(unknown)} do not apply to format {format!r} "
            f"(it takes: {', '.join(adapter_options(format))})"
        )
    if boxes_out is not None and format != "dci":
        raise ValueError(f"boxes_out is only available for format 'dci' (its mask boxes), not {format!r}")
    tally = SkipReport()
    records = adapter(root, split, tally=tally, **options)
    _check_enough_kept(format, split, len(records), tally, allow_skips)
    written = write_manifest(out_path, records)
    boxes_written = 0
    if boxes_out is not None:
        kept = {r["id"] for r in records}
        boxes = [b for b in dci_boxes(root, split, tally=tally) if b["id"] in kept]
        boxes_written = write_jsonl(boxes_out, boxes)
    tally.log()
    summary = ConvertSummary(
        format=format,
        split=split,
        root=str(Path(root).expanduser().resolve()),
        out=str(Path(out_path).resolve()),
        written=written,
        skipped=dict(tally.skipped),
        notes=dict(tally.notes),
        examples={k: list(v) for k, v in tally.examples.items()},
        boxes_out=str(Path(boxes_out).resolve()) if boxes_out is not None else None,
        boxes_written=boxes_written,
    )
    logger.info(
        "%s %s: wrote %d records to %s, skipped %d%s",
        format,
        split,
        written,
        summary.out,
        summary.total_skipped,
        f", {boxes_written} box lists to {summary.boxes_out}" if boxes_out is not None else "",
    )
    return summary


# argparse dests that are adapter keywords of only some formats; left out of the call when not given.
_CLI_OPTIONS = (
    "caption", "annotation", "image_root", "crop_root", "max_captions", "restval_into_train", "test_size",
)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``goalclip data convert``; format-specific ones default to "not given"."""
    parser.add_argument(
        "--format",
        required=True,
        choices=list(ADAPTERS),
        help="the dataset's own layout: docci (docci_descriptions.jsonlines + images/), dci "
        "(densely_captioned_images/ with annotations/, photos/, splits.json), urban1k (image/ + "
        "caption/), coco / flickr30k (Karpathy's dataset_coco.json / dataset_flickr30k.json), "
        "sharegpt4v (the ShareGPT4V caption JSON), goal-json (a JSON file from the GOAL repo)",
    )
    parser.add_argument(
        "--root",
        required=True,
        type=Path,
        help="the dataset's folder as downloaded (the folder holding the files named under --format)",
    )
    parser.add_argument(
        "--split",
        required=True,
        help="which part to convert: docci train|test|qual_dev|qual_test, or several joined by + "
        "(test+qual_test: the 5,100-image test); dci train|valid|test|all; "
        "urban1k test; coco train|val|test|restval; flickr30k train|val|test; sharegpt4v "
        "test1k|train; goal-json the file's name (e.g. DCI_test, found in --root or --root/datasets)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="manifest to write (JSON Lines; image paths are stored relative to its folder)",
    )
    parser.add_argument(
        "--boxes-out",
        type=Path,
        default=None,
        help="dci only: also write the annotators' mask boxes as external boxes "
        '({"id", "boxes"} per line) for `goalclip mine --regions external`',
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (and --boxes-out); without it an existing file is an error",
    )
    parser.add_argument(
        "--no-check-images",
        dest="check_images",
        action="store_false",
        help="keep records whose image file is missing (by default they are skipped and counted), "
        "e.g. to convert captions before the photos are downloaded",
    )
    parser.add_argument(
        "--allow-skips",
        action="store_true",
        help="write the manifest even when more than half of the records miss their image (by default "
        "that fails, as it usually means a wrong --root or --image-root)",
    )
    parser.add_argument(
        "--caption",
        choices=DCI_CAPTIONS,
        default=None,
        help="dci only: which text is the long caption: extra (default; extra_caption, as GOAL uses), "
        "short+extra (both, newline-joined), short (short_caption), summary (LLM summary from complete/)",
    )
    parser.add_argument(
        "--annotation",
        type=Path,
        default=None,
        help="coco, flickr30k, sharegpt4v: the caption JSON file when it is not in --root under its "
        f"usual name (dataset_coco.json, dataset_flickr30k.json, {SHAREGPT4V_FILE})",
    )
    parser.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="coco, flickr30k, sharegpt4v, goal-json: the folder the images are in when it is not "
        "--root (coco: holds train2014/ and val2014/; flickr30k: holds the .jpg files; goal-json: "
        "images are looked up here by file name, ignoring the authors' paths)",
    )
    parser.add_argument(
        "--crop-root",
        type=Path,
        default=None,
        help="goal-json only: the folder holding the authors' crop folders (<image>_results/<crop>.png) "
        "when they are not where the file's relative paths point; crops without a box become crop-file "
        "local items of the joint test",
    )
    parser.add_argument(
        "--max-captions",
        type=int,
        default=None,
        help="coco, flickr30k: captions kept per image, first ones first (default 5, the standard "
        "protocol; 0 keeps all)",
    )
    parser.add_argument(
        "--no-restval",
        dest="restval_into_train",
        action="store_false",
        default=None,
        help="coco only: keep Karpathy's restval images out of --split train (by default train "
        "includes them, the usual 113k-image training set)",
    )
    parser.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="sharegpt4v only: how many leading records form test1k (default 1000, the "
        "ShareGPT4V-1k protocol); train is the rest",
    )


def run_convert(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``goalclip data convert`` from parsed arguments; returns the summary as a dict."""
    options: dict[str, Any] = {
        name: getattr(args, name) for name in _CLI_OPTIONS if getattr(args, name, None) is not None
    }
    options["check_images"] = getattr(args, "check_images", True)
    not_taken = sorted(set(options) - set(adapter_options(args.format)))
    if not_taken:
        flags = ", ".join(
            "--no-restval" if n == "restval_into_train" else "--" + n.replace("_", "-") for n in not_taken
        )
        raise ValueError(f"{flags} do(es) not apply to --format {args.format}")
    allow_skips = getattr(args, "allow_skips", False)
    summary = convert(
        args.format, args.root, args.split, args.out, boxes_out=args.boxes_out, allow_skips=allow_skips, **options
    )
    return summary.as_dict()


def run_convert_sa1b(args: argparse.Namespace) -> dict[str, Any]:
    """``goalclip data convert --format sa1b``: the manifest, and with ``--boxes-out`` its images' mask boxes."""
    summary = run_convert(argparse.Namespace(**{**vars(args), "boxes_out": None}))
    if args.boxes_out is not None:
        kept = {r["id"] for r in manifest_images(Path(args.out))}
        tally = SkipReport()
        boxes = [b for b in sa1b_boxes(args.root, args.split, tally=tally) if b["id"] in kept]
        tally.log()
        summary.update(boxes_out=str(Path(args.boxes_out).resolve()), boxes_written=write_jsonl(args.boxes_out, boxes),
                       notes={**summary.get("notes", {}), **tally.notes})
    return summary
