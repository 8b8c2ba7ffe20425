"""Region proposers for local image-sentence pair mining.

Mining (docs/design.md, "Mining local pairs") needs candidate regions for every image:

- FLISM (FAST-GOAL): object-detector boxes plus 5 fixed boxes (4 quadrants and a centre box), so an
  image the detector finds nothing in still gets local candidates;
- LISM (GOAL): bounding boxes of SAM's automatic masks, plus the whole image, so that a pair is
  discarded when the whole image matches a sentence better than any region;
- boxes the user already has (a dataset's own annotations, another detector's output).

Every box is ``(x1, y1, x2, y2)`` in the ORIGINAL image's pixel coordinates, as floats with
exclusive right/bottom edges (``image.crop(box)`` gives the region), so boxes stay numbers from
proposal to training and never depend on a model's resize.

All proposers share one small interface, :class:`RegionProposer`: ``propose(images, ids)`` takes a
batch and returns one list of :class:`Region` per image. The model-backed proposers run one batched
forward over all the images they are given, so the caller's batch size is also the memory knob.
They import transformers when constructed, so grid/external mining never pays for that import.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from goalclip.core.manifest import LOCAL_SOURCES, read_boxes

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

REGION_KINDS = ("grid", "whole", "detector", "sam", "external", "flism", "lism")


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


class RegionProposer(Protocol):
    """Anything that turns a batch of images into candidate regions, one list per image."""

    name: str

    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        """Regions for each image; ``ids`` are the manifest ids (only external boxes need them)."""
        ...


# ---------------------------------------------------------------------------------------------
# Pure geometry: easy to test by hand, shared by every proposer.
# ---------------------------------------------------------------------------------------------


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


def _check_batch(images: Sequence[Image.Image], ids: Sequence[str]) -> None:
    if len(images) != len(ids):
        raise ValueError(f"got {len(images)} images but {len(ids)} ids")


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Accept ``torch.bfloat16`` or the command line's ``"bfloat16"``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    return resolved


# ---------------------------------------------------------------------------------------------
# Proposers without a model.
# ---------------------------------------------------------------------------------------------


class GridProposer:
    """FAST-GOAL's fixed regions (4 quadrants + centre box); no model, never empty."""

    name = "grid"

    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        _check_batch(images, ids)
        return [[Region(box, "grid") for box in grid_boxes(*image.size)] for image in images]


class WholeImageProposer:
    """The whole image as one candidate: LISM discards a pair when the whole image wins."""

    name = "whole"

    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        _check_batch(images, ids)
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
        _check_batch(images, ids)
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

    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        _check_batch(images, ids)
        per_proposer = [p.propose(images, ids) for p in self.proposers]
        return [dedupe_regions(r for lists in per_proposer for r in lists[i]) for i in range(len(images))]


# ---------------------------------------------------------------------------------------------
# Model-backed proposers.
# ---------------------------------------------------------------------------------------------


class DetectorProposer:
    """Boxes from any transformers object-detection checkpoint (FAST-GOAL used YOLOS).

    One processor call and one model forward per :meth:`propose` call cover all the images; the
    processor pads them to a common size and ``post_process_object_detection`` maps each image's
    boxes back to its own original size. Boxes are clipped, and the ``max_boxes`` highest-scoring
    ones kept, which bounds the mining cost per image.
    """

    name = "detector"

    def __init__(
        self,
        model: str,
        threshold: float = 0.3,
        max_boxes: int = 10,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> None:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.threshold = threshold
        self.max_boxes = max_boxes
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(dtype)
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = AutoModelForObjectDetection.from_pretrained(model)
        self.model.to(device=self.device, dtype=self.dtype).eval()
        logger.info("detector %s loaded on %s", model, self.device)

    @torch.inference_mode()
    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        _check_batch(images, ids)
        if not images:
            return []
        images = [im.convert("RGB") for im in images]
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        if self.dtype is not None:
            inputs = inputs.to(self.dtype)
        outputs = self.model(**inputs)
        for key, value in outputs.items():  # post-process in fp32: bf16 boxes are off by pixels
            if torch.is_tensor(value) and value.is_floating_point():
                outputs[key] = value.float()
        sizes = [(im.height, im.width) for im in images]
        results = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=sizes
        )
        out: list[list[Region]] = []
        for image, result in zip(images, results):
            scores = result["scores"].float().cpu()
            boxes = result["boxes"].float().cpu()
            regions = []
            for i in scores.argsort(descending=True).tolist():
                box = clip_box(boxes[i].tolist(), image.width, image.height)
                if box is not None:
                    regions.append(Region(box, "detector", float(scores[i])))
            out.append(dedupe_regions(regions)[: self.max_boxes])
        return out


