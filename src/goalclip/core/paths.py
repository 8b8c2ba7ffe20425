"""Checks on output paths made before a long run starts, so a run never ends by losing its work.

- an output that is one of the run's inputs (the same file, also through a symlink) would be
  overwritten or read while being written;
- an output that cannot be written would fail only after hours of encoding.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    """An output (or model) path is unusable; the message names the option and the path."""


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def refuse_input_as_output(out: str | os.PathLike, out_option: str, **inputs: str | os.PathLike | None) -> None:
    """Raise when ``out`` is the same file as any input; ``inputs`` maps option names to paths.

    Option names are given without dashes and with underscores (``data=...`` -> ``--data``).
    """
    out_path = Path(out)
    for option, value in inputs.items():
        if value is not None and _same_file(out_path, Path(value)):
            flag = "--" + option.replace("_", "-")
            raise OutputPathError(
                f"{out_option} {out} is the same file as {flag} {value}; choose another {out_option}"
            )


def check_writable_file(path: str | os.PathLike, option: str) -> None:
    """Raise unless a file can be created at ``path`` (its folder is created if missing).

    Tries a real file in the target folder: permission bits do not tell the whole story
    (root, read-only mounts, a file where a folder should be).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give a file name")
    check_writable_dir(path.parent, option, shown=path)


def check_writable_dir(folder: str | os.PathLike, option: str, *, shown: str | os.PathLike | None = None) -> None:
    """Raise unless files can be created in ``folder`` (created if missing)."""
    folder = Path(folder)
    shown = folder if shown is None else shown
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".goalclip-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{option} {shown} cannot be written: {exc.strerror or exc}") from None


OUTPUT_KINDS = ("file", "folder", "prefix")


def _nearest_existing(path: Path) -> Path:
    return next((p for p in (path, *path.parents) if p.exists()), Path("."))


def check_can_create(path: str | os.PathLike, option: str, kind: str = "file") -> None:
    """Raise unless ``path`` can be written as a ``kind`` (file, folder, or a ``prefix`` of file names),
    creating nothing: the probe file goes into the nearest folder that exists and is removed at once."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give a file name")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is a file; give a folder")
    folder = path if kind == "folder" else path.parent
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputPathError(f"{option} {path} cannot be written: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".goalclip-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{option} {path} cannot be written: {exc.strerror or exc}") from None


def _is_file_system_entry(value: str | os.PathLike) -> bool:
    """Whether an option's value names something on disk; a text value too long to be a file name (a long
    ``search --query``) is not one, where ``Path.exists`` would raise."""
    try:
        return Path(value).exists()
    except OSError:
        return False


def check_outputs(outputs: dict[str, tuple[str | os.PathLike, str]], inputs: dict[str, str | os.PathLike]) -> None:
    """Check a command's outputs before it does any work: each can be written, none is one of the
    inputs, and no two are the same file. ``outputs`` maps flags to ``(path, kind)``, ``inputs``
    flags to paths; flags are shown as given (``--out``)."""
    seen: dict[str, Path] = {flag: Path(value) for flag, value in inputs.items() if _is_file_system_entry(value)}
    for option, (value, kind) in outputs.items():
        out = Path(value)
        for flag, given in seen.items():
            if _same_file(out, Path(given)):
                raise OutputPathError(f"{option} {value} is the same file as {flag} {given}; choose another {option}")
        check_can_create(out, option, kind)
        seen[option] = out


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def check_model_source(spec: str, option: str) -> None:
    """Raise when a model spec names a local path that does not exist (``./run``, ``/models/x``,
    ``ckpt.pt``): loaders would go on to the hub and report its naming rules instead."""
    if spec.startswith("open_clip:") or Path(spec).expanduser().exists():
        return
    if not HUB_ID.fullmatch(spec) or spec.lower().endswith(WEIGHT_SUFFIXES):
        raise OutputPathError(f"{option} {spec}: no such folder or file (nor a hub id such as "
                              "openai/clip-vit-base-patch32)")
