"""One declaration per command option: a config dataclass field carries its help, choices and flag.

The library's defaults are the dataclass defaults and the CLI's flags are built from the same
fields (:func:`add_options`), so the two cannot drift. Torch-free: a command's parser is built
without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

_KEY = "goalclip.option"

# Help shared by several commands, so each option means the same everywhere.
SHARDS_HELP = ("or WebDataset shards (goalclip data shard): a .tar, a brace pattern such as "
               "shards/train-{000000..000009}.tar, or a pipe:/fsspec URL")
DEVICE_HELP = ("torch device for {what}: auto (CUDA when available, or each process's own device under "
               "accelerate launch; else CPU), cpu, cuda, cuda:1, ...")
NO_PROGRESS_HELP = "hide progress bars (goalclip's and the libraries' own, e.g. weight loading)"
MAX_IMAGE_PIXELS_HELP = ("refuse images with more pixels than this as possible decompression bombs (skipped and "
                         "counted like unreadable files); 0 = no limit")
MAX_IMAGE_PIXELS_DEFAULT = "PIL's 89478485"
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")  # goalclip.models.precision
INFERENCE_PRECISION_HELP = ("auto = bf16 autocast on CUDA (scores within 0.01 of fp32), fp32 elsewhere; fp32 uses "
                            "TF32 matmuls on CUDA; weights stay fp32")


def cosine(text: str) -> float:
    """argparse type: a cosine similarity, a finite number in [-1, 1] (anything else is a usage error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cosine between -1 and 1, got {text!r}")
    return value

@dataclasses.dataclass(frozen=True)
class Option:
    """How a config field appears on the command line."""

    help: str
    choices: Sequence[str] | None = None
    flag: str | None = None  # default: --field-name; a True-default bool's flag turns it off (e.g. --no-progress)
    metavar: str | None = None
    default_help: str | None = None  # shown as "(default: ...)" instead of the default value; "" shows nothing
    type: Callable[[str], Any] | None = None  # parses the flag's text instead of the field's type (checks a range)


def option(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence[str] | None = None,
           flag: str | None = None, metavar: str | None = None, default_help: str | None = None,
           default_factory: Any = dataclasses.MISSING, type: Callable[[str], Any] | None = None) -> Any:
    """A dataclass field declared once for the library (its default) and the CLI (flag, help, choices)."""
    meta = {_KEY: Option(help, choices, flag, metavar, default_help, type)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(hint: Any) -> tuple[type, bool]:
    """``(type, optional)`` of a field's annotation, e.g. ``int | None`` -> ``(int, True)``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [a for a in args if a is not type(None)]
        return kinds[0], len(kinds) < len(args)
    return hint, False


def _default_text(field: dataclasses.Field, opt: Option, switch: bool) -> str:
    """`` (default: ...)`` for the help text; nothing for an on/off switch, whose flag says what it does."""
    if opt.default_help is not None:
        return f" (default: {opt.default_help})" if opt.default_help else ""
    if switch or field.default is dataclasses.MISSING or field.default is None:
        return ""
    return f" (default: {field.default})"


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config: type,
                names: Iterable[str] | None = None, *, dest_prefix: str = "",
                with_defaults: bool = True) -> None:
    """Add a flag for each declared field of ``config`` (only ``names`` when given, in their order).

    ``with_defaults=False`` leaves the argparse defaults out (a parser built with
    ``argument_default=SUPPRESS`` then sees only the flags a user typed). The flag's ``dest`` is
    ``dest_prefix + field name``; :func:`values_from_args` reads them back.
    """
    hints = typing.get_type_hints(config)
    declared = {f.name: f for f in dataclasses.fields(config) if _KEY in f.metadata}
    for name in names if names is not None else declared:
        field = declared[name]
        opt: Option = field.metadata[_KEY]
        kind, optional = _base_type(hints[name])
        flag = opt.flag or "--" + name.rstrip("_").replace("_", "-")
        switch = kind is bool and not optional
        kwargs: dict[str, Any] = {"dest": dest_prefix + name, "help": opt.help + _default_text(field, opt, switch)}
        if with_defaults and field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        if kind is bool and optional:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif switch:
            kwargs["action"] = "store_false" if field.default else "store_true"
        else:
            metavar = opt.metavar or (None if opt.choices else flag.lstrip("-").replace("-", "_").upper())
            kwargs.update(type=opt.type or kind, choices=opt.choices, metavar=metavar)
            if with_defaults and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                kwargs["required"] = True
        parser.add_argument(flag, **kwargs)


def values_from_args(args: argparse.Namespace, config: type, *, dest_prefix: str = "") -> dict[str, Any]:
    """The values of ``config``'s fields that ``args`` holds (see :func:`add_options`)."""
    given = vars(args)
    names = (f.name for f in dataclasses.fields(config))
    return {name: given[dest_prefix + name] for name in names if dest_prefix + name in given}
