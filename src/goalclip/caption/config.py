"""Options of ``goalclip caption`` and ``goalclip data score``, declared once: the dataclass defaults are the
library's, the flags the CLI's (:mod:`goalclip.core.options`).

Torch-free, so the CLI builds its parser without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from goalclip.caption.prompt import DEFAULT_MODEL
from goalclip.core.options import DEVICE_HELP, NO_PROGRESS_HELP, SHARDS_HELP, cosine, option

CAPTION_BACKENDS = ("transformers", "vllm")
CAPTION_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class CaptionConfig:
    """Options of ``goalclip caption`` (each field's help is its flag's)."""

    data: str = option(help="a folder of images (searched recursively) or a manifest whose records have id and "
                       f"image (captions not needed), {SHARDS_HELP}")
    out: str = option(help="captioned manifest to write (JSONL); a .skipped.jsonl and .summary.json are written "
                      "next to it")
    model: str = option(DEFAULT_MODEL, help="image-text-to-text checkpoint: hub id or folder")
    prompt_file: str | None = option(None, help="text file holding the prompt to use instead of the built-in one "
                                     "(its sha256 is recorded with every caption)")
    backend: str = option("transformers", choices=CAPTION_BACKENDS,
                          help="generation engine: transformers, or vllm for 100k-image runs where it is installed "
                          "(one process, not under accelerate launch)")
    max_new_tokens: int = option(512, help="generation limit per caption; a last sentence cut off by it is dropped "
                                 "and counted")
    batch_size: int = option(8, help="images per generate call")
    num_workers: int = option(2, help="image-decoding worker processes")
    device: str = option("auto", help=DEVICE_HELP.format(what="the captioning model"))
    precision: str = option("auto", choices=CAPTION_PRECISIONS, help="model dtype: auto is bf16 on CUDA, fp32 on CPU")
    resume: bool = option(False, help="continue an interrupted run: ids already written are skipped, never "
                          "duplicated")
    max_images: int | None = option(None, help="caption only the first N images (for a quick look)")
    progress: bool = option(True, flag="--no-progress", help=NO_PROGRESS_HELP)


@dataclass
class ScoreConfig:
    """Options of ``goalclip data score`` (each field's help is its flag's)."""

    model: str = option(help="CLIP: hub id, model folder or state-dict file (a long-text CLIP is read at its own "
                        "context)")
    data: str = option(help=f"captioned manifest {SHARDS_HELP}")
    base: str | None = option(None, help="base model id/folder when --model is a bare state-dict file")
    sample: int | None = option(None, default_help="1000, or all with --min-score",
                                help="records scored, drawn with --seed; 0 scores all")
    seed: int = option(0, help="sampling seed")
    scores_out: str | None = option(None, help="write per-record scores {id, score} here (JSONL)")
    min_score: float | None = option(None, type=cosine, help="score every record and write those scoring at least "
                                     "this to --out (a filter for captions that do not match their image)")
    out: str | None = option(None, help="filtered manifest to write with --min-score")
    max_text_len: int | None = option(None, default_help="the model's own context",
                                      help="stretch a shorter text context (Long-CLIP style) to this many tokens "
                                      "first, e.g. 248 for a stock 77-token CLIP")
    keep_positions: int = option(20, help="leading positions copied unchanged by the stretch")
    batch_size: int = option(64, help="images or texts per forward pass")
    num_workers: int = option(0, help="image-decoding worker processes")
    device: str = option("auto", help=DEVICE_HELP.format(what="the CLIP"))
    progress: bool = option(True, flag="--no-progress", help=NO_PROGRESS_HELP)
