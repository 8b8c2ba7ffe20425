"""Fingerprints that decide whether cached embeddings (eval cache, search index) are still valid.

One scheme for every cache: a model or a file is identified by its resolved path plus, for each
file under it, its size and either its modification time (cheap; right for model folders, which
are rewritten, never edited in place with the old mtime) or a hash of its bytes (for data whose
contents can change while size and mtime stay put, e.g. images copied with ``cp -p``).
A name that is not a local path (a hub id) is its own fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from goalclip.core.shards import member_ref, read_member

HASH = "sha1"  # integrity against edits, not against attackers; fast


def file_stamp(path: str | os.PathLike, *, contents: bool = False) -> str:
    """``size:mtime_ns`` of a file, or ``size:sha1`` of its bytes with ``contents=True``; a shard
    member (``<shard>.tar#<member>``) is always stamped by its bytes."""
    if member_ref(str(path)) is not None:
        data = read_member(str(path))
        return f"{len(data)}:{hashlib.new(HASH, data).hexdigest()}"
    path = Path(path)
    stat = path.stat()
    if not contents:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    with path.open("rb") as handle:
        return f"{stat.st_size}:{hashlib.file_digest(handle, HASH).hexdigest()}"


def fingerprint(source: str | os.PathLike | None, *, contents: bool = False) -> str | None:
    """Identify a model/data source: a file, a folder (every file under it) or a hub id (the name).

    A folder covers every file below it because ``save_pretrained`` overwrites files in place
    without changing the folder's own mtime.
    """
    if source is None:
        return None
    path = Path(source)
    if path.is_file():
        return f"{path.resolve()}:{file_stamp(path, contents=contents)}"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        stamps = ",".join(f"{p.relative_to(path).as_posix()}:{file_stamp(p, contents=contents)}" for p in files)
        return f"{path.resolve()}:{stamps}"
    return str(source)


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """One digest over the bytes of many files, in order; a missing or unreadable file counts as its error's name.

    Used for a manifest's images: an image that changes, appears or disappears changes the digest.
    """
    digest = hashlib.new(HASH)
    for path in paths:
        try:
            stamp = file_stamp(path, contents=True)
        except OSError as exc:  # missing or unreadable: decoding will report it, the key must still differ
            stamp = type(exc).__name__
        digest.update(f"{path}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def digest_of(key: object, length: int = 24) -> str:
    """A short hex digest of any JSON-serialisable key (file names of cache entries)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:length]
