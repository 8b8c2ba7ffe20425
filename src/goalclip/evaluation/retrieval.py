"""Evaluation harness behind ``goalclip eval``: retrieval Recall@K and the global-local joint mAP@K.

Every model is scored on exactly the same items with the same protocol:

- Retrieval: one gallery image per record and all of its captions (``caption`` or ``captions``);
  an image query is right when any of its captions is retrieved (``metrics.recall_at_k``).
- Joint test (``--joint``, a mined manifest): each record contributes two image items (the whole
  image and the crop of ``local.box``, or the crop file ``local.image``) and its captions plus
  ``local.sentence`` as text items, all in the record's group: as in the papers, every global or
  local text of a source is relevant to every global or local image of it; mAP@10 both ways
  (``metrics.joint_map_at_k``).

Images that cannot be read are excluded together with their captions (and, in the joint test,
with the rest of their group), and ground-truth indices are recomputed from the surviving items;
the exclusion is the union over all models, so a gallery never differs between rows of the table.
Embeddings are cached per model + manifest + the bytes of its images + text length + precision, so
recomputing a metric or adding a model to a table never re-encodes the others, and an image changed
in place is never scored from stale embeddings. Output paths are checked before any encoding.

Under ``accelerate launch`` (or ``torchrun``) each process encodes a contiguous slice of the items; the slices are
gathered and the main process scores and writes. A plain single process needs no launcher.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather, gather_object, pad_across_processes
from torch import Tensor

from goalclip.core.fingerprint import digest_of, files_fingerprint, fingerprint
from goalclip.evaluation import metrics
from goalclip.evaluation.names import JOINT_K
from goalclip.core.images import PixelBatches, set_max_image_pixels
from goalclip.core.manifest import ManifestError, atomic_write, captions_of
from goalclip.core.records import iter_records
from goalclip.core.paths import check_writable_dir, check_writable_file, refuse_input_as_output
from goalclip.core.processes import process_device, process_state
from goalclip.models.clip import prepare_text_positions
from goalclip.models.embed import Bundle, embed_pixels, embed_text_strings_counted, load_encoder
from goalclip.models.open_clip import is_open_clip, spec_fingerprint
from goalclip.models.precision import inference_precision, resolve_precision

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LONG_CAPTION_KS = (1, 5, 25, 50)
MULTI_CAPTION_KS = (1, 5, 10)
# The K values each paper reports: GOAL and FAST-GOAL on long captions; FAST-GOAL Table IV on COCO/Flickr30k.
KS_PRESETS = {"goal": [1, 5, 25, 50], "fastgoal-coco": [1, 5, 10, 15]}
# Bumped whenever the cached content, its meaning or its key changes, so old caches are never misread.
CACHE_VERSION = 3


@dataclass
class EvalConfig:
    """Everything that defines one evaluation run (the fields mirror ``goalclip eval``'s options).

    ``models`` are anything ``models.embed.load_encoder`` loads: CLIP sources and ``open_clip:`` specs.

    ``ks=None`` picks the paper's protocol from the data: K = 1, 5, 25, 50 for one long caption
    per image, 1, 5, 10 when records carry several captions (COCO / Flickr30k style).
    ``max_text_len`` caps the text length; a model with a shorter context uses its own.
    ``cache_dir=None`` disables the embedding cache.
    ``joint_keep_whole=False`` drops joint-test records whose local pair is the whole image.
    ``context`` evaluates every model at that many text positions, as the papers evaluate even
    stock CLIP at 248: a model with a shorter context is stretched Long-CLIP style before scoring
    (the training-time stretch, :func:`goalclip.models.clip.prepare_text_positions`, keeping
    the first ``keep_positions``); a model already that long is left alone; texts are cut at
    ``context`` either way, so every row of a table reads the same tokens.
    """

    models: list[str]
    data: str
    base: str | None = None
    joint: str | None = None
    ks: list[int] | None = None
    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # or auto: bf16 on CUDA, fp32 elsewhere
    cache_dir: str | None = None
    out: str | None = None
    progress: bool = True
    max_text_len: int | None = None
    max_image_pixels: int | None = None
    context: int | None = None
    keep_positions: int = 20
    joint_keep_whole: bool = True


@dataclass
class EvalItems:
    """The items one protocol encodes, each tied to a group (the index of its source record).

    An image item is a whole image (``box`` None) or a crop of a box in original pixels.
    Retrieval has exactly one image item per group, so a text's group is its image's index.
    """

    kind: str
    manifest: str
    group_ids: list[str]
    image_paths: list[str]
    image_boxes: list[list[float] | None]
    image_groups: list[int]
    texts: list[str]
    text_groups: list[int]
    multi_caption: bool = False
    whole_pairs: int = 0  # joint test: records whose local pair is the whole image
    whole_dropped: list[str] = field(default_factory=list)  # ids of those left out (keep_whole=False)
    without_pair: list[str] = field(default_factory=list)  # joint test: ids mined with "local": null, left out

    @cached_property
    def data_key(self) -> str:
        """The manifest's bytes, its images' bytes and the items drawn from them (which options
        such as dropping whole-image pairs change): what the embeddings were computed from."""
        images = files_fingerprint(dict.fromkeys(self.image_paths))
        drawn = digest_of([self.image_paths, self.image_boxes, self.texts])
        return f"{fingerprint(self.manifest, contents=True)}|images:{images}|items:{drawn}"


@dataclass
class Embeddings:
    """One model's embeddings of one ``EvalItems``; rows of unreadable images are zero."""

    images: Tensor
    image_ok: Tensor
    texts: Tensor
    failures: list[tuple[int, str]]
    truncated: int
    text_len: int  # tokens per text actually used: max_text_len capped at the model's context
    cached: bool = False


@dataclass
class _ModelRun:
    """One model's embeddings per item set and its timings, kept until every model is encoded."""

    source: str
    embeddings: dict[str, Embeddings] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- items


def retrieval_items(path: str) -> EvalItems:
    """One image item per record and one text item per caption (duplicate ids raise)."""
    records = [record for _, record in read_eval_records(path)]
    items = EvalItems("retrieval", str(path), [], [], [], [], [], [])
    for group, record in enumerate(records):
        items.group_ids.append(record["id"])
        items.image_paths.append(record["image"])
        items.image_boxes.append(None)
        items.image_groups.append(group)
        captions = captions_of(record)
        items.multi_caption |= len(captions) > 1
        items.texts.extend(captions)
        items.text_groups.extend([group] * len(captions))
    return items


def joint_items(path: str, *, keep_whole: bool = True) -> EvalItems:
    """The global-local joint test: per record, the whole image + its local image item, and its
    captions + ``local.sentence``, all in the record's group.

    The local image item is the crop file ``local.image`` when the record names one (the GOAL
    authors' published joint test lists its local crops as image files without boxes), else the
    crop of ``local.box`` from the record's image. Relevance follows the papers: every global or
    local text of a record is relevant to every global or local image of it.

    A whole-image pair (source ``whole``, or a box covering the whole image) is kept by default,
    as the authors' published test keeps them; ``keep_whole=False`` drops those records from the
    test entirely (listed in ``whole_dropped``). A record mined without a pair (``"local": null``:
    every sentence matched the whole image) is left out and listed in ``without_pair``, as
    ``data joint`` leaves it out. A record with no ``local`` field would enter the test with a
    single image item and change what mAP@10 measures, so it is an error naming the records.
    """
    located = read_eval_records(path)
    records = [record for _, record in located]
    missing = [r["id"] for r in records if "local" not in r]
    if missing:
        raise ManifestError(
            f"{path}: the joint test needs a 'local' pair in every record; {len(missing)} have none "
            f"(first: {', '.join(missing[:5])}); mine pairs with 'goalclip mine' first"
        )
    items = EvalItems("joint", str(path), [], [], [], [], [], [])
    for record in records:
        local = record["local"]
        if local is None:
            items.without_pair.append(record["id"])
            continue
        if _is_whole_pair(record):
            items.whole_pairs += 1
            if not keep_whole:
                items.whole_dropped.append(record["id"])
                continue
        group = len(items.group_ids)
        items.group_ids.append(record["id"])
        crop = local.get("image")
        items.image_paths.extend([record["image"], crop or record["image"]])
        items.image_boxes.extend([None, None if crop else list(local["box"])])
        items.image_groups.extend([group, group])
        texts = [*captions_of(record), local["sentence"]]
        items.texts.extend(texts)
        items.text_groups.extend([group] * len(texts))
    if items.without_pair:
        logger.warning("%s: %d records have no local pair (mined with 'local': null) and are left out of the joint "
                       "test (first: %s)", path, len(items.without_pair), ", ".join(items.without_pair[:5]))
    if not items.group_ids:
        raise ManifestError(f"{path}: no record with a local pair is left (whole-image pairs dropped: "
                            f"{len(items.whole_dropped)}, without a pair: {len(items.without_pair)})")
    return items


def _is_whole_pair(record: dict[str, Any]) -> bool:
    """A local pair whose region is the whole image: source ``whole`` or a box covering the image."""
    from goalclip.core.images import ImageError, image_size

    local = record["local"]
    if local.get("source") == "whole":
        return True
    box = local.get("box")
    if local.get("image") or box is None:
        return False
    try:
        width, height = image_size(record["image"])
    except (ImageError, OSError):
        return False  # an unreadable image is excluded later, with its group
    return box[0] <= 0 and box[1] <= 0 and box[2] >= width and box[3] >= height


def read_eval_records(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``(file:line, record)`` of an evaluation manifest, validated as every manifest is (a joint
    test's local pair may be a crop file ``local.image``, see :func:`~goalclip.core.manifest.validate_record`)."""
    out = list(iter_records(path))
    if not out:
        raise ManifestError(f"{path}: the manifest holds no records")
    return out


def default_ks(items: EvalItems) -> list[int]:
    """The paper's K values: 1/5/25/50 for long single captions, 1/5/10 for multi-caption sets."""
    return list(MULTI_CAPTION_KS if items.multi_caption else LONG_CAPTION_KS)


# ----------------------------------------------------------------------------- encoding


def _shard(state: PartialState, n: int) -> list[int]:
    """This process's contiguous slice of ``range(n)`` (all of it in a single process)."""
    if state.num_processes == 1:
        return list(range(n))
    with state.split_between_processes(list(range(n))) as part:
        return list(part)


def _gather_rows(state: PartialState, index: Tensor, rows: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """Place every process's rows (tagged with global indices) into one ``[total, D]`` table.

    Slices differ in length (uneven splits, failed images), so both tensors are padded to the
    longest slice, gathered, and the padding (index -1) dropped; returns the table and a mask of
    filled rows.
    """
    if state.num_processes > 1:
        index = gather(pad_across_processes(index.to(state.device), dim=0, pad_index=-1)).cpu()
        rows = gather(pad_across_processes(rows.to(state.device), dim=0)).cpu()
    filled = index >= 0
    table = torch.zeros(total, rows.shape[1], dtype=torch.float32)
    table[index[filled]] = rows[filled]
    mask = torch.zeros(total, dtype=torch.bool)
    mask[index[filled]] = True
    return table, mask


def _encode_items(
    bundle: Bundle, items: EvalItems, config: EvalConfig, state: PartialState, device: torch.device
) -> Embeddings:
    """Encode this process's slice of ``items`` and gather the full embedding tables."""
    model, dtype = bundle.model, PRECISIONS[config.precision]
    dim = bundle.embed_dim
    max_len = _text_len(bundle, config)
    progress = config.progress and state.is_main_process

    image_part = _shard(state, len(items.image_paths))
    loader_args = {
        "paths": [items.image_paths[i] for i in image_part],
        "processor": bundle.image_processor,
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
        "progress": progress,
        "desc": f"{items.kind} images",
    }
    boxes = [items.image_boxes[i] for i in image_part]
    batches = PixelBatches(**loader_args, boxes=boxes)
    part_index = torch.tensor(image_part, dtype=torch.long)
    indices, rows = [torch.empty(0, dtype=torch.long)], [torch.empty(0, dim)]
    for local, pixels in batches:
        indices.append(part_index[local])
        rows.append(embed_pixels(model, pixels.to(device=device, dtype=dtype)).cpu())
    images, image_ok = _gather_rows(state, torch.cat(indices), torch.cat(rows), len(items.image_paths))
    failures = sorted(gather_object([(int(part_index[i]), msg) for i, msg in batches.failed]))

    text_part = _shard(state, len(items.texts))
    rows, truncated = embed_text_strings_counted(bundle, [items.texts[i] for i in text_part],
                                                 batch_size=config.batch_size, max_len=max_len, progress=progress,
                                                 desc=f"{items.kind} texts")
    texts, _ = _gather_rows(state, torch.tensor(text_part, dtype=torch.long), rows.cpu(), len(items.texts))
    truncated = sum(gather_object([truncated]))
    return Embeddings(images, image_ok, texts, failures, truncated, max_len)


def _text_len(bundle: Bundle, config: EvalConfig) -> int:
    """The text length used for a model: its (stretched) context, capped by ``context`` and ``max_text_len``."""
    caps = [c for c in (config.context, config.max_text_len) if c is not None]
    return min([bundle.max_text_len, *caps])


def _stretch_to_context(bundle: Bundle, source: str, config: EvalConfig) -> None:
    """Stretch a model shorter than ``config.context`` with the training-time stretch (in place).

    Only transformers CLIPs are stretched; an open_clip row shorter than ``--context`` is an error.
    """
    if config.context is None or bundle.max_text_len >= config.context:
        return
    if is_open_clip(source):
        raise ValueError(
            f"{source}: --context {config.context} cannot stretch the text positions of an open_clip model "
            f"(its context is {bundle.max_text_len}); leave --context out or use at most {bundle.max_text_len}"
        )
    try:
        prepare_text_positions(bundle, config.context, config.keep_positions)
    except ValueError as exc:
        raise ValueError(
            f"{source}: cannot stretch its {bundle.max_text_len} text positions to {config.context} positions "
            f"keeping {config.keep_positions} (--keep-positions): {exc}"
        ) from None


# ----------------------------------------------------------------------------- cache


def cache_path(config: EvalConfig, source: str, items: EvalItems) -> Path | None:
    """Where one model's embeddings of one item set are cached (None when caching is off)."""
    if config.cache_dir is None:
        return None
    key = {
        "version": CACHE_VERSION,
        "kind": items.kind,
        "model": spec_fingerprint(source) if is_open_clip(source) else fingerprint(source),
        "base": fingerprint(config.base) if Path(source).is_file() else None,
        "data": items.data_key,
        "max_text_len": config.max_text_len,
        "precision": config.precision,
        # the stretch changes the model; None when no stretch is asked for (old keys stay valid)
        "context": [config.context, config.keep_positions] if config.context is not None else None,
    }
    return Path(config.cache_dir) / f"{items.kind}-{digest_of(key)}.safetensors"


def save_embeddings(path: Path, embeddings: Embeddings) -> None:
    """Write embeddings atomically as safetensors; failures and counts go in the metadata."""
    from safetensors.torch import save

    tensors = {
        "images": embeddings.images.contiguous(),
        "image_ok": embeddings.image_ok.contiguous(),
        "texts": embeddings.texts.contiguous(),
    }
    metadata = {
        "failures": json.dumps(embeddings.failures),
        "truncated": str(embeddings.truncated),
        "text_len": str(embeddings.text_len),
    }
    with atomic_write(path, "wb") as handle:
        handle.write(save(tensors, metadata=metadata))


def load_embeddings(path: Path) -> Embeddings:
    """Read embeddings written by ``save_embeddings``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in ("images", "image_ok", "texts")}
    return Embeddings(
        images=tensors["images"],
        image_ok=tensors["image_ok"],
        texts=tensors["texts"],
        failures=[(int(i), str(m)) for i, m in json.loads(metadata["failures"])],
        truncated=int(metadata["truncated"]),
        text_len=int(metadata["text_len"]),
        cached=True,
    )


def _cache_hit(state: PartialState, path: Path | None) -> bool:
    """Whether ``path`` exists, decided by the main process so every process takes the same branch."""
    hit = [path is not None and path.is_file()]
    if state.num_processes > 1:
        broadcast_object_list(hit)
    return bool(hit[0])


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
    sim = embeddings.images[keep_images] @ embeddings.texts[keep_texts].T
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
    embeddings = {items.kind: _encode_items(bundle, items, config, state, device) for items in item_sets}
    if not state.is_main_process:
        return {}
    scores: dict[str, float] = {}
    for items in item_sets:
        failed = _failed_groups(items, [embeddings[items.kind]])
        scores.update(_score(items, embeddings[items.kind], failed, ks))
    return scores


def _check_config(config: EvalConfig) -> None:
    if not config.models:
        raise ValueError("at least one model is needed")
    if config.precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}, got {config.precision!r}")
    if config.ks is not None and (not config.ks or any(k < 1 for k in config.ks)):
        raise ValueError(f"ks must be positive integers, got {config.ks}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {config.batch_size}")
    if config.max_text_len is not None and config.max_text_len < 2:
        raise ValueError(f"max_text_len must be at least 2 (start and end tokens), got {config.max_text_len}")
    if config.context is not None:
        if config.context < 2:
            raise ValueError(f"--context must be at least 2 (start and end tokens), got {config.context}")
        if not 0 <= config.keep_positions < config.context:
            raise ValueError(
                f"--keep-positions {config.keep_positions} must be smaller than --context {config.context} "
                "(and not negative); tiny models need a small keep, e.g. 2 for 16 positions"
            )


def _embed_model(
    source: str, config: EvalConfig, item_sets: Sequence[EvalItems], state: PartialState
) -> _ModelRun:
    """Embeddings of every item set for one model, from the cache where possible.

    The model is loaded only when some set misses the cache.
    """
    run = _ModelRun(source)
    paths = {items.kind: cache_path(config, source, items) for items in item_sets}
    for items in item_sets:
        if _cache_hit(state, paths[items.kind]):
            run.embeddings[items.kind] = load_embeddings(paths[items.kind])
            logger.info("%s: %s embeddings from cache %s", source, items.kind, paths[items.kind])
    missing = [items for items in item_sets if items.kind not in run.embeddings]
    run.timing = {"load_s": 0.0, "encode_s": 0.0}
    if missing:
        device = process_device(state, config.device)
        start = time.perf_counter()
        bundle = load_encoder(source, base=config.base, device=device)
        _stretch_to_context(bundle, source, config)  # in fp32, as at training time
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
                embeddings = _encode_items(bundle, items, config, state, device)
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
    _check_config(config)
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


def _row_names(models: list[str]) -> list[str]:
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
    names = _row_names([row["model"] for row in results["models"]])
    for name, row in zip(names, results["models"]):
        cells = [f"{row['metrics'][c]:.2f}" if c in row["metrics"] else "" for c in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)
