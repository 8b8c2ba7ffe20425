"""Test splits the papers use but no dataset ships: seeded sampling, published id lists, length filters.

DCI ships no test split of the size the papers report (GOAL evaluates on 1,999 DCI images and
trains on the rest), so a test set is drawn from a converted manifest: reproducibly (a seed),
never from images already trained on (``exclude``), or exactly as published (``ids``: an id list,
a manifest, or the GOAL repo's test JSON). The papers also restrict DCI to its long captions
(7,602 images); the exact criterion is not published, so :func:`filter_min_words` takes the
threshold as a parameter. Word counts split on whitespace; nothing here needs a tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from goalclip.core.manifest import ManifestError, captions_of, iter_jsonl

logger = logging.getLogger(__name__)

Record = dict[str, Any]


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Ids from a published list, in its order (repeats dropped).

    - ``.jsonl``: a manifest, one record per line with ``id``;
    - ``.json``: a list of id strings, or of objects with ``id`` or ``filename``/``image`` (the
      file's stem is the id, as for the GOAL repo's ``DCI_test.json``; crop entries of a joint
      file, under ``<image>_results/``, are not test images and are skipped);
    - anything else: one id per line; blank lines and ``#`` comments are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such id list")
    ids: list[str] = []
    if path.suffix == ".jsonl":
        for lineno, obj in iter_jsonl(path):
            rid = obj.get("id")
            if not isinstance(rid, str) or not rid:
                raise ManifestError(f"{path}:{lineno}: field 'id' must be a non-empty string")
            ids.append(rid)
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path}: not a JSON id list ({exc})") from None
        if not isinstance(data, list):
            raise ManifestError(f"{path}: expected a JSON list, got {type(data).__name__}")
        for i, entry in enumerate(data):
            rid = _json_id(entry, f"{path}: [{i}]")
            if rid is not None:
                ids.append(rid)
    else:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                ids.append(line)
    return list(dict.fromkeys(ids))


def _json_id(entry: Any, where: str) -> str | None:
    if isinstance(entry, str) and entry:
        return entry
    if isinstance(entry, dict):
        if isinstance(entry.get("id"), str) and entry["id"]:
            return entry["id"]
        name = entry.get("filename", entry.get("image"))
        if isinstance(name, str) and name:
            file = PurePosixPath(name)
            return None if file.parent.name.endswith("_results") else file.stem
    raise ManifestError(f"{where}: expected an id string or an object with 'id' or 'filename', got {entry!r}")


def filter_min_words(records: Iterable[Record], min_words: int) -> tuple[list[Record], list[str]]:
    """Records whose longest caption has at least ``min_words`` words; and the ids left out."""
    kept: list[Record] = []
    dropped: list[str] = []
    for record in records:
        words = max(len(caption.split()) for caption in captions_of(record))
        (kept.append(record) if words >= min_words else dropped.append(record["id"]))
    return kept, dropped


def split_records(
    records: Sequence[Record],
    *,
    test_size: int | None = None,
    seed: int = 0,
    exclude: Iterable[str] = (),
    ids: Sequence[str] | None = None,
) -> tuple[list[Record], list[Record]]:
    """``(test, rest)``: a disjoint split of ``records``, both in manifest order.

    With ``ids``, the test set is the records with those ids (ids not in ``records`` are
    counted in a warning: real conversions miss a few images). Otherwise ``test_size`` records
    are drawn with ``random.Random(seed).sample`` from the records whose id is not in
    ``exclude`` (e.g. the ids of a training manifest), so a model is never tested on what it was
    trained on. ``rest`` is everything else, excluded records included.
    """
    excluded = set(exclude)
    if ids is not None:
        wanted = set(ids)
        leaked = sorted(wanted & excluded)
        if leaked:
            raise ValueError(f"{len(leaked)} listed test ids are also in the excluded (training) ids: "
                             f"{', '.join(leaked[:5])}")
        present = {r["id"] for r in records}
        absent = [rid for rid in ids if rid not in present]
        if absent:
            logger.warning("%d of %d listed test ids are not in the manifest (first: %s)",
                           len(absent), len(ids), ", ".join(absent[:5]))
        chosen = wanted & present
        if not chosen:
            raise ValueError("none of the listed test ids is in the manifest")
    else:
        if test_size is None or test_size < 1:
            raise ValueError(f"test size must be a positive number, got {test_size}")
        eligible = [r["id"] for r in records if r["id"] not in excluded]
        if test_size > len(eligible):
            raise ValueError(f"test size {test_size} exceeds the {len(eligible)} records left after excluding "
                             f"{len(records) - len(eligible)}")
        chosen = set(random.Random(seed).sample(eligible, test_size))
    test = [r for r in records if r["id"] in chosen]
    rest = [r for r in records if r["id"] not in chosen]
    return test, rest


def make_split(
    data: str | os.PathLike,
    out_test: str | os.PathLike,
    *,
    out_rest: str | os.PathLike | None = None,
    test_size: int | None = None,
    seed: int = 0,
    exclude: Sequence[str | os.PathLike] = (),
    ids_from: str | os.PathLike | None = None,
    min_words: int | None = None,
) -> dict[str, Any]:
    """``goalclip data split``: filter, split and write a manifest; returns (and writes beside
    ``out_test`` as ``<stem>.split.json``) a summary that records how the split was made."""
    from goalclip.core.manifest import atomic_write, write_manifest
    from goalclip.core.records import read_manifest
    from goalclip.core.paths import refuse_input_as_output

    if (test_size is None) == (ids_from is None):
        raise ValueError("give exactly one of --test-size or --ids-from")
    inputs = [("data", data), ("ids_from", ids_from), *(("exclude", p) for p in exclude)]
    for flag, out in (("--out-test", out_test), ("--out-rest", out_rest)):
        for name, path in inputs:
            if out is not None:
                refuse_input_as_output(out, flag, **{name: path})
    records = read_manifest(data)
    kept, filtered = (records, []) if min_words is None else filter_min_words(records, min_words)
    excluded = {rid for path in exclude for rid in read_id_list(path)}
    ids = read_id_list(ids_from) if ids_from is not None else None
    test, rest = split_records(kept, test_size=test_size, seed=seed, exclude=excluded, ids=ids)
    write_manifest(out_test, test)
    if out_rest is not None:
        write_manifest(out_rest, rest)
    summary = {
        "data": str(data), "records": len(records), "min_words": min_words, "filtered": len(filtered),
        "seed": None if ids_from is not None else seed, "test_size": test_size,
        "ids_from": str(ids_from) if ids_from is not None else None,
        "exclude": [str(p) for p in exclude], "excluded_ids": len(excluded),
        "test": len(test), "rest": len(rest), "out_test": str(out_test),
        "out_rest": str(out_rest) if out_rest is not None else None,
    }
    with atomic_write(Path(out_test).with_name(Path(out_test).stem + ".split.json")) as handle:
        json.dump(summary, handle, indent=2)
    return summary
