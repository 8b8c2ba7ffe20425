"""Settings files (``train --config``, run records) checked field by field before anything runs.

A dataclass's type annotations say what each field takes; :func:`check_fields` compares a JSON
object against them and names the file and the field of the first value that does not fit, so a
wrong type is one clear line before any model is loaded or any file is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

from goalclip.core.manifest import json_error

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


class SettingsError(ValueError):
    """A settings file or one of its fields is unusable; the message names the file and the field."""


def read_json_object(path: str | os.PathLike, what: str = "settings file") -> dict[str, Any]:
    """The JSON object in ``path``; anything else (missing, not UTF-8, not JSON, a list) is a SettingsError."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"{path}: no such {what}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not UTF-8 text (a {what} is a JSON object)") from None
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path}: not valid JSON ({json_error(exc)})") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: expected a JSON object ({what}), got a JSON {_json_kind(values)}")
    return values


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _options(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is bool or hint is str or hint is type(None):
        return isinstance(value, hint)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return True  # an annotation this checker does not know: the dataclass decides


def _describe(hint: Any) -> str:
    names = []
    for option in _options(hint):
        if dataclasses.is_dataclass(option):
            names.append("an object with " + ", ".join(f.name for f in dataclasses.fields(option)))
        else:
            names.append(_NAMES.get(option, getattr(option, "__name__", str(option))))
    return " or ".join(names)


def check_fields(cls: type, values: dict[str, Any], source: str, *, partial: bool = False) -> None:
    """Raise SettingsError naming ``source`` and the field when ``values`` has a field ``cls`` lacks, a
    value of the wrong type, or (unless ``partial``) misses a field without a default. Nested
    dataclass fields (given as objects) are checked the same way."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(f"{source}: unknown field(s) {', '.join(unknown)} (known: {', '.join(known)})")
    for name, value in values.items():
        hint = hints[name]
        if not any(_fits(value, option) for option in _options(hint)):
            raise SettingsError(f"{source}: field '{name}' must be {_describe(hint)}, got {json.dumps(value)}")
        nested = [o for o in _options(hint) if dataclasses.is_dataclass(o)]
        if nested and isinstance(value, dict):
            check_fields(nested[0], value, f"{source}: field '{name}'")
    if not partial:
        missing = [name for name, f in known.items() if name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise SettingsError(f"{source}: field(s) {', '.join(missing)} missing")
