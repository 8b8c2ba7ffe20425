"""Evaluation harness behind ``goalclip eval``: retrieval Recall@K and the global-local joint mAP@K.

Every model is scored on exactly the same items (``items.py``) with the same protocol; each is
encoded (``gallery.py``) or read from the cache (``cache.py``), then the main process scores and
writes the table.

Images that cannot be read are excluded together with their captions (and, in the joint test,
with the rest of their group), and ground-truth indices are recomputed from the surviving items;
the exclusion is the union over all models, so a gallery never differs between rows of the table.
Output paths are checked before any encoding.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from torch import Tensor

from goalclip.core.images import set_max_image_pixels
from goalclip.core.manifest import atomic_write
from goalclip.core.paths import check_writable_dir, check_writable_file, refuse_input_as_output
from goalclip.core.processes import process_device, process_state
from goalclip.evaluation import metrics
from goalclip.evaluation.cache import cache_hit, cache_path, load_embeddings, save_embeddings
from goalclip.evaluation.config import EvalConfig, check_config
from goalclip.evaluation.gallery import PRECISIONS, Embeddings, encode_items, stretch_to_context
from goalclip.evaluation.items import EvalItems, default_ks, joint_items, retrieval_items
from goalclip.evaluation.names import JOINT_K
from goalclip.models.embed import Bundle, load_encoder
from goalclip.models.open_clip import is_open_clip
from goalclip.models.precision import inference_precision, resolve_precision

logger = logging.getLogger(__name__)


@dataclass
class _ModelRun:
    """One model's embeddings per item set and its timings, kept until every model is encoded."""

    source: str
    embeddings: dict[str, Embeddings] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- scoring


def _failed_groups(items: EvalItems, embeddings: Sequence[Embeddings]) -> set[int]:
    """Groups with an unreadable image item under any model (so every model sees one gallery)."""
    failed: set[int] = set()
    for model_embeddings in embeddings:
        ok = model_embeddings.image_ok
        failed.update(items.image_groups[i] for i in (~ok).nonzero().flatten().tolist())
    return failed


def _report_exclusions(items: EvalItems, failed: set[int], runs: Sequence[_ModelRun]) -> list[str]:
    """Log one line per item set about excluded images; returns their ids."""
    ids = [items.group_ids[g] for g in sorted(failed)]
    if ids:
        dropped_texts = sum(g in failed for g in items.text_groups)
        messages = [m for run in runs for _, m in run.embeddings[items.kind].failures]
        logger.warning(
            "%s: %d of %d images could not be used and are excluded with their %d texts "
            "(first ids: %s; first error: %s)",
            items.kind,
            len(ids),
            len(items.group_ids),
            dropped_texts,
            ", ".join(ids[:5]),
            messages[0] if messages else "n/a",
        )
    return ids


def _surviving(items: EvalItems, failed: set[int]) -> tuple[list[int], list[int], Tensor, Tensor]:
    """Kept image/text item indices and their groups renumbered 0..n-1 (never shifted silently)."""
    kept_groups = [g for g in range(len(items.group_ids)) if g not in failed]
    if not kept_groups:
        raise RuntimeError(f"{items.kind}: no readable image is left in {items.manifest}")
    renumber = {g: new for new, g in enumerate(kept_groups)}
    keep_images = [i for i, g in enumerate(items.image_groups) if g in renumber]
    keep_texts = [i for i, g in enumerate(items.text_groups) if g in renumber]
    image_groups = torch.tensor([renumber[items.image_groups[i]] for i in keep_images], dtype=torch.long)
    text_groups = torch.tensor([renumber[items.text_groups[i]] for i in keep_texts], dtype=torch.long)
    return keep_images, keep_texts, image_groups, text_groups


def _score(items: EvalItems, embeddings: Embeddings, failed: set[int], ks: Sequence[int]) -> dict[str, float]:
    keep_images, keep_texts, image_groups, text_groups = _surviving(items, failed)
    sim = metrics.similarity(embeddings.images[keep_images], embeddings.texts[keep_texts])
    if items.kind == "retrieval":
        # One image per group, in group order: a text's renumbered group is its image's row.
        return metrics.recall_at_k(sim, text_groups, ks)
    return metrics.joint_map_at_k(sim, image_groups, text_groups, k=JOINT_K)


