"""Reading dataset annotation files with errors that name the file, the entry and the field.

Shared by the dataset converters (the adapters of this package).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from goalclip.core.manifest import ManifestError, json_error


def dataset_root(root: str | os.PathLike) -> Path:
    """``root`` resolved, or a ManifestError when it is not a folder."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ManifestError(f"{root}: dataset root is not a folder")
    return root


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``2`` before ``10`` (Urban1k and DCI mask ids are bare numbers)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def load_json(path: Path) -> Any:
    """A whole JSON file, or a ManifestError naming the file (missing, malformed, not UTF-8)."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: malformed JSON ({json_error(exc)})") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start + 1}: {exc.reason})") from None


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", list: "a list", dict: "an object", int: "an integer", float: "a number"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def get_field(obj: Any, name: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """``obj[name]``, or a ManifestError naming the entry and the field when absent or mistyped."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if name not in obj:
        raise ManifestError(f"{where}: field {name!r} is missing")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ManifestError(f"{where}: field {name!r} must be {_type_name(kind)}, got {type(value).__name__}")
    return value


def get_number(obj: Any, name: str, where: str) -> float:
    """``obj[name]`` as a float (an int or a float in the JSON; a bool is refused)."""
    return float(get_field(obj, name, where, (int, float)))
