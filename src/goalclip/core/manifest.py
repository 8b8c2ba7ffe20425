"""JSON Lines manifests: reading with line-numbered errors, validation, atomic writing, output locks.

Every command reads and writes the same record shapes (see docs/design.md, "Data formats"):

- captioned image: ``{"id", "image", "caption"}`` or ``{"id", "image", "captions": [...]}``
- mined pair: the above plus ``"local": {"sentence", "box", "score", "source"}`` (or null: no local
  pair) and ``"candidates"``; a joint test's local pair may name a crop file ``"image"`` instead of a box
- external boxes: ``{"id", "boxes": [[x1, y1, x2, y2], ...]}``

Image paths in a file are relative to the file's folder (or absolute); in memory they are
absolute, so records can be moved between manifests in different folders without breaking.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCAL_SOURCES = ("detector", "grid", "sam", "external", "whole")
# File endings that count as images when a folder is listed (dataset adapters, search, viz).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


# Leading bytes of compressed files, which a manifest reader would otherwise report as "not UTF-8".
COMPRESSED = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd"}


class ManifestError(ValueError):
    """A manifest line is malformed; the message names the file, line and field."""


class OutputLocked(FileExistsError):
    """Another live run is writing the same output (see :func:`output_lock`)."""


class SkipReport:
    """What a run left out, counted by kind with the first few examples of each kind.

    ``skipped`` counts whole records dropped, ``notes`` parts of kept records dropped (an empty
    caption among five, a local pair without a box). Counting by kind keeps a million-record
    run's summary readable while still naming where to look; ``details`` keeps the first detail
    of each kind (such as the missing file's path) for error messages.
    """

    def __init__(self, keep_examples: int = 5) -> None:
        self.skipped: dict[str, int] = {}
        self.notes: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.details: dict[str, str] = {}
        self._keep = keep_examples

    def _count(self, counts: dict[str, int], kind: str, example: str) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self._keep:
            examples.append(example)

    def skip(self, kind: str, example: str, detail: str | None = None) -> None:
        """Count a record that will not be used (``example``: its id or where it is)."""
        self._count(self.skipped, kind, example)
        if detail is not None:
            self.details.setdefault(kind, detail)

    def note(self, kind: str, example: str) -> None:
        """Count a part of a kept record that was dropped."""
        self._count(self.notes, kind, example)

    def add(self, message: str, kind: str = "invalid record") -> None:
        """Count a record dropped by validation; its message (file:line: field) is logged at once."""
        logger.warning("skipping: %s", message)
        self.skip(kind, message)

    def __len__(self) -> int:
        return sum(self.skipped.values())

    def log(self) -> None:
        """One line per kind, so problems show up even when nobody reads the summary."""
        for kind, count in self.skipped.items():
            logger.warning("skipped %d record(s): %s (first ids: %s)", count, kind, ", ".join(self.examples[kind]))
        for kind, count in self.notes.items():
            logger.info(
                "%d record(s) kept without a part: %s (first ids: %s)", count, kind, ", ".join(self.examples[kind])
            )


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temps(path: Path) -> None:
    """Delete temp files of ``path`` left by writers that were killed (their pid no longer runs)."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[0-9a-f]{8}\.tmp")
    for tmp in path.parent.iterdir():
        match = pattern.fullmatch(tmp.name)
        if match and not pid_alive(int(match.group(1))):
            logger.info("removing %s, left by a killed writer", tmp)
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new ``.<name>.<pid>.<random>.tmp`` next to ``path``, created with the umask's permissions."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", fsync: bool = True):
    """Open a temporary file next to ``path`` and rename it over ``path`` only on success.

    A crash mid-write leaves the previous file (or nothing) in place, never half a file; the
    temp file's name holds the writer's pid, so the next write of ``path`` removes temps of
    writers that were killed. The file gets the permissions the umask gives any new file.
    ``fsync=False`` skips forcing the data to disk, for many small files (rendered images)
    whose manifest, written last with fsync, is the commit point.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    fd, tmp = _create_temp(path)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """This process's umask, read without changing it where Linux shows it (no race with threads)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the permissions the umask gives new files
    and folders. Libraries that write through their own temp files (safetensors, hence
    ``save_pretrained`` and Accelerate's checkpoints) leave them mode 600, unreadable by other users."""
    path = Path(path)
    mask = _umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` for a library that writes a file by name (safetensors'
    ``save_file``); renamed over ``path`` with the umask's permissions only once the body succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    fd, tmp = _create_temp(path)
    os.close(fd)
    try:
        yield tmp
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder next to ``path`` for a library that writes a folder (``save_pretrained``); its
    files get the umask's permissions and are renamed into ``path`` only once the body succeeds, so a
    crash never leaves half a model. Files of ``path`` the body did not write are kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    fd, tmp = _create_temp(path)
    os.close(fd)
    os.unlink(tmp)
    tmp.mkdir()
    try:
        yield tmp
        follow_umask(tmp)
        path.mkdir(exist_ok=True)
        for item in tmp.iterdir():
            os.replace(item, path / item.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_lock(lock: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None when the file is gone; {} when it is unreadable."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _take_over(lock: Path, stale: dict[str, Any]) -> None:
    """Remove a stale lock, unless another run replaced it since it was read (then it is put back)."""
    grave = lock.with_name(f"{lock.name}.{os.getpid()}.stale")
    try:
        os.replace(lock, grave)
    except FileNotFoundError:  # another run took it over first
        return
    if _read_lock(grave) != stale:
        with contextlib.suppress(FileExistsError):
            os.link(grave, lock)
    grave.unlink()


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<out>.lock`` while a run writes ``out``, so two runs never write one output.

    The lock file is created atomically (``O_EXCL``) and records the holder's pid and host. A
    second run fails with :class:`OutputLocked` naming them. A lock whose process no longer runs
    on this host (a killed run) is taken over with a warning; a lock from another host is never
    guessed stale. The lock is removed when the block ends, whether it succeeds or fails.
    """
    out = Path(os.path.abspath(out))
    lock = out.with_name(out.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder is None:
                continue
            pid, host = holder.get("pid"), holder.get("host")
            if not isinstance(pid, int) or not isinstance(host, str):
                raise OutputLocked(
                    f"{out} is locked by {lock}, which does not name its holder; if no other run writes "
                    f"{out}, delete {lock}"
                ) from None
            if host == me["host"] and not pid_alive(pid):
                logger.warning("taking over the stale lock %s of pid %d on %s, which no longer runs", lock, pid, host)
                _take_over(lock, holder)
                continue
            raise OutputLocked(
                f"{out} is being written by another run (pid {pid} on {host}, lock {lock}); wait for it to "
                f"finish or choose another output; if that run is gone, delete {lock}"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        break
    try:
        yield lock
    finally:
        if _read_lock(lock) == me:
            lock.unlink()


def json_error(exc: json.JSONDecodeError, *, line: bool = True) -> str:
    """json's message with its position (its ``msg`` alone stops at "Invalid control character at")."""
    where = f"line {exc.lineno}, column {exc.colno}" if line else f"column {exc.colno}"
    return f"{exc.msg.removesuffix(' at')} at {where}"


def _decode_line(raw: bytes, first: bool) -> str:
    """One manifest line as text; a byte that is not UTF-8 is a ValueError saying where it is."""
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        byte = f"0x{raw[exc.start]:02x}"
        raise ValueError(f"not UTF-8 text (byte {byte} at byte {exc.start + 1} of the line)") from None


def iter_jsonl(
    path: str | os.PathLike, *, skipped: SkipReport | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; a line that is not UTF-8 or not a
    JSON object raises ManifestError (or, when a ``skipped`` report is given, is counted there and
    skipped). A UTF-8 byte-order mark at the start of the file is ignored."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    with path.open("rb") as handle:
        start = handle.read(6)
        compressed = next((name for name, magic in COMPRESSED.items() if start.startswith(magic)), None)
        if compressed:
            raise ManifestError(f"{path}: a {compressed}-compressed file; compressed manifests and shards are not "
                                "supported: decompress it (a .tar.gz to its .tar shard) first")
        handle.seek(0)
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = _decode_line(raw, first=lineno == 1)
            except ValueError as exc:
                error = ManifestError(f"{path}:{lineno}: {exc}")
            else:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    error = ManifestError(f"{path}:{lineno}: malformed JSON ({json_error(exc, line=False)})")
                else:
                    if isinstance(obj, dict):
                        yield lineno, obj
                        continue
                    error = ManifestError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if skipped is None:
                raise error
            skipped.add(str(error))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Atomically write plain JSON objects, one per line; returns the count."""
    count = 0
    with atomic_write(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def captions_of(record: dict[str, Any]) -> list[str]:
    """All captions of a record, whichever of ``caption`` / ``captions`` it uses."""
    if "captions" in record:
        return list(record["captions"])
    return [record["caption"]]


def check_box(box: Any, where: str, require_area: bool = True) -> list[float]:
    """``box`` as four floats; a ManifestError naming ``where`` unless it is four numbers (and, with
    ``require_area``, finite with positive area)."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise ManifestError(f"{where}: a box must be [x1, y1, x2, y2] numbers, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if require_area and not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ManifestError(f"{where}: box {box!r} is not finite")
    if require_area and not (x2 > x1 and y2 > y1):
        raise ManifestError(f"{where}: box {box!r} has zero or negative area")
    return [x1, y1, x2, y2]


def validate_record(record: dict[str, Any], where: str) -> None:
    """Check one captioned (or mined) record's fields; raise ManifestError naming the field."""
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        raise ManifestError(f"{where}: field 'id' must be a non-empty string")
    if not isinstance(record.get("image"), str) or not record["image"]:
        raise ManifestError(f"{where}: field 'image' must be a path string")
    if "captions" in record:
        caps = record["captions"]
        if not isinstance(caps, list) or not caps:
            raise ManifestError(f"{where}: field 'captions' must be a non-empty list of strings")
        fieldname = "captions"
    elif "caption" in record:
        caps = [record["caption"]]
        fieldname = "caption"
    else:
        raise ManifestError(f"{where}: needs field 'caption' or 'captions'")
    for cap in caps:
        if not isinstance(cap, str) or not cap.strip():
            raise ManifestError(f"{where}: field '{fieldname}' holds an empty or non-string caption")
    local = record.get("local")
    if local is not None:
        if not isinstance(local, dict):
            raise ManifestError(f"{where}: field 'local' must be an object")
        sentence = local.get("sentence")
        if not isinstance(sentence, str) or not sentence.strip():
            raise ManifestError(f"{where}: field 'local.sentence' must be a non-empty string")
        if "image" in local:  # a crop file (the GOAL authors' joint tests); a box is then optional
            if not isinstance(local["image"], str) or not local["image"]:
                raise ManifestError(f"{where}: field 'local.image' must be a path string (a crop file)")
            if local.get("box") is None:
                return
        local["box"] = check_box(local.get("box"), f"{where}: field 'local.box'")


def relativize(record: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """Copy of ``record`` whose image path (and crop file ``local.image``) is relative to ``folder``
    (where the manifest lives)."""
    out = {**record, "image": _relative_path(record["image"], folder)}
    local = record.get("local")
    if isinstance(local, dict) and isinstance(local.get("image"), str):
        out["local"] = {**local, "image": _relative_path(local["image"], folder)}
    return out


def _relative_path(path: str, folder: str | os.PathLike) -> str:
    try:
        return os.path.relpath(path, Path(folder).resolve())
    except ValueError:  # different drive on Windows: keep absolute
        return str(path)


def write_manifest(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Atomically write records with image paths made relative to the manifest's folder."""
    folder = Path(path).resolve().parent
    return write_jsonl(path, (relativize(r, folder) for r in records))


def read_boxes(path: str | os.PathLike) -> dict[str, list[list[float]]]:
    """Read an external-boxes file ``{"id", "boxes": [[x1, y1, x2, y2], ...]}`` keyed by id.

    Only the shape is checked here; clipping to the image and dropping empty boxes is the
    region proposer's job, since only it knows the image size.
    """
    out: dict[str, list[list[float]]] = {}
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        rid = record.get("id")
        if not isinstance(rid, str) or not rid:
            raise ManifestError(f"{where}: field 'id' must be a non-empty string")
        boxes = record.get("boxes")
        if not isinstance(boxes, list):
            raise ManifestError(f"{where}: field 'boxes' must be a list of [x1, y1, x2, y2]")
        out.setdefault(rid, []).extend(
            check_box(b, f"{where}: field 'boxes[{i}]'", require_area=False) for i, b in enumerate(boxes)
        )
    return out
