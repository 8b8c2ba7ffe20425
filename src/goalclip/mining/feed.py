"""Mining's CPU side, in worker processes: the main process only moves tensors and runs forwards.

Per image, mining needs CPU work before any model runs (decoding; the proposer's own image
processor; cleaning and splitting the caption) and between the proposer and the matcher (cutting
each region's crop and running the matcher's image processor on it: about 4 ms per crop at 336 px,
15 crops per FLISM image). Done in the main process, that caps mining at 10-16 images/s whatever
GPU is attached (benchmarks/feed.py). So:

- :class:`MiningFeed` is the loader's dataset: workers decode and split sentences per image, and its
  collate (which runs in the worker too) runs the proposer's processors over the batch
  (:func:`~goalclip.mining.proposers.prepare_regions`) and hands the decoded pixels over as uint8
  tensors in shared memory;
- :class:`CropCutter` cuts and preprocesses the crops of the proposed regions in a second set of
  worker processes, while the main process embeds the previous batch.

Every pixel is the models' own image processors' (the matcher's through
:class:`~goalclip.models.pixels.ClipPixels`, bit-identical), computed from the same PIL images as
before, so mined pairs are unchanged (tests/mining/test_feed.py).
"""

from __future__ import annotations

import functools
import itertools
import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from goalclip.core.images import ImageError, crop_to_box, load_rgb
from goalclip.core.manifest import captions_of
from goalclip.core.text import clean_text, split_sentences
from goalclip.mining.boxes import Box
from goalclip.mining.proposers import RegionProposer, prepare_regions
from goalclip.models.pixels import ClipPixels


@dataclass(frozen=True)
class ImageSize:
    """What proposers read of an image once their model inputs are prepared: its size."""

    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def caption_sentences(record: dict[str, Any]) -> list[str]:
    """The record's first caption, cleaned once and split into sentences (what mining matches)."""
    return [s.text for s in split_sentences(clean_text(captions_of(record)[0]))]


@dataclass
class PackedImages:
    """A batch's decoded images (uint8 HWC) packed in one flat tensor: it crosses between processes as one
    piece of shared memory (one file descriptor) however many images the batch has; with one tensor per
    image, passing descriptors cost the main process about 2 ms per image each way (benchmarks/feed.py)."""

    flat: torch.Tensor
    shapes: list[tuple[int, int]]  # (height, width) per image

    @classmethod
    def pack(cls, images: Sequence[Image.Image]) -> PackedImages:
        arrays = [np.asarray(image) for image in images]
        flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays])) if arrays else torch.empty(0)
        return cls(flat, [a.shape[:2] for a in arrays])

    @functools.cached_property
    def starts(self) -> list[int]:
        """Each image's offset in ``flat`` (computed once per batch, not per :meth:`image` call)."""
        return [0, *itertools.accumulate(h * w * 3 for h, w in self.shapes)]

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as a ``[H, W, 3]`` view."""
        height, width = self.shapes[index]
        start = self.starts[index]
        return self.flat[start : start + height * width * 3].view(height, width, 3)

    def __len__(self) -> int:
        return len(self.shapes)


@dataclass
class FeedBatch:
    """One loader batch: the decoded images with their sentences, the proposer inputs, failures."""

    indices: list[int]
    pixels: PackedImages
    sentences: list[list[str]]
    prepared: Any
    failed: list[tuple[int, str]]

    @property
    def sizes(self) -> list[ImageSize]:
        return [ImageSize(width, height) for height, width in self.pixels.shapes]


class MiningFeed(Dataset):
    """Records -> decoded images and sentences; unreadable images come back as a one-line error.

    Any exception is caught here, in the worker: one that escaped would reach the user wrapped in
    a DataLoader traceback and end the run over a single bad file.
    """

    def __init__(self, records: list[dict[str, Any]], proposer: RegionProposer):
        self.records = records
        self.proposer = proposer

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, Image.Image | None, list[str] | str]:
        record = self.records[index]
        try:
            return index, load_rgb(record["image"]), caption_sentences(record)
        except ImageError as exc:
            return index, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's, not the run's
            return index, None, f"{record['image']}: cannot decode image ({type(exc).__name__}: {exc})"

    def collate(self, items: list[tuple[int, Image.Image | None, list[str] | str]]) -> FeedBatch:
        """The batch's proposer inputs (one processor call over its images, as the proposer itself makes)."""
        good = [(i, image, sentences) for i, image, sentences in items if image is not None]
        images = [image for _, image, _ in good]
        return FeedBatch(
            indices=[i for i, _, _ in good],
            pixels=PackedImages.pack(images),
            sentences=[sentences for _, _, sentences in good],
            prepared=prepare_regions(self.proposer, images) if images else None,
            failed=[(i, error) for i, image, error in items if image is None],
        )


