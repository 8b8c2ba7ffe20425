"""The rules every dataset adapter shares, so that every manifest can be trusted the same way.

Every adapter reads a dataset exactly as its authors ship it and returns captioned records
(``{"id", "image", "caption"}`` or ``"captions": [...]``, see docs/design.md, "Data formats") with
absolute image paths; :func:`goalclip.datasets.convert.convert` writes them with
:func:`~goalclip.core.manifest.write_manifest`, which makes the paths relative to the manifest.
Nothing is copied or re-encoded.

- a malformed source (a missing field, a wrong type, broken JSON) raises
  :class:`~goalclip.core.manifest.ManifestError` naming the file, the entry and the field: silently
  guessing would produce a manifest that evaluates on the wrong captions;
- broken *entries* (an empty caption, a photo that is not on disk, a repeated id) are skipped and
  tallied, with the first few ids, because real downloads always miss a few files and one of them
  must not stop a conversion of thousands (:class:`Collector`);
- captions are stripped; ids are unique within a manifest and stable across runs (the dataset's
  own id or the image's file stem, prefixed with the dataset's name where that stem is a bare
  number); records come out in the dataset's own order (or natural file-name order where the
  dataset has none), so two runs write byte-identical manifests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from goalclip.core.manifest import ManifestError, SkipReport, validate_record

Record = dict[str, Any]


class Collector:
    """Applies the rules every adapter shares: strip, drop empties, unique ids, image on disk.

    Without a caller's tally it keeps its own and logs it in :meth:`result`, so an adapter called
    directly still warns about what it skipped.
    """

    def __init__(self, tally: SkipReport | None, check_images: bool) -> None:
        self.owns_tally = tally is None
        self.tally = tally if tally is not None else SkipReport()
        self.check_images = check_images
        self.records: list[Record] = []
        self._seen: set[str] = set()

    def add(
        self,
        rid: str,
        image: Path,
        captions: str | list[str],
        where: str,
        *,
        limit: int | None = None,
        extra: Callable[[], Record] | None = None,
    ) -> Record | None:
        """Build, check and keep one record; return it, or None when it was skipped.

        A string gives a single ``caption``; a list gives ``captions`` (empty ones dropped, then
        the first ``limit`` kept). Ids are marked as seen on their first appearance, so a repeated
        id is always skipped, whatever happened to its first record. ``extra`` builds further
        fields only once the record is known to be kept, so what it tallies is about kept records.
        """
        if rid in self._seen:
            self.tally.skip("duplicate id", rid)
            return None
        self._seen.add(rid)
        record: Record = {"id": rid, "image": str(image)}
        if isinstance(captions, str):
            text = captions.strip()
            if not text:
                self.tally.skip("empty caption", rid)
                return None
            record["caption"] = text
        else:
            kept = [c.strip() for c in captions if c.strip()]
            if not kept:
                self.tally.skip("empty caption", rid)
                return None
            if len(kept) < len(captions):
                self.tally.note("empty caption dropped", rid)
            record["captions"] = kept[:limit] if limit else kept
        if self.check_images and not image.is_file():
            self.tally.skip("missing image", rid, detail=str(image))
            return None
        validate_record(record, where)
        if extra is not None:  # the adapter checks what it adds (a crop-file pair has no box to validate)
            record.update(extra())
        self.records.append(record)
        return record

    def result(self) -> list[Record]:
        """The kept records (logging the tally first when it is this collector's own)."""
        if self.owns_tally:
            self.tally.log()
        return self.records


def check_split(split: str, allowed: tuple[str, ...], dataset: str) -> None:
    """Refuse a split the dataset does not have, listing the ones it has."""
    if split not in allowed:
        raise ValueError(f"{dataset}: unknown split {split!r}; choose from {', '.join(allowed)}")


def first_file(candidates: list[Path], what: str) -> Path:
    """The first existing file of ``candidates`` (a dataset ships its annotation file in several places)."""
    for path in candidates:
        if path.is_file():
            return path
    raise ManifestError(f"no {what} found; looked for: {', '.join(str(p) for p in candidates)}")