# ----------------------------------------------------------------------------- driver


def score_bundle(
    bundle: Bundle, item_sets: Sequence[EvalItems], config: EvalConfig, state: PartialState, ks: Sequence[int]
) -> dict[str, float]:
    """Metrics of a model already in memory (the model being trained), scored as :func:`evaluate`
    scores a loaded one: every process encodes its share of the items on the model's own device
    and in its own dtype (``config`` gives batch size, workers and text length); the main process
    returns the scores of every set, the others an empty dict.

    Unreadable images are excluded with their group, as for a single-model table.
    """
    weight = next(bundle.model.parameters())
    precision = next(name for name, dtype in PRECISIONS.items() if dtype == weight.dtype)
    config, device = replace(config, precision=precision), weight.device
    embeddings = {items.kind: encode_items(bundle, items, config, state, device) for items in item_sets}
    if not state.is_main_process:
        return {}
    scores: dict[str, float] = {}
    for items in item_sets:
        failed = _failed_groups(items, [embeddings[items.kind]])
        scores.update(_score(items, embeddings[items.kind], failed, ks))
    return scores


def _embed_model(
    source: str, config: EvalConfig, item_sets: Sequence[EvalItems], state: PartialState
) -> _ModelRun:
    """Embeddings of every item set for one model, from the cache where possible.

    The model is loaded only when some set misses the cache.
    """
    run = _ModelRun(source)
    paths = {items.kind: cache_path(config, source, items) for items in item_sets}
    for items in item_sets:
        if cache_hit(state, paths[items.kind]):
            run.embeddings[items.kind] = load_embeddings(paths[items.kind])
            logger.info("%s: %s embeddings from cache %s", source, items.kind, paths[items.kind])
    missing = [items for items in item_sets if items.kind not in run.embeddings]
    run.timing = {"load_s": 0.0, "encode_s": 0.0}
    if missing:
        device = process_device(state, config.device)
        start = time.perf_counter()
        bundle = load_encoder(source, base=config.base, device=device)
        stretch_to_context(bundle, source, config)  # in fp32, as at training time
        bundle.model.to(PRECISIONS[config.precision]).eval()
        run.timing["load_s"] = time.perf_counter() - start
        tf32 = config.precision == "fp32" and device.type == "cuda"
        logger.info("%s: encoding with %s weights on %s%s", source, PRECISIONS[config.precision], device,
                    " (TF32 matmuls)" if tf32 else "")
        if config.max_text_len is not None and config.max_text_len > bundle.max_text_len:
            logger.warning(
                "%s: its context is %d tokens, shorter than max_text_len %d; using %d",
                source, bundle.max_text_len, config.max_text_len, bundle.max_text_len,
            )
        start = time.perf_counter()
        for items in missing:
            with inference_precision("fp32", device) if tf32 else contextlib.nullcontext():
                embeddings = encode_items(bundle, items, config, state, device)
            run.embeddings[items.kind] = embeddings
            if paths[items.kind] is not None and state.is_main_process:
                save_embeddings(paths[items.kind], embeddings)
        run.timing["encode_s"] = time.perf_counter() - start
        del bundle  # free this model's memory before the next one loads
    truncated = {kind: e for kind, e in run.embeddings.items() if e.truncated}
    if truncated and state.is_main_process:
        limit = next(iter(run.embeddings.values())).text_len
        logger.warning(
            "%s: texts longer than the %d-token limit were truncated: %s",
            source,
            limit,
            "; ".join(f"{kind} {e.truncated} of {e.texts.shape[0]}" for kind, e in truncated.items()),
        )
    return run


def _check_outputs(config: EvalConfig) -> None:
    """Fail before any encoding when an output cannot be written or would overwrite an input."""
    if config.out is not None:
        refuse_input_as_output(config.out, "--out", data=config.data, joint=config.joint)
        check_writable_file(config.out, "--out")
    if config.cache_dir is not None:
        check_writable_dir(config.cache_dir, "--cache-dir")


