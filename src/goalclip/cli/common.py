"""Options and helpers shared by several commands, so each means the same everywhere."""

from __future__ import annotations

import argparse
import os

from goalclip.core.options import (  # noqa: F401 (SHARDS_HELP: the commands' --data help)
    DEVICE_HELP,
    MAX_IMAGE_PIXELS_DEFAULT,
    MAX_IMAGE_PIXELS_HELP,
    NO_PROGRESS_HELP,
    SHARDS_HELP,
)


def positive_int(text: str) -> int:
    """argparse type: a count of at least 1 (a bad value is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def add_device(parser: argparse.ArgumentParser, what: str = "the model") -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_HELP.format(what=what) + " (default: auto)")


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def add_max_image_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-image-pixels", type=int,
                        help=f"{MAX_IMAGE_PIXELS_HELP} (default: {MAX_IMAGE_PIXELS_DEFAULT})")


def add_model(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--model", required=True, help=help_text)
    parser.add_argument("--base", default=None, help="base model id/folder when --model is a bare state-dict file")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def silence_library_progress_bars() -> None:
    """``--no-progress`` also covers transformers' and huggingface_hub's own bars."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
