"""The ``goalclip`` command: caption | mine | train | eval | viz | search | serve | data | import-checkpoint | demo.

Parsers are built from the small modules of this package, which import nothing heavy (no torch,
no transformers), so ``--help`` is instant; each command imports the library code it runs only
when it runs. Every command prints a one-line summary at the end. Exit codes: 0 success, 1 a
runtime failure (one line on stderr; the traceback with ``-v``), 2 a usage error (argparse),
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from goalclip.cli import caption, data, demo, evaluate, import_checkpoint, mine, search, serve, train, viz
from goalclip.cli.outputs import check_command_outputs, declare_outputs

logger = logging.getLogger("goalclip")

COMMANDS = (caption, mine, train, evaluate, viz, search, serve, data, import_checkpoint, demo)


def _version() -> str:
    try:
        return version("goalclip")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from goalclip import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goalclip",
        description="Fine-tune CLIP for long captions with GOAL / FAST-GOAL: mine local pairs, train, evaluate, "
        "visualise. Models are anything transformers.CLIPModel.from_pretrained loads.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"goalclip {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    declare_outputs(parser)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "accelerate", "transformers", "filelock", "fsspec", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if getattr(args, "no_progress", False) or getattr(args, "progress", True) is False:
        from goalclip.cli.common import silence_library_progress_bars

        silence_library_progress_bars()
    try:
        check_command_outputs(args)
        line = args.func(args)
    except KeyboardInterrupt:
        print(f"goalclip {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; the traceback is one -v away
        if args.verbose:
            raise
        known = isinstance(exc, (ValueError, OSError, RuntimeError))
        kind = "error" if known else f"unexpected error ({type(exc).__name__})"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"goalclip {args.command}: {kind}: {message}" + ("" if known else " (run with -v for the traceback)"),
              file=sys.stderr)
        return 1
    if line:
        print(line)
    if "torch.distributed" in sys.modules:  # only a command that ran torch can hold a process group
        from goalclip.core.processes import end_processes

        end_processes()
    return 0