def evaluate(config: EvalConfig, *, write_out: bool = True) -> dict[str, Any]:
    """Evaluate every model in ``config`` on the same data; returns metrics, counts and timing.

    Under ``accelerate launch`` all processes encode and the main process scores, writes
    ``config.out`` and returns the results; the other processes return an empty dict.
    ``write_out=False`` leaves writing ``config.out`` to the caller (``run_eval`` prints the table
    first, so a failing write never loses the numbers); it is still checked before encoding.
    """
    check_config(config)
    _check_outputs(config)
    set_max_image_pixels(config.max_image_pixels)
    started = time.perf_counter()
    state = process_state(config.device)
    if config.precision == "auto":  # bf16 weights on CUDA (recalls within tests/models/test_gpu_inference_precision.py)
        config = replace(config, precision=resolve_precision("auto", process_device(state, config.device)))
    item_sets = [retrieval_items(config.data)]
    if config.joint is not None:
        item_sets.append(joint_items(config.joint, keep_whole=config.joint_keep_whole))
    ks = list(config.ks) if config.ks is not None else default_ks(item_sets[0])

    runs = [_embed_model(source, config, item_sets, state) for source in config.models]
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}

    failed = {items.kind: _failed_groups(items, [run.embeddings[items.kind] for run in runs]) for items in item_sets}
    excluded = {items.kind: _report_exclusions(items, failed[items.kind], runs) for items in item_sets}
    results: dict[str, Any] = {
        "config": asdict(config),
        "ks": ks,
        "sets": {},
        "models": [],
    }
    for items in item_sets:
        keep_images, keep_texts, _, _ = _surviving(items, failed[items.kind])
        results["sets"][items.kind] = {
            "manifest": items.manifest,
            "records": len(items.group_ids) - len(failed[items.kind]),
            "image_items": len(keep_images),
            "text_items": len(keep_texts),
            "excluded_ids": excluded[items.kind],
        }
        if items.kind == "joint":
            results["sets"]["joint"]["whole_pairs"] = items.whole_pairs
            results["sets"]["joint"]["whole_pairs_dropped"] = items.whole_dropped
            results["sets"]["joint"]["without_local_pair"] = items.without_pair
    for run in runs:
        start = time.perf_counter()
        scores: dict[str, float] = {}
        for items in item_sets:
            scores.update(_score(items, run.embeddings[items.kind], failed[items.kind], ks))
        run.timing["score_s"] = time.perf_counter() - start
        first = run.embeddings[item_sets[0].kind]
        results["models"].append(
            {
                "model": run.source,
                "metrics": scores,
                "text_len": first.text_len,
                "truncated_texts": {kind: e.truncated for kind, e in run.embeddings.items()},
                "from_cache": all(e.cached for e in run.embeddings.values()),
                "timing": {name: round(value, 3) for name, value in run.timing.items()},
            }
        )
    results["elapsed_s"] = round(time.perf_counter() - started, 3)
    if config.out is not None and write_out:
        write_results(results, config.out)
    return results


def write_results(results: dict[str, Any], path: str) -> None:
    """Write the results of :func:`evaluate` as JSON, atomically."""
    with atomic_write(path) as handle:
        json.dump(results, handle, indent=2)
    logger.info("wrote metrics to %s", path)


def row_names(models: list[str]) -> list[str]:
    """Folder names when they tell the models apart (runs/goal, runs/global), else the full sources;
    open_clip specs stay whole (their last path part is a tag or a checkpoint file name)."""
    names = [m if is_open_clip(m) else Path(m.rstrip("/\\")).name or m for m in models]
    return names if len(set(names)) == len(names) else models


def markdown_table(results: dict[str, Any]) -> str:
    """A Markdown table: one row per model, one column per metric (in first-seen order)."""
    columns: list[str] = []
    for row in results["models"]:
        columns.extend(name for name in row["metrics"] if name not in columns)
    lines = [
        "| " + " | ".join(["model", *columns]) + " |",
        "|" + "|".join(["---", *("---:" for _ in columns)]) + "|",
    ]
    names = row_names([row["model"] for row in results["models"]])
    for name, row in zip(names, results["models"]):
        cells = [f"{row['metrics'][c]:.2f}" if c in row["metrics"] else "" for c in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)
