"""LISM's regions: bounding boxes of SAM's automatic masks, batched across images."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image

from goalclip.mining.boxes import Region, clip_box, dedupe_regions, mask_boxes
from goalclip.mining.proposers import check_batch, torch_dtype

if TYPE_CHECKING:
    from transformers import BatchFeature

logger = logging.getLogger(__name__)


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
        self.model.to(device=self.device, dtype=torch_dtype(dtype)).eval()
        logger.info("SAM %s loaded on %s", model, self.device)

    def _point_grid(self, width: int, height: int) -> list[list[list[float]]]:
        """Point prompts at cell centres of an n x n grid, in original pixels, one point per prompt."""
        n = self.points_per_side
        steps = [(k + 0.5) / n for k in range(n)]
        return [[[sx * width, sy * height]] for sy in steps for sx in steps]

    def prepare(self, images: Sequence[Image.Image]) -> BatchFeature:
        """SAM's processor over the batch and its point grids: the CPU part, which mining runs in loader workers."""
        images = [im.convert("RGB") for im in images]
        return self.processor(
            images=images,
            input_points=[self._point_grid(im.width, im.height) for im in images],
            input_labels=[[[1]] * self.points_per_side**2 for _ in images],
            return_tensors="pt",
        )

    @torch.inference_mode()
    def propose(
        self, images: Sequence[Image.Image], ids: Sequence[str], prepared: BatchFeature | None = None
    ) -> list[list[Region]]:
        """Regions per image; with ``prepared`` (:meth:`prepare` of the same images) ``images`` only give sizes."""
        check_batch(images, ids)
        if not images:
            return []
        n_points = self.points_per_side**2
        inputs = self.prepare(images) if prepared is None else prepared
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