def cut_crops(pixels: ClipPixels, image: Image.Image, boxes: Sequence[Box]) -> torch.Tensor:
    """One image's region crops as the matcher's image processor makes them: ``[len(boxes), 3, H, W]``."""
    if not boxes:
        return torch.empty(0)
    return pixels([crop_to_box(image, box) for box in boxes])


def _cut_into(processor: ClipPixels, images: PackedImages, index: int, boxes: Sequence[Box], out: torch.Tensor,
              start: int) -> None:
    """:func:`cut_crops` of one image of a batch, written into rows ``start:`` of the batch's crop tensor."""
    if boxes:
        crops = cut_crops(processor, Image.fromarray(images.image(index).numpy()), boxes)
        out[start : start + len(boxes)].copy_(crops)


_POOL_PROCESSOR: ClipPixels | None = None


def _pool_start(processor: ClipPixels, init: Callable[[], None] | None) -> None:
    """Pool initializer. SIGTERM gets its default action back: a handler inherited from the parent
    (mining's stop-on-SIGTERM) would turn ``Pool.terminate`` into a caught task error, and the pool's
    shutdown would wait forever for a worker that lives on."""
    global _POOL_PROCESSOR
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _POOL_PROCESSOR = processor
    if init is not None:
        init()


def _pool_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor in new shared memory, made in a pool worker: the kernel reserves (and zeroes) the pages
    there, about 0.3 s of CPU per 650 MB buffer that the main process would pay otherwise; the main process
    only maps what it receives."""
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)  # float32, not copied
    return torch.empty(0).set_(storage, 0, shape)


def _pool_cut(job: tuple[PackedImages, int, list[Box], torch.Tensor, int]) -> None:
    _cut_into(_POOL_PROCESSOR, *job)


class CropCutter:
    """Cut and preprocess crops in ``workers`` processes (in this process when 0).

    :meth:`submit` returns at once; the returned callable waits for the batch's crops: one
    ``[crops, *shape]`` tensor in region order, in shared memory, filled in place by the workers, so
    the main process neither copies nor concatenates pixels. Two such buffers take turns (one batch
    is cut while the previous one is embedded) and are reused while they are large enough; a worker
    makes each (:func:`_pool_buffer`): making shared memory costs about 10 ms of CPU per FLISM image
    (35 ms by ``share_memory_``, which also copies).
    """

    def __init__(self, processor: Callable, shape: tuple[int, ...], workers: int,
                 init: Callable[[], None] | None = None):
        self.processor = processor = ClipPixels(processor)
        self.shape = shape
        self.buffers: list[torch.Tensor | None] = [None, None]
        self.turn = 0
        self.pool = None
        self.workers = workers
        if workers > 0:
            from torch.multiprocessing import get_context

            self.pool = get_context("fork").Pool(workers, initializer=_pool_start, initargs=(processor, init))

    def _buffer(self, rows: int) -> torch.Tensor:
        """``rows`` crops' worth of this turn's shared buffer (grown when too small)."""
        self.turn = 1 - self.turn
        buffer = self.buffers[self.turn]
        if buffer is None or len(buffer) < rows:
            shape = (max(rows, 1), *self.shape)
            buffer = self.buffers[self.turn] = self.pool.apply(_pool_buffer, (shape,))
        return buffer[:rows]

    def submit(self, images: PackedImages, boxes: list[list[Box]]) -> Callable[[], torch.Tensor]:
        rows = sum(len(b) for b in boxes)
        out = torch.empty(rows, *self.shape) if self.pool is None else self._buffer(rows)
        starts = itertools.accumulate((len(b) for b in boxes), initial=0)
        # every job names the same two tensors: a chunk of jobs is one message, and pickling shares each once
        jobs = [(images, index, image_boxes, out, start)
                for index, (image_boxes, start) in enumerate(zip(boxes, starts))]
        if self.pool is None:
            for job in jobs:
                _cut_into(self.processor, *job)
            return lambda: out
        pending = self.pool.map_async(_pool_cut, jobs, chunksize=max(1, math.ceil(len(jobs) / self.workers)))

        def wait() -> torch.Tensor:
            pending.get()  # re-raises a worker's error here
            return out

        return wait

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

