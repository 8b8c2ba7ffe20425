"""The proposer interface and the proposers without a model (grid, whole image, user boxes, combined).

All proposers share one small interface, :class:`RegionProposer`: ``propose(images, ids)`` takes a
batch and returns one list of :class:`~goalclip.mining.boxes.Region` per image. A model-backed
proposer (:mod:`goalclip.mining.detector`, :mod:`goalclip.mining.sam`) also has ``prepare(images)``,
its CPU part (the image processor): mining runs it in its loader workers (:func:`prepare_regions`)
and passes the result to ``propose(sizes, ids, prepared=...)`` (:func:`propose_regions`), where only
the sizes of the images are read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image

from goalclip.core.manifest import read_boxes
from goalclip.mining.boxes import Region, box_problem, clip_box, dedupe_regions, grid_boxes

if TYPE_CHECKING:
    from transformers import BatchFeature

logger = logging.getLogger(__name__)


class RegionProposer(Protocol):
    """Anything that turns a batch of images into candidate regions, one list per image."""

    name: str

    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        """Regions for each image; ``ids`` are the manifest ids (only external boxes need them)."""
        ...


def check_batch(images: Sequence[Image.Image], ids: Sequence[str]) -> None:
    if len(images) != len(ids):
        raise ValueError(f"got {len(images)} images but {len(ids)} ids")


def torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Accept ``torch.bfloat16`` or the command line's ``"bfloat16"``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    return resolved


class GridProposer:
    """FAST-GOAL's fixed regions (4 quadrants + centre box); no model, never empty."""

    name = "grid"

    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        check_batch(images, ids)
        return [[Region(box, "grid") for box in grid_boxes(*image.size)] for image in images]


class WholeImageProposer:
    """The whole image as one candidate: LISM discards a pair when the whole image wins."""

    name = "whole"

    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        check_batch(images, ids)
        return [[Region((0.0, 0.0, float(image.width), float(image.height)), "whole")] for image in images]


@dataclass(frozen=True)
class InvalidBox:
    """A user-supplied box that gave no region, and why (see :func:`box_problem`)."""

    image_id: str
    box: list[float]
    reason: str


class ExternalProposer:
    """Boxes the user supplies, keyed by image id (a dict, or an external-boxes JSONL path).

    Boxes are clipped to each image and zero-area ones dropped, because files made by other tools
    routinely carry boxes that overhang the border. A box that gives no region (not finite, no
    area, wholly outside its image) is collected with its reason until :meth:`take_invalid`, so
    the caller can count and list it. An id with no boxes yields no regions; the first time that
    happens a warning is logged, and all such ids are collected in :attr:`missing_ids` so the
    caller can report the total at the end of a run.
    """

    name = "external"

    def __init__(self, boxes: Mapping[str, Sequence[Sequence[float]]] | str | os.PathLike) -> None:
        if isinstance(boxes, (str, os.PathLike)):
            boxes = read_boxes(boxes)
        self.boxes: dict[str, list[list[float]]] = {k: [list(b) for b in v] for k, v in boxes.items()}
        self.missing_ids: set[str] = set()
        self._invalid: list[InvalidBox] = []
        self._warned = False

    def take_invalid(self) -> list[InvalidBox]:
        """The boxes dropped as invalid since the last call (and forget them)."""
        taken, self._invalid = self._invalid, []
        return taken

    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        check_batch(images, ids)
        out: list[list[Region]] = []
        missing_here: list[str] = []
        for image, image_id in zip(images, ids):
            raw = self.boxes.get(image_id)
            if not raw:
                missing_here.append(image_id)
                out.append([])
                continue
            regions = []
            for box in raw:
                problem = box_problem(box, image.width, image.height)
                if problem is None:
                    regions.append(Region(clip_box(box, image.width, image.height), "external"))
                else:
                    self._invalid.append(InvalidBox(image_id, list(box), problem))
            out.append(dedupe_regions(regions))
        if missing_here:
            self.missing_ids.update(missing_here)
            if not self._warned:
                self._warned = True
                logger.warning(
                    "%d of %d images in this batch have no external boxes (first: %r); such images "
                    "get no external regions (further misses are counted, not logged)",
                    len(missing_here),
                    len(ids),
                    missing_here[0],
                )
        return out


class CombinedProposer:
    """Several proposers' regions concatenated per image; a repeated box keeps its first source."""

    def __init__(self, proposers: Sequence[RegionProposer]) -> None:
        if not proposers:
            raise ValueError("CombinedProposer needs at least one proposer")
        self.proposers = list(proposers)
        self.name = "+".join(p.name for p in self.proposers)

    def prepare(self, images: Sequence[Image.Image]) -> list[BatchFeature | None]:
        """Each model-backed member's :meth:`prepare` (None for the others)."""
        return [prepare_regions(p, images) for p in self.proposers]

    def propose(
        self, images: Sequence[Image.Image], ids: Sequence[str], prepared: Sequence[BatchFeature | None] | None = None
    ) -> list[list[Region]]:
        check_batch(images, ids)
        prepared = prepared if prepared is not None else [None] * len(self.proposers)
        per_proposer = [propose_regions(p, images, ids, inputs) for p, inputs in zip(self.proposers, prepared)]
        return [dedupe_regions(r for lists in per_proposer for r in lists[i]) for i in range(len(images))]


def prepare_regions(proposer: RegionProposer, images: Sequence[Image.Image]) -> Any:
    """The CPU-side inputs a proposer's models need for ``images`` (None for a proposer without a model).

    Mining calls this where the images are decoded (loader workers) and hands the result to
    :func:`propose_regions` in the main process, which then only runs the forwards.
    """
    prepare = getattr(proposer, "prepare", None)
    return None if prepare is None else prepare(images)


def propose_regions(
    proposer: RegionProposer, images: Sequence[Any], ids: Sequence[str], prepared: Any
) -> list[list[Region]]:
    """``proposer.propose`` with what :func:`prepare_regions` made of the same images, if anything."""
    return proposer.propose(images, ids) if prepared is None else proposer.propose(images, ids, prepared=prepared)


def take_invalid_boxes(proposer: RegionProposer) -> list[InvalidBox]:
    """Invalid user boxes any external proposer in ``proposer`` dropped since the last call.

    Only external boxes are counted: they are the user's data, while detector and SAM boxes
    falling outside an image are routine and clipped away.
    """
    members = proposer.proposers if isinstance(proposer, CombinedProposer) else [proposer]
    return [bad for member in members if isinstance(member, ExternalProposer) for bad in member.take_invalid()]
