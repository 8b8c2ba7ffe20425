"""MS-COCO and Flickr30k with Andrej Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json``).

The retrieval benchmarks' standard splits: 5k/1k test images with five captions each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from goalclip.core.manifest import SkipReport
from goalclip.datasets.collect import Collector, Record, check_split, first_file
from goalclip.datasets.fields import dataset_root, get_field, load_json

logger = logging.getLogger(__name__)

COCO_SPLITS = ("train", "val", "test", "restval")
FLICKR30K_SPLITS = ("train", "val", "test")


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
    collect = Collector(tally, check_images)
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
    return first_file([root / name, root / "annotations" / name, root / "caption_datasets" / name], name)


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
    check_split(split, COCO_SPLITS, "coco")
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
    check_split(split, FLICKR30K_SPLITS, "flickr30k")
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
