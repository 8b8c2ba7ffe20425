"""Region geometry shared by every proposer: boxes, regions, and the pure functions on them.

Every box is ``(x1, y1, x2, y2)`` in the ORIGINAL image's pixel coordinates, as floats with
exclusive right/bottom edges (``image.crop(box)`` gives the region), so boxes stay numbers from
proposal to training and never depend on a model's resize. Pure functions, easy to test by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from goalclip.core.manifest import LOCAL_SOURCES

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Region:
    """One candidate region of one image.

    ``source`` says which proposer produced it (it is written into the mined-pair manifest, so
    ablations can tell detector boxes from fixed grid boxes); ``score`` is the model's confidence
    where there is one (detector class score, SAM predicted IoU) and None otherwise.
    """

    box: Box
    source: str
    score: float | None = None

    def __post_init__(self) -> None:
        if self.source not in LOCAL_SOURCES:
            raise ValueError(f"region source must be one of {LOCAL_SOURCES}, got {self.source!r}")


def clip_box(box: Sequence[float], width: float, height: float) -> Box | None:
    """Clip ``box`` to a ``width`` x ``height`` image; None when nothing of positive area is left.

    Boxes from detectors and from users can poke out of the image or be degenerate; a crop of
    zero area cannot be embedded, so it is dropped here rather than failing later in mining.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if any(math.isnan(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
    y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def box_problem(box: Sequence[float], width: float, height: float) -> str | None:
    """Why a user's box gives no region in a ``width`` x ``height`` image, or None when it does.

    The reasons are the counting categories of a mining run's summary.
    """
    values = [float(v) for v in box]
    if not all(math.isfinite(v) for v in values):
        return "not finite"
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        return "zero or negative area"
    if clip_box(values, width, height) is None:
        return "outside the image"
    return None


def grid_boxes(width: float, height: float) -> list[Box]:
    """FAST-GOAL's 5 fixed regions: the 4 quadrants, then the centre box joining their centres.

    Order: top-left, top-right, bottom-left, bottom-right, centre ``[W/4, H/4, 3W/4, 3H/4]``.
    Works for any aspect ratio because each axis is split on its own.
    """
    w, h = float(width), float(height)
    hw, hh = w / 2, h / 2
    return [
        (0.0, 0.0, hw, hh),
        (hw, 0.0, w, hh),
        (0.0, hh, hw, h),
        (hw, hh, w, h),
        (w / 4, h / 4, 3 * w / 4, 3 * h / 4),
    ]


def mask_boxes(
    masks: torch.Tensor, min_area: float = 0.01, max_area: float = 0.8, margin: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-filter boolean masks ``[N, H, W]`` and turn the survivors into (expanded) boxes.

    GOAL drops masks under 1% of the image (specks that make meaningless crops) and, here, over
    80% (near-whole-image masks that add nothing beyond the global view). Each kept mask's tight
    bounding box (exclusive right/bottom edges) is grown by ``margin`` times its own width/height
    on every side, for context around the object, and clipped to the image.

    Returns ``(kept_indices [K] long, boxes [K, 4] float)`` so callers can carry per-mask scores.
    An empty mask is never kept, whatever ``min_area`` says.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {tuple(masks.shape)}")
    masks = masks.bool()
    n, height, width = masks.shape
    pixels = masks.flatten(1).sum(dim=1)
    fraction = pixels.double() / float(height * width)  # double: 1% of 4000 px is exactly 0.01
    keep = (pixels > 0) & (fraction >= min_area) & (fraction <= max_area)
    kept = keep.nonzero().flatten()
    if kept.numel() == 0:
        return kept, torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    rows = masks[kept].any(dim=2)  # [K, H]: which rows the mask touches
    cols = masks[kept].any(dim=1)  # [K, W]
    y1 = rows.float().argmax(dim=1)
    y2 = height - rows.flip(1).float().argmax(dim=1)
    x1 = cols.float().argmax(dim=1)
    x2 = width - cols.flip(1).float().argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    if margin > 0:
        grow = margin * torch.stack([x2 - x1, y2 - y1], dim=1).float()
        boxes = torch.cat([boxes[:, :2] - grow, boxes[:, 2:] + grow], dim=1)
        limit = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0.0), limit)
    return kept, boxes


def dedupe_regions(regions: Iterable[Region]) -> list[Region]:
    """Drop regions whose box repeats an earlier one, keeping the first (and so its source).

    Boxes are compared after rounding to 1/1000 pixel so that the same box computed two ways
    (``W / 4`` vs a detector's float) is not kept twice because of float noise.
    """
    seen: set[tuple[float, ...]] = set()
    out: list[Region] = []
    for region in regions:
        key = tuple(round(v, 3) for v in region.box)
        if key not in seen:
            seen.add(key)
            out.append(region)
    return out
