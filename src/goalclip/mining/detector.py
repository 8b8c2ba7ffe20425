"""FLISM's detector boxes: any transformers object-detection checkpoint (FAST-GOAL used YOLOS)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image

from goalclip.mining.boxes import Region, clip_box, dedupe_regions
from goalclip.mining.proposers import check_batch, torch_dtype

if TYPE_CHECKING:
    from transformers import BatchFeature

logger = logging.getLogger(__name__)


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
        self.dtype = torch_dtype(dtype)
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = AutoModelForObjectDetection.from_pretrained(model)
        self.model.to(device=self.device, dtype=self.dtype).eval()
        logger.info("detector %s loaded on %s", model, self.device)

    def prepare(self, images: Sequence[Image.Image]) -> BatchFeature:
        """The detector's image processor over the batch: the CPU part, which mining runs in loader workers."""
        return self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")

    @torch.inference_mode()
    def propose(
        self, images: Sequence[Image.Image], ids: Sequence[str], prepared: BatchFeature | None = None
    ) -> list[list[Region]]:
        """Regions per image; with ``prepared`` (:meth:`prepare` of the same images) ``images`` only give sizes."""
        check_batch(images, ids)
        if not images:
            return []
        inputs = (self.prepare(images) if prepared is None else prepared).to(self.device)
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
