"""Every output flag of every command, checked in one place before the command does any work.

:data:`OUTPUTS` names each command's output flags and what they write (a ``file``, a ``folder``, or
a ``prefix`` of file names). Before a command runs, each output is checked for being writable, for
being none of the command's inputs (any other option naming an existing path) and for differing
from the other outputs; a ``file`` output that exists is refused unless the command has
``--overwrite`` and it is given, where the command offers it. tests/reliability enumerates the
parser, so a new command or output flag missing here fails the tests.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from goalclip.core.paths import OutputPathError, check_model_source, check_outputs

OUTPUTS: dict[tuple[str, ...], dict[str, str]] = {
    ("caption",): {"out": "file"},
    ("mine",): {"out": "file"},
    ("train",): {"out": "folder"},
    ("eval",): {"out": "file", "cache_dir": "folder"},
    ("viz", "attention"): {"out": "file"},
    ("viz", "retrieval"): {"out": "file"},
    ("viz", "errors"): {"out": "file"},
    ("viz", "pairs"): {"out": "folder"},
    ("search",): {"out": "file", "sheet": "file", "index_dir": "folder"},
    ("serve",): {"index_dir": "folder"},
    ("data", "convert"): {"out": "file", "boxes_out": "file"},
    ("data", "joint"): {"out": "file"},
    ("data", "sample"): {"out": "file"},
    ("data", "score"): {"out": "file", "scores_out": "file"},
    ("data", "split"): {"out_test": "file", "out_rest": "file"},
    ("data", "shard"): {"out": "prefix"},
    ("import-checkpoint", "longclip"): {"out": "folder"},
    ("convert", "longclip"): {"out": "folder"},  # the deprecated name of import-checkpoint
    ("demo",): {"out": "folder"},
}

# Options naming a model: a hub id, a local folder or file, or an open_clip spec.
MODEL_OPTIONS = ("model", "models", "base", "detector", "sam", "processor")


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                               argparse.ArgumentParser]]:
    """``(command path, parser)`` of every runnable (sub)command, e.g. ``(("data", "score"), ...)``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaf_parsers(sub, (*path, name))


def declare_outputs(parser: argparse.ArgumentParser) -> None:
    """Attach each command's entry of :data:`OUTPUTS` (``args.outputs``) and its other options that
    take a value (``args.input_options``, the possible inputs) to its parser."""
    for path, leaf in leaf_parsers(parser):
        outputs = OUTPUTS.get(path, {})
        options = [a.dest for a in leaf._actions if a.option_strings and a.nargs != 0 and a.dest not in outputs]
        leaf.set_defaults(outputs=outputs, input_options=options)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _paths(value: Any) -> list[str]:
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if isinstance(v, (str, Path))]
    return []


def check_command_outputs(args: argparse.Namespace, values: dict[str, Any] | None = None) -> None:
    """Check the outputs of a parsed command (``values``: the settings it runs with, when a
    settings file adds to the flags, as ``train --config`` does), and that a model given as a
    path exists."""
    values = vars(args) if values is None else values
    for dest in MODEL_OPTIONS:
        for spec in _paths(values.get(dest)):
            check_model_source(spec, "--model" if dest == "models" else _flag(dest))
    kinds: dict[str, str] = getattr(args, "outputs", {})
    outputs = {_flag(dest): (values[dest], kind) for dest, kind in kinds.items() if values.get(dest) is not None}
    inputs = {
        _flag(dest) if len(paths) == 1 else f"{_flag(dest)}[{i}]": path
        for dest in getattr(args, "input_options", ()) for paths in [_paths(values.get(dest))]
        for i, path in enumerate(paths)
    }
    check_outputs(outputs, inputs)
    if "overwrite" in values and not values["overwrite"]:
        for flag, (value, kind) in outputs.items():
            if kind == "file" and Path(value).exists():
                raise OutputPathError(f"{flag} {value} exists; pass --overwrite to replace it or choose another {flag}")
