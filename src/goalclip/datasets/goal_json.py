"""The GOAL repo's JSON files (``datasets/*.json``): its test sets, its joint test and its mining output.

GOAL's mining scripts store CLIP ``logits_per_image`` (cosine x logit scale); OpenAI CLIP's logit
scale is exactly 100, so dividing by :data:`GOAL_LOGIT_SCALE` gives back the cosine that goalclip's
miner reports.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from goalclip.core.manifest import ManifestError, SkipReport
from goalclip.datasets.collect import Collector, Record, first_file
from goalclip.datasets.fields import dataset_root, get_field, get_number, load_json

GOAL_LOGIT_SCALE = 100.0


@dataclass
class _GoalPair:
    """One mined (sentence, crop) pair as the file has it: the score already a cosine."""

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


@dataclass
class _Whole:
    """A whole-image entry: its image, caption and the pairs listed inside it (mining output)."""

    filename: str
    caption: str
    pairs: list[_GoalPair]
    where: str


@dataclass(frozen=True)
class _GoalPaths:
    """Where the authors' relative paths point: under ``root``, or in the folders the user named instead."""

    root: Path
    images: Path | None
    crops: Path | None

    def image(self, filename: str) -> Path:
        if self.images is not None:
            return self.images / PurePosixPath(filename).name
        return Path(os.path.normpath(self.root / filename))

    def crop(self, filename: str) -> Path:
        if self.crops is not None:  # crop names repeat across images: keep the <image>_results folder
            return self.crops / PurePosixPath(filename).parent.name / PurePosixPath(filename).name
        return Path(os.path.normpath(self.root / filename))


def _resolved(folder: str | os.PathLike | None) -> Path | None:
    return Path(folder).expanduser().resolve() if folder is not None else None


def _read_entries(path: Path, tally: SkipReport) -> tuple[list[_Whole], dict[str, list[_GoalPair]]]:
    """The file's whole-image entries, and its stand-alone local pairs by image file name.

    A stand-alone pair names its image only through its crop's ``<image>_results/`` folder; one
    that does not is skipped and counted.
    """
    data = load_json(path)
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    wholes: list[_Whole] = []
    locals_: dict[str, list[_GoalPair]] = {}
    for i, entry in enumerate(data):
        where = f"{path}: [{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        if "original_filename" in entry:
            segments = get_field(entry, "segment", where, list)
            pairs = [_goal_pair(s, f"{where}.segment[{j}]") for j, s in enumerate(segments)]
            wholes.append(_Whole(get_field(entry, "original_filename", where),
                                 get_field(entry, "original_caption", where), pairs, where))
        elif _goal_is_local(entry):
            pair = _goal_pair(entry, where)
            parent = PurePosixPath(pair.crop).parent.name
            if not parent.endswith("_results"):
                tally.skip("local pair whose image cannot be identified", pair.crop)
                continue
            locals_.setdefault(parent[: -len("_results")], []).append(pair)
        else:
            wholes.append(_Whole(get_field(entry, "filename", where), get_field(entry, "caption", where), [], where))
    return wholes, locals_


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
    path = first_file(
        [root / split, root / f"{split}.json", root / "datasets" / f"{split}.json"], f"GOAL JSON file {split!r}"
    )
    paths = _GoalPaths(root, _resolved(image_root), _resolved(crop_root))
    collect = Collector(tally, check_images)
    wholes, locals_ = _read_entries(path, collect.tally)
    for whole in wholes:
        rid = PurePosixPath(whole.filename).stem
        image = paths.image(whole.filename)
        pairs = whole.pairs + locals_.pop(PurePosixPath(whole.filename).name, [])
        extra = partial(_goal_local, pairs, image, rid, collect.tally, paths.crop, check_images)
        collect.add(rid, image, whole.caption, whole.where, extra=extra)
    for name, pairs in sorted(locals_.items()):
        for _ in pairs:
            collect.tally.skip("local pair without a whole-image entry", PurePosixPath(name).stem)
    return collect.result()
