"""WebDataset tar shards read wherever a JSONL manifest is read (train, mine, caption, eval).

A shard holds, per record, ``<key>.json`` (the manifest record, its ``image`` naming the member)
and the image member ``<key>.<ext>`` (the original file's bytes); see docs/design.md, "Data
formats". ``--data`` is read as shards when it ends in ``.tar``, holds a brace range
(``train-{000000..000009}.tar``) or ``::``, or is a ``pipe:`` or other URL.

Design: shards are read into the same record lists as a JSONL manifest, with each image path
replaced by a member reference ``<local shard path>#<member>`` that :mod:`goalclip.core.images`
opens like a file (bytes read at the member's offset, on access, in the worker that decodes it).
So every command keeps its own rules unchanged: training's global per-epoch permutation and
resume, mining's and captioning's output order and per-record resume, evaluation's ground truth;
a run from shards equals the run from the manifest they were written from. The JSON members are
read when a command starts (as a JSONL file is); an image member is read where the JSONL reader
would open the image file (a header check, a decode), and mining and captioning give each process
whole shards (:func:`split_records`), so under ``accelerate launch`` each process reads its own
shards' images. True streaming (an IterableDataset) was not chosen: it would change training's
order rule (a per-rank shard shuffle instead of one global permutation) and resume (by shard
position instead of by step), and mining's and captioning's merge needs every record's id anyway.
Shards must be uncompressed tar files (members are read at their offsets).

Remote shards (``pipe:``, http, s3, gs, ... -- anything webdataset's ``gopen`` or fsspec opens)
are fetched once per process and run into a local cache (``$GOALCLIP_SHARD_CACHE``, default
``<tmp>/goalclip-shards``) and then read like local ones; records from them name the cached copy.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from goalclip.core.manifest import ManifestError, SkipReport, atomic_write, json_error

logger = logging.getLogger(__name__)

_BRACES = re.compile(r"\{[^{}]*\.\.[^{}]*\}")
_REF = re.compile(r"(.+\.tar)#([^#/\\]+)")
_index: dict[str, tuple[tuple[int, int], dict[str, tuple[int, int]]]] = {}  # shard -> (stat, member offsets)
_fetched: dict[str, Path] = {}  # remote URL -> its local copy, in this process


def is_shards(data: str | os.PathLike) -> bool:
    """Whether ``--data`` names shards (``.tar``, a brace range, a ``::`` list or a ``pipe:``/URL) rather than JSONL."""
    text = str(data)
    if text.startswith("pipe:") or "::" in text or _BRACES.search(text):
        return True
    return text.endswith(".tar")


def expand_urls(spec: str) -> list[str]:
    """Shard URLs of a brace pattern or ``::`` list (webdataset's expansion), local paths made absolute."""
    from webdataset.shardlists import expand_urls as wds_expand

    urls = [url if _is_remote(url) else os.path.abspath(url) for url in wds_expand(str(spec))]
    if not urls:
        raise ManifestError(f"{spec}: names no shards")
    return urls


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or len(urlparse(url).scheme) > 1  # 'C:' is a drive, not a scheme


def split_by_rank(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Process ``rank``'s share of ``world``: every ``world``-th item from ``rank`` (all of them in one process)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world} processes")
    return list(items[rank::world])


def split_records(records: Sequence[dict[str, Any]], rank: int, world: int) -> list[dict[str, Any]]:
    """This process's records: whole shards (by :func:`split_by_rank` over shards in order) when the
    records came from shards, else every ``world``-th record, as before shards existed."""
    shards: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        ref = member_ref(record["image"])
        if ref is None:
            return split_by_rank(records, rank, world)
        shards.setdefault(ref[0], []).append(record)
    groups = list(shards.values())
    if world > 1 and len(groups) < world:
        logger.warning("%d shards for %d processes: %d processes get no work (write more, smaller shards)",
                       len(groups), world, world - len(groups))
    return [record for group in split_by_rank(groups, rank, world) for record in group]


def member_ref(path: str) -> tuple[str, str] | None:
    """``(shard, member)`` of an image path ``<shard>.tar#<member>``; None for a plain file path."""
    match = _REF.fullmatch(str(path))
    if match is None or os.path.exists(path):
        return None
    return match.group(1), match.group(2)


def _scan(shard: str) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) of a local shard, cached per process until the file changes."""
    stat = os.stat(shard)
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _index.get(shard)
    if cached is not None and cached[0] == key:
        return cached[1]
    members: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if member.isfile():
                    members[member.name] = (member.offset_data, member.size)
    except tarfile.ReadError as exc:
        if not members:
            raise
        # a shard cut short (an interrupted copy): the members before the cut are read, and one cut
        # through is found out when read (skipped and counted like a truncated image file)
        logger.warning("%s is cut short (%s); reading the %d members before the cut", shard, exc, len(members))
    _index[shard] = (key, members)
    return members


class _MemberView(io.RawIOBase):
    """One shard member as a read-only file, so reading an image's header reads only the header."""

    def __init__(self, shard: str, offset: int, size: int) -> None:
        super().__init__()
        self._file = open(shard, "rb")  # noqa: SIM115 (closed by close())
        self._start, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        self._file.seek(self._start + self._pos)
        data = self._file.read(min(len(buffer), max(0, self._size - self._pos)))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def open_member(path: str) -> BinaryIO:
    """A shard member ``<shard>.tar#<member>`` opened as a read-only binary file.

    FileNotFoundError when the shard or the member is missing, OSError when the shard is not a
    readable tar or ends inside the member.
    """
    ref = member_ref(path)
    if ref is None:
        raise ValueError(f"{path} is not a shard member reference")
    shard, name = ref
    try:
        offset, size = _scan(shard)[name]
    except KeyError:
        raise FileNotFoundError(f"{path}: no member {name} in {shard}") from None
    except tarfile.TarError as exc:
        raise OSError(f"{shard}: not a readable tar ({exc})") from None
    if offset + size > os.path.getsize(shard):
        raise OSError(f"{path}: the shard ends inside this member")
    return io.BufferedReader(_MemberView(shard, offset, size), buffer_size=1 << 16)


def read_member(path: str) -> bytes:
    """The bytes of an image path, a plain file or a shard member."""
    if member_ref(path) is None:
        return Path(path).read_bytes()
    with open_member(path) as handle:
        return handle.read()


def image_exists(path: str) -> bool:
    """Whether an image path (a file or a shard member) names something that exists."""
    ref = member_ref(path)
    if ref is None:
        return Path(path).is_file()
    try:
        return ref[1] in _scan(ref[0])
    except (OSError, tarfile.TarError):
        return False


def _open_url(url: str):
    """A byte stream of a remote shard: webdataset's ``gopen`` for its schemes (pipe:, http, gs, ...), else fsspec."""
    from webdataset.gopen import gopen, gopen_schemes

    scheme = "pipe" if url.startswith("pipe:") else urlparse(url).scheme
    if scheme in gopen_schemes:
        return gopen(url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def local_shard(url: str) -> str:
    """A local path for a shard URL: the file itself, or a copy of a remote shard fetched once per process."""
    if not _is_remote(url):
        return url
    if url.startswith("file:"):
        return urlparse(url).path
    if url in _fetched:
        return str(_fetched[url])
    cache = Path(os.environ.get("GOALCLIP_SHARD_CACHE") or Path(tempfile.gettempdir()) / "goalclip-shards")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[-60:]
    target = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if not target.name.endswith(".tar"):
        target = target.with_name(target.name + ".tar")
    logger.info("fetching shard %s -> %s", url, target)
    try:
        # the stream closes first: a pipe whose command failed raises there, and no copy is kept
        with atomic_write(target, "wb", fsync=False) as sink, _open_url(url) as stream:
            shutil.copyfileobj(stream, sink, 1 << 20)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{url}: cannot fetch the shard ({exc})") from None
    _fetched[url] = target
    return str(target)


def _decode(raw: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: malformed JSON ({json_error(exc)})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _as_refs(obj: dict[str, Any], shard: str) -> dict[str, Any]:
    """The record with its member names (``image``, a joint test's ``local.image``) as member references."""
    if isinstance(obj.get("image"), str) and obj["image"]:
        obj["image"] = f"{shard}#{obj['image']}"
    local = obj.get("local")
    if isinstance(local, dict) and isinstance(local.get("image"), str) and local["image"]:
        local["image"] = f"{shard}#{local['image']}"
    return obj


def iter_shard_objects(
    spec: str, *, skipped: SkipReport | None = None
) -> Iterator[tuple[str, dict[str, Any], Path]]:
    """``(where, record, folder)`` per JSON member of every shard in order, image names as member
    references; ``where`` is ``shard:member``. A member that is not a JSON object raises
    ManifestError (or is counted in ``skipped`` and passed over), as a bad JSONL line does."""
    for url in expand_urls(spec):
        shard = local_shard(url)
        if not os.path.isfile(shard):
            raise ManifestError(f"{url}: no such shard file")
        try:
            members = _scan(shard)
        except tarfile.TarError as exc:
            raise ManifestError(f"{url}: not a readable tar shard ({exc})") from None
        with open(shard, "rb") as handle:
            for name, (offset, size) in members.items():  # in the shard's order
                if not name.endswith(".json"):
                    continue
                where = f"{url}:{name}"
                handle.seek(offset)
                raw = handle.read(size)
                try:
                    if len(raw) != size:
                        raise ManifestError(f"{where}: the shard ends inside this member")
                    obj = _decode(raw, where)
                except ManifestError as exc:
                    if skipped is None:
                        raise
                    skipped.add(str(exc))
                    continue
                yield where, _as_refs(obj, shard), Path(shard).parent
