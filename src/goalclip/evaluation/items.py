"""What ``goalclip eval`` scores: the image and text items of the retrieval set and of the joint test.

- Retrieval: one gallery image per record and all of its captions (``caption`` or ``captions``);
  an image query is right when any of its captions is retrieved (``metrics.recall_at_k``).
- Joint test (``--joint``, a mined manifest): each record contributes two image items (the whole
  image and the crop of ``local.box``, or the crop file ``local.image``) and its captions plus
  ``local.sentence`` as text items, all in the record's group: as in the papers, every global or
  local text of a source is relevant to every global or local image of it; mAP@10 both ways
  (``metrics.joint_map_at_k``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from goalclip.core.fingerprint import digest_of, files_fingerprint, fingerprint
from goalclip.core.images import ImageError, image_size
from goalclip.core.manifest import ManifestError, captions_of
from goalclip.core.records import iter_records
from goalclip.evaluation.config import LONG_CAPTION_KS, MULTI_CAPTION_KS

logger = logging.getLogger(__name__)


@dataclass
class EvalItems:
    """The items one protocol encodes, each tied to a group (the index of its source record).

    An image item is a whole image (``box`` None) or a crop of a box in original pixels.
    Retrieval has exactly one image item per group, so a text's group is its image's index.
    """

    kind: str
    manifest: str
    group_ids: list[str]
    image_paths: list[str]
    image_boxes: list[list[float] | None]
    image_groups: list[int]
    texts: list[str]
    text_groups: list[int]
    multi_caption: bool = False
    whole_pairs: int = 0  # joint test: records whose local pair is the whole image
    whole_dropped: list[str] = field(default_factory=list)  # ids of those left out (keep_whole=False)
    without_pair: list[str] = field(default_factory=list)  # joint test: ids mined with "local": null, left out

    @cached_property
    def data_key(self) -> str:
        """The manifest's bytes, its images' bytes and the items drawn from them (which options
        such as dropping whole-image pairs change): what the embeddings were computed from."""
        images = files_fingerprint(dict.fromkeys(self.image_paths))
        drawn = digest_of([self.image_paths, self.image_boxes, self.texts])
        return f"{fingerprint(self.manifest, contents=True)}|images:{images}|items:{drawn}"


def retrieval_items(path: str) -> EvalItems:
    """One image item per record and one text item per caption (duplicate ids raise)."""
    records = [record for _, record in read_eval_records(path)]
    items = EvalItems("retrieval", str(path), [], [], [], [], [], [])
    for group, record in enumerate(records):
        items.group_ids.append(record["id"])
        items.image_paths.append(record["image"])
        items.image_boxes.append(None)
        items.image_groups.append(group)
        captions = captions_of(record)
        items.multi_caption |= len(captions) > 1
        items.texts.extend(captions)
        items.text_groups.extend([group] * len(captions))
    return items


def joint_items(path: str, *, keep_whole: bool = True) -> EvalItems:
    """The global-local joint test: per record, the whole image + its local image item, and its
    captions + ``local.sentence``, all in the record's group.

    The local image item is the crop file ``local.image`` when the record names one (the GOAL
    authors' published joint test lists its local crops as image files without boxes), else the
    crop of ``local.box`` from the record's image. Relevance follows the papers: every global or
    local text of a record is relevant to every global or local image of it.

    A whole-image pair (source ``whole``, or a box covering the whole image) is kept by default,
    as the authors' published test keeps them; ``keep_whole=False`` drops those records from the
    test entirely (listed in ``whole_dropped``). A record mined without a pair (``"local": null``:
    every sentence matched the whole image) is left out and listed in ``without_pair``, as
    ``data joint`` leaves it out. A record with no ``local`` field would enter the test with a
    single image item and change what mAP@10 measures, so it is an error naming the records.
    """
    located = read_eval_records(path)
    records = [record for _, record in located]
    missing = [r["id"] for r in records if "local" not in r]
    if missing:
        raise ManifestError(
            f"{path}: the joint test needs a 'local' pair in every record; {len(missing)} have none "
            f"(first: {', '.join(missing[:5])}); mine pairs with 'goalclip mine' first"
        )
    items = EvalItems("joint", str(path), [], [], [], [], [], [])
    for record in records:
        local = record["local"]
        if local is None:
            items.without_pair.append(record["id"])
            continue
        if _is_whole_pair(record):
            items.whole_pairs += 1
            if not keep_whole:
                items.whole_dropped.append(record["id"])
                continue
        group = len(items.group_ids)
        items.group_ids.append(record["id"])
        crop = local.get("image")
        items.image_paths.extend([record["image"], crop or record["image"]])
        items.image_boxes.extend([None, None if crop else list(local["box"])])
        items.image_groups.extend([group, group])
        texts = [*captions_of(record), local["sentence"]]
        items.texts.extend(texts)
        items.text_groups.extend([group] * len(texts))
    if items.without_pair:
        logger.warning("%s: %d records have no local pair (mined with 'local': null) and are left out of the joint "
                       "test (first: %s)", path, len(items.without_pair), ", ".join(items.without_pair[:5]))
    if not items.group_ids:
        raise ManifestError(f"{path}: no record with a local pair is left (whole-image pairs dropped: "
                            f"{len(items.whole_dropped)}, without a pair: {len(items.without_pair)})")
    return items


def _is_whole_pair(record: dict[str, Any]) -> bool:
    """A local pair whose region is the whole image: source ``whole`` or a box covering the image."""
    local = record["local"]
    if local.get("source") == "whole":
        return True
    box = local.get("box")
    if local.get("image") or box is None:
        return False
    try:
        width, height = image_size(record["image"])
    except (ImageError, OSError):
        return False  # an unreadable image is excluded later, with its group
    return box[0] <= 0 and box[1] <= 0 and box[2] >= width and box[3] >= height


def read_eval_records(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``(file:line, record)`` of an evaluation manifest, validated as every manifest is (a joint
    test's local pair may be a crop file ``local.image``, see :func:`~goalclip.core.manifest.validate_record`)."""
    out = list(iter_records(path))
    if not out:
        raise ManifestError(f"{path}: the manifest holds no records")
    return out


def default_ks(items: EvalItems) -> list[int]:
    """The paper's K values: 1/5/25/50 for long single captions, 1/5/10 for multi-caption sets."""
    return list(MULTI_CAPTION_KS if items.multi_caption else LONG_CAPTION_KS)

