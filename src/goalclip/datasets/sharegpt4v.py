"""ShareGPT4V's caption file, whose first 1,000 records are the ShareGPT4V-1k test of Long-CLIP and GOAL."""

from __future__ import annotations

import os
from pathlib import Path

from goalclip.core.manifest import ManifestError, SkipReport
from goalclip.datasets.collect import Collector, Record, check_split
from goalclip.datasets.fields import dataset_root, get_field, load_json

SHAREGPT4V_SPLITS = ("test1k", "train")
SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"


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
    check_split(split, SHAREGPT4V_SPLITS, "sharegpt4v")
    if test_size < 0:
        raise ValueError(f"sharegpt4v: test_size must be >= 0, got {test_size}")
    path = Path(annotation).expanduser().resolve() if annotation is not None else root / SHAREGPT4V_FILE
    data = load_json(path)
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    images = Path(image_root).expanduser().resolve() if image_root is not None else root
    start, stop = (0, test_size) if split == "test1k" else (test_size, len(data))
    collect = Collector(tally, check_images)
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
