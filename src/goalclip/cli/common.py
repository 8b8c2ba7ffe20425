"""Options and helpers shared by several commands, so each means the same everywhere."""

from __future__ import annotations

import argparse
import math
import os

SHARDS_HELP = ("or WebDataset shards (goalclip data shard): a .tar, a brace pattern such as "
               "shards/train-{000000..000009}.tar, or a pipe:/fsspec URL")


def positive_int(text: str) -> int:
    """argparse type: a count of at least 1 (a bad value is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def cosine(text: str) -> float:
    """argparse type: a cosine similarity, a finite number in [-1, 1] (anything else is a usage error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cosine between -1 and 1, got {text!r}")
    return value


def add_device(parser: argparse.ArgumentParser, what: str = "the model") -> None:
    parser.add_argument(
        "--device", default="auto",
        help=f"torch device for {what}: auto (CUDA when available, or each process's own device under "
        "accelerate launch; else CPU), cpu, cuda, cuda:1, ... (default: auto)",
    )


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="hide progress bars (goalclip's and the libraries' own, e.g. weight loading)")


def add_max_image_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-image-pixels", type=int,
        help="refuse images with more pixels than this as possible decompression bombs (skipped and counted "
        "like unreadable files); 0 = no limit (default: PIL's 89478485)",
    )


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
