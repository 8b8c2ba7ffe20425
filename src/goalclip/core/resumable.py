"""Resumable per-record outputs shared by ``goalclip mine`` and ``goalclip caption``.

Each process streams its records to ``OUT.part<rank>`` (and skips to ``OUT.part<rank>.skipped``),
flushed per record; a final merge writes ``OUT``. ``--resume`` reads the ids already written, so
every id is written once however often a run is killed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from goalclip.core.manifest import ManifestError, iter_jsonl

logger = logging.getLogger(__name__)


def part_paths(out: Path) -> tuple[list[Path], list[Path]]:
    """The record part files and skipped part files of ``out``, every process's."""
    return sorted(out.parent.glob(out.name + ".part*[0-9]")), sorted(out.parent.glob(out.name + ".part*.skipped"))


def done_ids(paths: list[Path], field: str = "id") -> set[str]:
    """Ids already written by earlier (possibly interrupted) runs; a torn last line is cut off. A record
    without ``field`` (what the command writes) is another command's output: a ManifestError naming it."""
    done: set[str] = set()
    for path in paths:
        if not path.exists():
            continue
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with path.open("r+b") as handle:
                handle.truncate(keep)
            logger.warning("%s: dropped a torn last line from an interrupted run", path)
        for lineno, obj in iter_jsonl(path):
            if "id" not in obj or field not in obj:
                raise ManifestError(f"{path}:{lineno}: a record without '{field if 'id' in obj else 'id'}' is not "
                                    "this command's output; --resume continues the same command's --out")
            done.add(obj["id"])
    return done


def ids_already_written(out: Path, resume: bool, field: str = "id") -> set[str]:
    """Ids an earlier run of ``out`` finished; without ``resume`` any earlier output is an error.
    Records of ``out`` and its parts must have ``field`` (``local`` for mine, ``caption`` for caption)."""
    part_files, skip_files = part_paths(out)
    if out.exists() and not resume:
        raise FileExistsError(f"{out} exists; pass --resume to continue it or choose another --out")
    if (part_files or skip_files) and not resume:
        raise FileExistsError(f"{out}.part* files from an interrupted run exist; pass --resume")
    done = done_ids(part_files, field) | done_ids(skip_files) if resume else set()
    if out.exists():
        done |= done_ids([out], field)
    return done
