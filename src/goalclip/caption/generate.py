"""``goalclip caption``: long captions for a folder or manifest of images, resumable and sharded.

Works like mining: each process (one per GPU under ``accelerate launch``) captions its shard and
appends records to ``OUT.part<rank>``, flushed per batch; ``--resume`` skips ids already written
(a torn last line from a kill is cut off first); the main process merges the parts into ``OUT``
in input order. Every record carries ``caption_meta``: model, prompt sha256, backend and
generation settings, so captions made with different prompts or models can be told apart.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from goalclip.caption.clean import clean_caption
from goalclip.caption.config import CaptionConfig
from goalclip.caption.engines import CaptionEngine, load_engine, resolve_dtype
from goalclip.caption.prompt import load_prompt
from goalclip.core.images import ImageError, load_rgb
from goalclip.core.manifest import atomic_write, iter_jsonl, relativize, write_jsonl
from goalclip.datasets.sample import read_images
from goalclip.core.resumable import ids_already_written, part_paths
from goalclip.core.processes import ShardCompletion, process_device, process_state, worker_loader
from goalclip.core.shards import split_records

logger = logging.getLogger(__name__)


class _Images(Dataset):
    """Decode images in workers; an unreadable one comes back as its error message."""

    def __init__(self, records: list[dict[str, Any]]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        try:
            return index, load_rgb(self.records[index]["image"]), None
        except ImageError as exc:
            return index, None, str(exc)


@dataclass
class CaptionBatch:
    """A loader batch: ``(index, image, error)`` per record, and the model inputs of the readable images when
    the engine has a preparer (then made in the worker, and the images stay there: ``image`` is None)."""

    items: list[tuple[int, Any, str | None]]
    inputs: Any = None


@dataclass
class _Collate:
    """Runs in the loader worker: the engine's preparer (its processor) over the batch's readable images."""

    prepare: Callable[[list[Any]], Any] | None

    def __call__(self, items: list[tuple[int, Any, str | None]]) -> CaptionBatch:
        images = [image for _, image, _ in items if image is not None]
        if self.prepare is None or not images:
            return CaptionBatch(items)
        return CaptionBatch([(i, None, error) for i, _, error in items], self.prepare(images))


def caption(config: CaptionConfig, engine: CaptionEngine | None = None) -> dict[str, Any]:
    """Caption every image not yet in ``out``; returns the summary (empty on non-main processes).

    ``engine`` replaces the backend named in the config (tests pass a fake one).
    """
    if config.max_new_tokens < 1 or config.batch_size < 1:
        raise ValueError("--max-new-tokens and --batch-size must be at least 1")
    state = process_state(config.device)  # CPU ranks join one gloo group, else each would caption everything
    if config.backend == "vllm" and state.num_processes > 1:
        raise ValueError("--backend vllm runs as one process (vLLM batches continuously and spreads a model over "
                         "GPUs itself); start it without accelerate launch, or use --backend transformers")
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    completion = ShardCompletion(state, out)
    prompt = load_prompt(config.prompt_file)
    records = read_images(config.data)
    if config.max_images:
        records = records[: config.max_images]
    done = ids_already_written(out, config.resume, "caption")
    todo = split_records([r for r in records if r["id"] not in done], state.process_index, state.num_processes)
    logger.info("captioning %d images (%d already done)", len(todo), len(done))

    device = process_device(state, config.device)
    dtype = resolve_dtype(config.precision, device)
    meta = {
        "model": config.model, "backend": config.backend, "prompt_sha256": prompt.sha256,
        "prompt_source": prompt.source, "max_new_tokens": config.max_new_tokens, "decoding": "greedy",
        "dtype": str(dtype).removeprefix("torch."),
    }
    if engine is None and todo:
        engine = load_engine(config.backend, config.model, device=device, dtype=dtype,
                             max_new_tokens=config.max_new_tokens)
    part = out.with_name(f"{out.name}.part{state.process_index}")
    skipped_part = out.with_name(f"{out.name}.part{state.process_index}.skipped")
    preparer = getattr(engine, "preparer", None)
    loader = worker_loader(_Images(todo), batch_size=config.batch_size, num_workers=config.num_workers,
                           collate_fn=_Collate(preparer(prompt.text) if preparer is not None else None))
    folder = out.resolve().parent
    started = time.perf_counter()
    show = config.progress and state.is_main_process
    with part.open("a", encoding="utf-8") as sink, skipped_part.open("a", encoding="utf-8") as skip_sink, \
            tqdm(total=len(todo), desc="caption", unit="img", disable=not show) as bar:
        for batch in loader:
            for i, _, error in batch.items:
                if error is not None:
                    entry = {"id": todo[i]["id"], "kind": "unreadable image", "reason": error}
                    skip_sink.write(json.dumps(entry) + "\n")
            good = [(todo[i], image) for i, image, error in batch.items if error is None]
            if batch.inputs is not None:
                generations = engine.generate_prepared(batch.inputs)
            else:
                generations = engine.generate([image for _, image in good], prompt.text) if good else []
            for (record, _), generation in zip(good, generations):
                cleaned = clean_caption(generation.text, prompt.text, generation.hit_limit)
                if not cleaned.text:
                    reason = "empty generation" if not cleaned.cut_sentence else "only an unfinished sentence"
                    skip_sink.write(json.dumps({"id": record["id"], "kind": "empty generation",
                                                "reason": reason}) + "\n")
                    continue
                kept = {k: v for k, v in record.items() if k not in ("caption", "captions", "caption_meta")}
                row = {**relativize(kept, folder), "caption": cleaned.text,
                       "caption_meta": {**meta, "cut_sentence": cleaned.cut_sentence}}
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            skip_sink.flush()
            bar.update(len(batch.items))
    completion.wait()  # by files: a process done early must not time out in a collective
    summary: dict[str, Any] = {}
    if state.is_main_process:
        summary = _merge(out, records, time.perf_counter() - started, len(todo) * state.num_processes)
    state.wait_for_everyone()
    if state.is_main_process:
        completion.clean()
    return summary


def _merge(out: Path, records: list[dict[str, Any]], seconds: float, processed: int) -> dict[str, Any]:
    """Merge part files into ``out`` in input order, write the skipped list and the summary."""
    part_files, skip_files = part_paths(out)
    captioned: dict[str, dict[str, Any]] = {}
    for path in ([out] if out.exists() else []) + part_files:
        for _, obj in iter_jsonl(path):
            captioned[obj["id"]] = obj
    skipped: dict[str, dict[str, str]] = {}
    skipped_path = out.with_name(out.stem + ".skipped.jsonl")
    for path in ([skipped_path] if skipped_path.exists() else []) + skip_files:
        for _, obj in iter_jsonl(path):
            if obj["id"] not in captioned:
                skipped[obj["id"]] = obj
    ordered = [captioned[r["id"]] for r in records if r["id"] in captioned]
    write_jsonl(out, ordered)
    write_jsonl(skipped_path, skipped.values())
    for path in part_files + skip_files:
        os.unlink(path)
    words = [len(r["caption"].split()) for r in ordered]
    summary = {
        "out": str(out),
        "images": len(records),
        "captioned": len(ordered),
        "skipped": len(skipped),
        "skipped_reasons": dict(Counter(entry["kind"] for entry in skipped.values())),
        "skipped_file": str(skipped_path),
        "cut_sentences": sum(bool(r.get("caption_meta", {}).get("cut_sentence")) for r in ordered),
        "mean_words": sum(words) / len(words) if words else None,
        "images_per_s": processed / seconds if seconds > 0 and processed else None,
    }
    with atomic_write(out.with_name(out.stem + ".summary.json")) as handle:
        json.dump(summary, handle, indent=2)
    return summary
