"""``goalclip data convert``'s library side: pick a dataset's adapter, check what it kept, write the manifest.

The adapters (:mod:`~goalclip.datasets.long_captions`, :mod:`~goalclip.datasets.karpathy`,
:mod:`~goalclip.datasets.sharegpt4v`, :mod:`~goalclip.datasets.goal_json`,
:mod:`~goalclip.datasets.sa1b`) follow the rules of :mod:`goalclip.datasets.collect`. A conversion
that would write nothing, or that misses the images of more than half its records (the sign of a
wrong ``--root`` or ``--image-root``), fails without writing, unless ``allow_skips``
(``--allow-skips``) accepts it.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goalclip.core.manifest import ManifestError, SkipReport, write_jsonl, write_manifest
from goalclip.datasets.collect import Record
from goalclip.datasets.goal_json import convert_goal_json
from goalclip.datasets.karpathy import convert_coco, convert_flickr30k
from goalclip.datasets.long_captions import convert_dci, convert_docci, convert_urban1k, dci_boxes
from goalclip.datasets.sa1b import convert_sa1b, sa1b_boxes
from goalclip.datasets.sharegpt4v import convert_sharegpt4v

logger = logging.getLogger(__name__)

MAX_MISSING_SHARE = 0.5
"""A conversion missing the images of more records than this share fails (unless allow_skips)."""


ADAPTERS: dict[str, Callable[..., list[Record]]] = {
    "docci": convert_docci,
    "dci": convert_dci,
    "urban1k": convert_urban1k,
    "coco": convert_coco,
    "flickr30k": convert_flickr30k,
    "sharegpt4v": convert_sharegpt4v,
    "goal-json": convert_goal_json,
    "sa1b": convert_sa1b,
}

BOX_SOURCES: dict[str, Callable[..., list[Record]]] = {"dci": dci_boxes, "sa1b": sa1b_boxes}
"""Formats whose annotators' masks also give external boxes (``boxes_out``), and their readers."""


@dataclass
class ConvertSummary:
    """What :func:`convert` did: the counts behind its log line and the command's summary line."""

    format: str
    split: str
    root: str
    out: str
    written: int
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    boxes_out: str | None = None
    boxes_written: int = 0

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


def adapter_options(format: str) -> list[str]:
    """The keyword options one format accepts (besides ``tally``), for help and error messages."""
    params = inspect.signature(_adapter(format)).parameters
    return [name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "tally"]


def _adapter(format: str) -> Callable[..., list[Record]]:
    try:
        return ADAPTERS[format]
    except KeyError:
        raise ValueError(f"unknown format {format!r}; choose from {', '.join(ADAPTERS)}") from None


def _check_enough_kept(format: str, split: str, kept: int, tally: SkipReport, allow_skips: bool) -> None:
    """Refuse a conversion that keeps nothing, or misses most images, with a hint at the cause."""
    missing = tally.skipped.get("missing image", 0)
    total = kept + len(tally)
    if kept and (allow_skips or missing <= MAX_MISSING_SHARE * total):
        return
    tally.log()
    reasons = ", ".join(f"{count} {kind}" for kind, count in tally.skipped.items()) or "the source has none"
    problem = f"no records to write ({reasons})" if not kept else f"{missing} of {total} records skipped: missing image"
    hint = ""
    if missing:
        example = tally.details["missing image"]
        where = "--image-root (the folder holding the images)" if "image_root" in adapter_options(format) else "--root"
        hint = (f"; e.g. {tally.examples['missing image'][0]}: {example} not found. If the images are elsewhere, "
                f"pass {where}; --no-check-images keeps records without their image")
    if kept:
        hint += f"; --allow-skips writes the {kept} records found"
    raise ManifestError(f"{format} {split}: {problem}{hint}")


def convert(
    format: str,
    root: str | os.PathLike,
    split: str,
    out_path: str | os.PathLike,
    *,
    boxes_out: str | os.PathLike | None = None,
    allow_skips: bool = False,
    **options: Any,
) -> ConvertSummary:
    """Convert one split of a dataset to a manifest at ``out_path``; return the counts.

    ``options`` go to the format's adapter (see :func:`adapter_options`); one it does not take is
    an error rather than silently ignored. ``boxes_out`` (DCI and SA-1B) also writes the mask boxes of
    the records actually written, with the same ids, for ``goalclip mine --regions external``.
    Nothing is written when no record is left, or when more than :data:`MAX_MISSING_SHARE` of the
    records miss their image and ``allow_skips`` is false: a ManifestError names an example path.
    """
    adapter = _adapter(format)
    unknown = sorted(set(options) - set(adapter_options(format)))
    if unknown:
        raise ValueError(
            f"option(s) {', '.join(unknown)} do not apply to format {format!r} "
            f"(it takes: {', '.join(adapter_options(format))})"
        )
    if boxes_out is not None and format not in BOX_SOURCES:
        raise ValueError(f"boxes_out is only available for formats {', '.join(BOX_SOURCES)} (their mask boxes), "
                         f"not {format!r}")
    tally = SkipReport()
    records = adapter(root, split, tally=tally, **options)
    _check_enough_kept(format, split, len(records), tally, allow_skips)
    written = write_manifest(out_path, records)
    boxes_written = 0
    if boxes_out is not None:
        kept = {r["id"] for r in records}
        boxes = [b for b in BOX_SOURCES[format](root, split, tally=tally) if b["id"] in kept]
        boxes_written = write_jsonl(boxes_out, boxes)
    tally.log()
    summary = ConvertSummary(
        format=format,
        split=split,
        root=str(Path(root).expanduser().resolve()),
        out=str(Path(out_path).resolve()),
        written=written,
        skipped=dict(tally.skipped),
        notes=dict(tally.notes),
        examples={k: list(v) for k, v in tally.examples.items()},
        boxes_out=str(Path(boxes_out).resolve()) if boxes_out is not None else None,
        boxes_written=boxes_written,
    )
    logger.info(
        "%s %s: wrote %d records to %s, skipped %d%s",
        format,
        split,
        written,
        summary.out,
        summary.total_skipped,
        f", {boxes_written} box lists to {summary.boxes_out}" if boxes_out is not None else "",
    )
    return summary
