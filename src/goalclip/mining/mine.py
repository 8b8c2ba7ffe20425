"""Local pair mining (LISM / FLISM): match caption sentences to image regions with a CLIP.

For a batch of images at once: propose regions, embed every crop and every sentence in large
batches, score each sentence against its own image's regions, and keep the best
(sentence, region) pair per image plus the top-k candidates. Boxes stay numbers end to end.

Output streams to ``OUT.part<rank>`` (flushed per record, so a crash loses at most the batch in
flight); ``--resume`` skips ids already in the part files; the final manifest is written by a
merge into a temporary file and renamed. Under ``accelerate launch`` or ``torchrun`` (GPU or CPU)
each process mines its own share of the images.

Image decoding runs in DataLoader workers that die with the run: a killed or terminated run never
leaves workers behind, and SIGTERM ends the run cleanly with every written record kept.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from tqdm.auto import tqdm

from goalclip.core.images import set_max_image_pixels
from goalclip.core.manifest import atomic_write, iter_jsonl, output_lock, relativize, write_jsonl, write_manifest
from goalclip.core.records import read_manifest
from goalclip.core.paths import refuse_input_as_output
from goalclip.core.resumable import ids_already_written, part_paths
from goalclip.core.shards import split_records
from goalclip.core.processes import (
    ShardCompletion, dies_with_this_process, process_device, process_state, worker_loader,
)
from goalclip.models.clip import ClipBundle, load_clip
from goalclip.models.embed import embed_pixels, embed_text_strings_counted
from goalclip.models.pixels import ClipPixels
from goalclip.models.precision import describe, inference_precision, resolve_precision
from goalclip.mining.config import WHOLE_WINS, MineConfig
from goalclip.mining.feed import CropCutter, MiningFeed, caption_sentences, cut_crops
from goalclip.mining.boxes import Region
from goalclip.mining.proposers import InvalidBox, RegionProposer, propose_regions, take_invalid_boxes
from goalclip.mining.regions import build_proposer

if TYPE_CHECKING:
    from accelerate import PartialState

logger = logging.getLogger(__name__)


class MiningInterrupted(RuntimeError):
    """The run was asked to stop (SIGTERM); what was written is kept for ``--resume``."""


@dataclass
class Match:
    """The outcome of matching one image's sentences against its regions.

    ``best`` is None when no sentence's best region is a local one; ``discarded`` is True when
    ``drop-image`` skips the image for that reason."""

    best: dict[str, Any] | None
    candidates: list[dict[str, Any]]
    discarded: bool


@dataclass
class MinedBatch:
    """One batch's outcome: per record (record, match or None, skip reason) and how many sentences
    were longer than the text context (cut to fit, so their embeddings see only their start)."""

    results: list[tuple[dict[str, Any], Match | None, str | None]]
    truncated: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of the propose/crop/embed/match stages


def match_pairs(
    similarity: torch.Tensor, sentences: list[str], regions: list[Region], top_k: int,
    whole_wins: str = "drop-sentence",
) -> Match:
    """Each sentence takes its best region; keep the highest-scoring local pair and the top-k.

    ``similarity`` is [sentences, regions] cosine similarity. Candidates are the sentences'
    best pairs sorted by score, whole-image ones included. The kept pair follows ``whole_wins``
    (see :data:`~goalclip.mining.config.WHOLE_WINS`): a sentence whose best region is the whole image (LISM adds it as a
    region) is not about a local region.
    """
    scores, best_region = similarity.max(dim=1)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    pairs = [
        {
            "sentence": sentences[s],
            "box": [round(v, 2) for v in regions[int(best_region[s])].box],
            "score": round(float(scores[s]), 6),
            "source": regions[int(best_region[s])].source,
        }
        for s in order
    ]
    candidates = pairs[:top_k]
    if whole_wins == "drop-image" and pairs[0]["source"] == "whole":
        return Match(None, candidates, True)
    best = next((pair for pair in pairs if pair["source"] != "whole"), None)
    return Match(best, candidates, False)


@contextlib.contextmanager
def _stop_on_sigterm(part: Path) -> Iterator[None]:
    """While mining, SIGTERM raises MiningInterrupted, so files are flushed and closed and workers
    shut down on the way out (only the main thread can own signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise MiningInterrupted(f"terminated (SIGTERM); records written so far are kept in {part}: "
                                "rerun with --resume to continue")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def mine_batch(
    bundle: ClipBundle,
    proposer: RegionProposer,
    records: list[dict[str, Any]],
    images: list,
    *,
    top_k: int,
    crop_batch_size: int,
    device: torch.device,
    whole_wins: str = "drop-sentence",
) -> MinedBatch:
    """Mine one batch of decoded images in this process (``goalclip mine`` spreads the CPU work
    over worker processes, see :mod:`goalclip.mining.feed`, and calls :func:`match_batch`)."""
    clock = _StageClock()
    regions = proposer.propose(images, [r["id"] for r in records])
    clock.lap("propose")
    sentences = [caption_sentences(r) for r in records]
    pixels = ClipPixels(bundle.image_processor)
    crops = [cut_crops(pixels, img, [reg.box for reg in regs]) for img, regs in zip(images, regions)]
    crops = torch.cat([c for c in crops if len(c)]) if any(len(c) for c in crops) else torch.empty(0)
    clock.lap("crop")
    mined = match_batch(bundle, records, regions, sentences, crops, top_k=top_k, crop_batch_size=crop_batch_size,
                        device=device, whole_wins=whole_wins)
    clock.add(mined.seconds)
    mined.seconds = clock.seconds
    return mined


def match_batch(
    bundle: ClipBundle,
    records: list[dict[str, Any]],
    regions: list[list[Region]],
    sentences: list[list[str]],
    crops: torch.Tensor,
    *,
    top_k: int,
    crop_batch_size: int,
    device: torch.device,
    whole_wins: str = "drop-sentence",
) -> MinedBatch:
    """Embed a batch's preprocessed crops (all images', in region order) and its cleaned sentences,
    all images together, and match each image's sentences against its regions.

    Returns, per record, the record, its match (None if it had no region) and a skip reason, and
    the number of sentences cut to the model's text context.
    """
    clock = _StageClock()
    flat_sentences = [s for sents in sentences for s in sents]
    if not len(crops) or not flat_sentences:
        return MinedBatch([(r, None, "no regions" if not len(crops) else "no sentences") for r in records],
                          seconds=clock.seconds)
    crop_emb = torch.cat([embed_pixels(bundle.model, crops[start : start + crop_batch_size].to(device))
                          for start in range(0, len(crops), crop_batch_size)])
    text_emb, truncated = embed_text_strings_counted(bundle, flat_sentences, batch_size=crop_batch_size,
                                                     cleaned=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: charge them to this stage
    clock.lap("embed")
    results = []
    crop_at = text_at = 0
    for record, regs, sents in zip(records, regions, sentences):
        image_crops = crop_emb[crop_at : crop_at + len(regs)]
        image_texts = text_emb[text_at : text_at + len(sents)]
        crop_at += len(regs)
        text_at += len(sents)
        if not regs or not sents:
            results.append((record, None, "no regions" if not regs else "no sentences"))
            continue
        results.append((record, match_pairs(image_texts @ image_crops.T, sents, regs, top_k, whole_wins), None))
    clock.lap("match")
    return MinedBatch(results, truncated, clock.seconds)


def _crop_shape(bundle: ClipBundle) -> tuple[int, int, int]:
    """The shape of one crop's pixels: what the matcher's vision tower takes."""
    size = int(bundle.model.config.vision_config.image_size)
    return int(bundle.model.config.vision_config.num_channels), size, size


STAGES = ("load", "decode", "propose", "crop", "embed", "match")
"""Mining stages timed in the summary: loading the models, decoding images (time waiting on the
loader), proposing regions, splitting sentences and cropping, embedding crops and sentences, matching."""


class _StageClock:
    """Wall seconds per stage: each :meth:`lap` charges the time since the previous lap to a stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def restart(self) -> None:
        self._last = time.perf_counter()

    def add(self, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + value


def mine(config: MineConfig) -> dict[str, Any]:
    """Run mining and merge; returns the summary the CLI prints (and writes next to ``out``).

    The main process holds ``<out>.lock`` throughout, so a second run on the same ``out`` fails
    instead of both losing records.
    """
    refuse_input_as_output(Path(config.out), "--out", data=config.data, boxes=config.boxes)
    if config.whole_wins not in WHOLE_WINS:
        raise ValueError(f"--whole-wins must be one of {', '.join(WHOLE_WINS)}, got {config.whole_wins!r}")
    state = process_state(config.device)
    with output_lock(config.out) if state.is_main_process else contextlib.nullcontext():
        return _mine(config, state)


def _mine(config: MineConfig, state: PartialState) -> dict[str, Any]:
    set_max_image_pixels(config.max_image_pixels)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    completion = ShardCompletion(state, out)
    records, pending, todo = _work_of_this_process(config, state, out)

    device = process_device(state, config.device)
    load_started = time.perf_counter()
    clock = _StageClock()
    bundle = load_clip(config.model, base=config.base, device=device)
    bundle.model.eval()
    precision = resolve_precision(config.precision, device)
    logger.info("mining in %s", describe(precision, bundle.model, device))
    proposer = build_proposer(
        config.regions, detector=config.detector, sam=config.sam, boxes=config.boxes, device=device,
        threshold=config.threshold, max_boxes=config.max_boxes, margin=config.margin,
    )
    clock.lap("load")
    part = out.with_name(f"{out.name}.part{state.process_index}")
    skipped_part = out.with_name(f"{out.name}.part{state.process_index}.skipped")
    feed = MiningFeed(todo, proposer)
    loader = worker_loader(feed, batch_size=config.batch_size, num_workers=config.num_workers,
                           collate_fn=feed.collate)
    started = time.perf_counter()
    folder = out.resolve().parent
    show = config.progress and state.is_main_process
    truncated = 0
    in_flight = None  # the batch whose crops the cutter works on while the next batch is proposed
    with _stop_on_sigterm(part), part.open("a", encoding="utf-8") as sink, \
            skipped_part.open("a", encoding="utf-8") as skip_sink, \
            tqdm(total=len(todo), desc="mine", unit="img", disable=not show) as bar, \
            CropCutter(bundle.image_processor, _crop_shape(bundle), config.num_workers,
                       dies_with_this_process()) as cutter:
        for batch in itertools.chain(loader, [None]):  # None: one more turn to finish the last batch
            current = None
            if batch is not None:
                clock.lap("decode")
                for i, error in batch.failed:
                    entry = {"id": todo[i]["id"], "kind": "unreadable image", "reason": error}
                    skip_sink.write(json.dumps(entry) + "\n")
                bar.update(len(batch.failed))
                if batch.indices:
                    batch_records = [todo[i] for i in batch.indices]
                    with inference_precision(precision, device):
                        regions = propose_regions(proposer, batch.sizes, [r["id"] for r in batch_records],
                                                  batch.prepared)
                    invalid = _invalid_box_entries(take_invalid_boxes(proposer))
                    clock.lap("propose")
                    crops = cutter.submit(batch.pixels, [[reg.box for reg in regs] for regs in regions])
                    current = (batch_records, regions, batch.sentences, invalid, crops)
                    clock.lap("crop")
            if in_flight is not None:
                batch_records, regions, sentences, invalid, crops = in_flight
                crops = crops()
                clock.lap("crop")
                with inference_precision(precision, device):
                    mined_batch = match_batch(bundle, batch_records, regions, sentences, crops, top_k=config.top_k,
                                              crop_batch_size=config.crop_batch_size, device=device,
                                              whole_wins=config.whole_wins)
                truncated += mined_batch.truncated
                clock.add(mined_batch.seconds)
                _write_batch(mined_batch, invalid, folder, sink, skip_sink)
                bar.update(len(batch_records))
            in_flight = current
            sink.flush()
            skip_sink.flush()
            clock.restart()  # writing is no stage: the next lap (decode) starts here
    completion.wait()  # by files: a process done early must not time out in a collective
    truncated, stage_seconds = _over_processes(state, truncated, clock.seconds)
    summary: dict[str, Any] = {}
    if state.is_main_process:
        timing = {"stage_seconds": stage_seconds, "elapsed_s": round(time.perf_counter() - load_started, 3)}
        summary = _merge(out, records, time.perf_counter() - started, len(pending), state.num_processes, truncated,
                         timing)
        if truncated:
            logger.warning("%d sentences were longer than the model's %d-token context and were cut to fit",
                           truncated, bundle.max_text_len)
    state.wait_for_everyone()
    if state.is_main_process:
        completion.clean()
    return summary


def _over_processes(state: PartialState, truncated: int,
                    seconds: dict[str, float]) -> tuple[int, dict[str, float]]:
    """The sentences cut in every process, and each stage's wall time: that of the slowest process, since
    the processes run side by side."""
    from accelerate.utils import gather_object

    truncated = sum(gather_object([truncated])) if state.num_processes > 1 else truncated
    per_process = gather_object([seconds]) if state.num_processes > 1 else [seconds]
    return truncated, {stage: round(max(s.get(stage, 0.0) for s in per_process), 3) for stage in STAGES}


def _work_of_this_process(config: MineConfig, state: PartialState,
                          out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(records, pending, todo)``: the manifest's records (``--max-images``), those not yet written by an
    earlier run (``--resume``), and this process's share of them (whole shards)."""
    records = read_manifest(config.data)
    if config.max_images:
        records = records[: config.max_images]
    done = ids_already_written(out, config.resume, "local")
    pending = [r for r in records if r["id"] not in done]
    todo = split_records(pending, state.process_index, state.num_processes)
    logger.info("mining %d images (%d of %d already done; process %d of %d)", len(todo),
                len(records) - len(pending), len(records), state.process_index + 1, state.num_processes)
    return records, pending, todo


def _write_batch(mined_batch: MinedBatch, invalid: list[dict[str, Any]], folder: Path, sink: TextIO,
                 skip_sink: TextIO) -> None:
    """One matched batch's lines: a mined record per kept image, a skip entry per discarded image and per
    invalid proposer box."""
    for record, match, reason in mined_batch.results:
        if match is None or match.discarded:
            reason = reason or "whole image won (LISM discard)"
            skip_sink.write(json.dumps({"id": record["id"], "kind": reason, "reason": reason}) + "\n")
            continue
        # match.best None: every sentence chose the whole image; the image stays for the global loss
        mined = {**relativize(record, folder), "local": match.best, "candidates": match.candidates}
        sink.write(json.dumps(mined, ensure_ascii=False) + "\n")
    for entry in invalid:
        skip_sink.write(json.dumps(entry) + "\n")


def _invalid_box_entries(invalid: list[InvalidBox]) -> list[dict[str, Any]]:
    """Skipped-file entries (kind "invalid box"), one per image, for user boxes that gave no region."""
    by_id: dict[str, list[InvalidBox]] = {}
    for bad in invalid:
        by_id.setdefault(bad.image_id, []).append(bad)
    entries = []
    for image_id, bads in by_id.items():
        boxes = [{"box": [v if math.isfinite(v) else str(v) for v in map(float, b.box)], "reason": b.reason}
                 for b in bads]
        reason = "; ".join(f"box {b['box']} {b['reason']}" for b in boxes)
        entries.append({"id": image_id, "kind": "invalid box", "reason": reason, "boxes": boxes})
    return entries


def _merge(
    out: Path, records: list[dict[str, Any]], seconds: float, processed: int, processes: int, truncated: int,
    timing: dict[str, Any],
) -> dict[str, Any]:
    """Merge part files into ``out`` in manifest order, write the skipped list and the summary.

    The skipped file lists skipped images and, as entries of kind "invalid box", images some of
    whose external boxes were unusable (such an image is still mined with its other regions).
    """
    part_files, skip_files = part_paths(out)
    mined: dict[str, dict[str, Any]] = {}
    for path in part_files + ([out] if out.exists() else []):
        for _, obj in iter_jsonl(path):
            mined[obj["id"]] = obj
    skipped_path = out.with_name(out.stem + ".skipped.jsonl")
    skipped: dict[str, dict[str, Any]] = {}
    invalid: dict[str, dict[str, Any]] = {}
    # A finished run's skipped file is carried into its resumed run; skipped images were retried,
    # so an entry whose image is mined now is dropped, and a repeated failure replaces the old one.
    earlier = [skipped_path] if skipped_path.exists() and out.exists() else []
    for path in earlier + skip_files:
        for _, obj in iter_jsonl(path):
            (invalid if obj["kind"] == "invalid box" else skipped)[obj["id"]] = obj
    skipped = {image_id: entry for image_id, entry in skipped.items() if image_id not in mined}
    ordered = [mined[r["id"]] for r in records if r["id"] in mined]
    write_jsonl(out, ordered)
    write_jsonl(skipped_path, [*skipped.values(), *invalid.values()])
    for path in part_files + skip_files:
        os.unlink(path)
    paired = [rec for rec in ordered if rec["local"] is not None]
    sources = Counter(rec["local"]["source"] for rec in paired)
    reasons = Counter(entry["kind"] for entry in skipped.values())
    box_reasons = Counter(box["reason"] for entry in invalid.values() for box in entry["boxes"])
    if box_reasons:
        logger.warning("%d external boxes gave no region and were not used (%s); listed in %s",
                       sum(box_reasons.values()), ", ".join(f"{n} {r}" for r, n in box_reasons.items()),
                       skipped_path)
    summary = {
        "out": str(out),
        "images": len(records),
        "pairs": len(paired),
        "without_local_pair": len(ordered) - len(paired),  # every sentence chose the whole image; kept
        "skipped": len(skipped),
        "skipped_reasons": dict(reasons),
        "invalid_boxes": dict(box_reasons),
        "truncated_sentences": truncated,
        "skipped_file": str(skipped_path),
        "sources": dict(sources),
        "mean_score": (sum(r["local"]["score"] for r in paired) / len(paired)) if paired else None,
        "processes": processes,
        "images_per_s": processed / seconds if seconds > 0 else None,
        **timing,
    }
    with atomic_write(out.with_name(out.stem + ".summary.json")) as handle:
        json.dump(summary, handle, indent=2)
    return summary


def build_joint_test(test_path: str, mined_path: str, out_path: str) -> dict[str, Any]:
    """The global-local joint test set: each test image with its best mined local pair.

    Images without a mined pair are left out (and counted), so every item of the joint
    gallery has both its global and its local view.
    """
    refuse_input_as_output(out_path, "--out", data=test_path, mined=mined_path)
    tests = read_manifest(test_path)
    mined = {r["id"]: r for r in read_manifest(mined_path)}
    joint = [{**rec, "local": mined[rec["id"]]["local"]} for rec in tests if rec["id"] in mined
             and mined[rec["id"]].get("local")]
    write_manifest(out_path, joint)
    return {"out": out_path, "images": len(tests), "joint_items": len(joint), "without_pair": len(tests) - len(joint)}