class SamProposer:
    """Bounding boxes of SAM's automatic masks (GOAL's LISM), via ``SamModel`` + ``SamProcessor``.

    Automatic mask generation prompts SAM with a regular grid of points. Compared with the
    one-image-at-a-time mask-generation pipeline, this batches across images: one processor
    call, one image-encoder forward for the whole batch, and mask-decoder forwards that each
    decode a slice of every image's point grid at once. Masks are filtered like SAM's generator
    (predicted IoU after each decoder call; then, once per image whatever the batch size, stability
    score), upscaled to the original image, area-filtered, turned into boxes (:func:`mask_boxes`),
    and de-duplicated by box NMS over the batch in one call.

    ``points_per_batch`` bounds the prompts per decoder forward summed over the batch (each image
    gets ``max(1, points_per_batch // n_images)``), so decoder memory does not grow with the
    batch. Multi-crop generation (SAM's ``crop_n_layers``) is not done: mining needs object-level
    boxes, not the finest masks.
    """

    name = "sam"

    def __init__(
        self,
        model: str,
        min_area: float = 0.01,
        max_area: float = 0.8,
        margin: float = 0.0,
        points_per_batch: int = 64,
        points_per_side: int = 32,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        nms_thresh: float = 0.7,
        max_boxes: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> None:
        from transformers import SamModel, SamProcessor

        if points_per_batch < 1 or points_per_side < 1:
            raise ValueError("points_per_batch and points_per_side must be >= 1")
        self.min_area = min_area
        self.max_area = max_area
        self.margin = margin
        self.points_per_batch = points_per_batch
        self.points_per_side = points_per_side
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.nms_thresh = nms_thresh
        self.max_boxes = max_boxes
        self.device = torch.device(device)
        self.processor = SamProcessor.from_pretrained(model)
        self.model = SamModel.from_pretrained(model)
        self.model.to(device=self.device, dtype=_resolve_dtype(dtype)).eval()
        logger.info("SAM %s loaded on %s", model, self.device)

    def _point_grid(self, width: int, height: int) -> list[list[list[float]]]:
        """Point prompts at cell centres of an n x n grid, in original pixels, one point per prompt."""
        n = self.points_per_side
        steps = [(k + 0.5) / n for k in range(n)]
        return [[[sx * width, sy * height]] for sy in steps for sx in steps]

    @torch.inference_mode()
    def propose(self, images: Sequence[Image.Image], ids: Sequence[str]) -> list[list[Region]]:
        _check_batch(images, ids)
        if not images:
            return []
        images = [im.convert("RGB") for im in images]
        n_points = self.points_per_side**2
        inputs = self.processor(
            images=images,
            input_points=[self._point_grid(im.width, im.height) for im in images],
            input_labels=[[[1]] * n_points for _ in images],
            return_tensors="pt",
        )
        original_sizes = inputs["original_sizes"].tolist()
        reshaped_sizes = inputs["reshaped_input_sizes"].tolist()
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
        points = inputs["input_points"].to(self.device, dtype=torch.float32)  # [B, P, 1, 2], kept fp32
        labels = inputs["input_labels"].to(self.device)  # [B, P, 1]
        embeddings = self.model.get_image_embeddings(pixel_values)

        chunk = max(1, self.points_per_batch // len(images))
        masks, owners, ious = [], [], []
        for start in range(0, n_points, chunk):
            out = self.model(
                image_embeddings=embeddings,
                input_points=points[:, start : start + chunk],
                input_labels=labels[:, start : start + chunk],
                multimask_output=True,
            )
            iou = out.iou_scores.flatten(1).float()  # [B, P * masks_per_point]
            # as in SAM's generator, a threshold <= 0 disables the filter (predicted IoUs can be < 0)
            keep = iou > self.pred_iou_thresh if self.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
            owner, index = keep.nonzero(as_tuple=True)  # one host sync per decoder call, for the whole batch
            masks.append(out.pred_masks.flatten(1, 2)[owner, index])
            owners.append(owner)
            ious.append(iou[owner, index])
        # Only masks that passed the IoU filter are kept (at low resolution) until every slice is decoded, so
        # the per-image post-processing below runs once per image whatever the batch size.
        owner = torch.cat(owners)
        counts = torch.bincount(owner, minlength=len(images)).tolist()
        order = torch.argsort(owner, stable=True)
        per_image = zip(torch.cat(masks)[order].split(counts), torch.cat(ious)[order].split(counts))
        found = [self._image_boxes(m, i, original_sizes[b], reshaped_sizes[b]) for b, (m, i) in enumerate(per_image)]
        return self._finish(images, [boxes for boxes, _ in found], [scores for _, scores in found])

    def _image_boxes(
        self,
        low_res: torch.Tensor,
        iou: torch.Tensor,
        original_size: list[int],
        reshaped_size: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's masks ``[K, h, w]`` that passed the predicted-IoU filter -> boxes and scores that pass.

        The IoU filter ran on the low-resolution logits, so only promising masks are upscaled to the original
        image size (the expensive step).
        """
        if not len(iou):
            return torch.zeros((0, 4), device=low_res.device), iou
        logits = self.processor.post_process_masks(
            [low_res.float().unsqueeze(1)], [original_size], [reshaped_size], binarize=False
        )[0][:, 0]
        if self.stability_score_thresh > 0:
            offset = self.stability_score_offset
            inter = (logits > offset).flatten(1).sum(dim=1)
            union = (logits > -offset).flatten(1).sum(dim=1).clamp(min=1)
            stable = inter.float() / union.float() > self.stability_score_thresh
            logits, iou = logits[stable], iou[stable]
        kept, kept_boxes = mask_boxes(logits > 0, self.min_area, self.max_area, self.margin)
        return kept_boxes, iou[kept]

    def _finish(
        self,
        images: Sequence[Image.Image],
        boxes: list[torch.Tensor],
        scores: list[torch.Tensor],
    ) -> list[list[Region]]:
        """Box NMS for every image in one call, then regions sorted by predicted IoU."""
        from torchvision.ops import batched_nms

        owner = torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(scores)])
        flat_boxes = torch.cat(boxes).float().cpu()
        flat_scores = torch.cat(scores).float().cpu()
        keep = batched_nms(flat_boxes, flat_scores, owner, self.nms_thresh)  # sorted by score
        out: list[list[Region]] = [[] for _ in images]
        for i in keep.tolist():
            b = int(owner[i])
            box = clip_box(flat_boxes[i].tolist(), images[b].width, images[b].height)
            if box is not None:
                out[b].append(Region(box, "sam", float(flat_scores[i])))
        out = [dedupe_regions(r) for r in out]
        if self.max_boxes is not None:
            out = [r[: self.max_boxes] for r in out]
        return out


def take_invalid_boxes(proposer: RegionProposer) -> list[InvalidBox]:
    """Invalid user boxes any external proposer in ``proposer`` dropped since the last call.

    Only external boxes are counted: they are the user's data, while detector and SAM boxes
    falling outside an image are routine and clipped away.
    """
    members = proposer.proposers if isinstance(proposer, CombinedProposer) else [proposer]
    return [bad for member in members if isinstance(member, ExternalProposer) for bad in member.take_invalid()]


# ---------------------------------------------------------------------------------------------
# Construction from command-line options.
# ---------------------------------------------------------------------------------------------


def build_proposer(
    kind: str,
    *,
    detector: str | None = None,
    sam: str | None = None,
    boxes: str | Path | Mapping[str, Sequence[Sequence[float]]] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    threshold: float = 0.3,
    max_boxes: int = 10,
    min_area: float = 0.01,
    max_area: float = 0.8,
    margin: float = 0.0,
    points_per_side: int = 32,
    points_per_batch: int = 64,
) -> RegionProposer:
    """The proposer for ``goalclip mine --regions KIND``; a comma-separated KIND combines kinds.

    Kinds: ``grid`` (5 fixed boxes), ``whole``, ``detector`` (needs ``--detector``), ``sam``
    (needs ``--sam``), ``external`` (needs ``--boxes``; the grid is NOT added), ``flism`` =
    detector boxes and/or external boxes (either may stand in for the other: the demo uses the
    synthetic world's true boxes as its detector) + grid, ``lism`` = SAM + whole image.
    Each model is loaded once even if several kinds name it; repeated boxes keep their first source.
    """
    parts = [p.strip().lower() for p in kind.split(",") if p.strip()]
    if not parts:
        raise ValueError("--regions is empty; choose from " + ", ".join(REGION_KINDS))
    unknown = [p for p in parts if p not in REGION_KINDS]
    if unknown:
        raise ValueError(f"unknown --regions kind {unknown[0]!r}; choose from {', '.join(REGION_KINDS)}")

    atoms: list[str] = []
    for part in parts:
        if part == "flism":
            if detector is None and boxes is None:
                raise ValueError(
                    "--regions flism needs --detector (an object-detection checkpoint, e.g. "
                    "hustvl/yolos-tiny) or --boxes (an external-boxes JSONL)"
                )
            atoms += (["detector"] if detector is not None else []) + (["external"] if boxes is not None else [])
            atoms.append("grid")
        elif part == "lism":
            atoms += ["sam", "whole"]
        else:
            atoms.append(part)
    atoms = list(dict.fromkeys(atoms))  # each proposer once, first position wins

    if "detector" in atoms and detector is None:
        raise ValueError("--regions detector needs --detector (an object-detection checkpoint)")
    if "sam" in atoms and sam is None:
        raise ValueError(f"--regions {kind} needs --sam (a SAM checkpoint, e.g. facebook/sam-vit-base)")
    if "external" in atoms and boxes is None:
        raise ValueError("--regions external needs --boxes (an external-boxes JSONL)")
    options = (("--detector", detector, "detector"), ("--sam", sam, "sam"), ("--boxes", boxes, "external"))
    for option, value, atom in options:
        if value is not None and atom not in atoms:
            logger.warning("%s is given but --regions %s does not use it", option, kind)

    proposers: list[RegionProposer] = []
    for atom in atoms:
        if atom == "grid":
            proposers.append(GridProposer())
        elif atom == "whole":
            proposers.append(WholeImageProposer())
        elif atom == "external":
            proposers.append(ExternalProposer(boxes))
        elif atom == "detector":
            proposers.append(DetectorProposer(detector, threshold, max_boxes, device=device, dtype=dtype))
        else:
            proposers.append(
                SamProposer(
                    sam,
                    min_area=min_area,
                    max_area=max_area,
                    margin=margin,
                    points_per_batch=points_per_batch,
                    points_per_side=points_per_side,
                    device=device,
                    dtype=dtype,
                )
            )
    return proposers[0] if len(proposers) == 1 else CombinedProposer(proposers)
