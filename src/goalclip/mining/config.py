"""Options of ``goalclip mine``, declared once: the dataclass defaults are the library's, the flags the CLI's.

Torch-free, so the CLI builds its parser without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from goalclip.core.options import (
    DEVICE_HELP,
    INFERENCE_PRECISION_HELP,
    INFERENCE_PRECISIONS,
    MAX_IMAGE_PIXELS_DEFAULT,
    MAX_IMAGE_PIXELS_HELP,
    NO_PROGRESS_HELP,
    SHARDS_HELP,
    option,
)


WHOLE_WINS = ("drop-sentence", "drop-image")
"""What a sentence whose best region is the whole image does to the image's pair (``--whole-wins``).

``drop-sentence`` (default, as the GOAL authors' pipeline: their ``*_del_org.json`` files drop such
sentences and training takes the best remaining pair): the best pair whose region is not the whole
image is kept; an image where every sentence chose the whole image keeps no pair (``local`` null)
but stays in the manifest for the global loss. ``drop-image`` (the rule of GOAL's text and of
goalclip before): the image is skipped whenever its single best pair is the whole image."""


@dataclass
class MineConfig:
    """Options of ``goalclip mine`` (each field's help is its flag's)."""

    model: str = option(help="CLIP used for matching: hub id, model folder or state-dict file")
    data: str = option(help=f"captioned-images manifest (JSONL) {SHARDS_HELP}")
    out: str = option(help="mined-pairs manifest to write (JSONL); a .skipped.jsonl and .summary.json are written "
                      "next to it")
    regions: str = option("flism", help="region proposer: flism (detector + 4 quadrants + centre), lism (SAM masks "
                          "+ whole image, see --whole-wins), detector, sam, grid, whole, external, or a comma list "
                          "such as external,grid")
    base: str | None = option(None, help="base model id/folder when --model is a bare state-dict file")
    boxes: str | None = option(None, help="external boxes JSONL {id, boxes}; with flism it can stand in for the "
                               "detector")
    detector: str | None = option(None, help="transformers object-detection checkpoint for flism (e.g. "
                                  "hustvl/yolos-tiny)")
    sam: str | None = option(None, help="transformers SAM checkpoint for lism (e.g. facebook/sam-vit-huge, what the "
                             "GOAL authors' pipeline loads)")
    threshold: float = option(0.3, help="detector score threshold")
    max_boxes: int = option(10, help="detector boxes kept per image")
    margin: float = option(0.0, help="SAM boxes grow by this fraction of their size for context")
    top_k: int = option(5, help="candidate pairs kept per image for analysis")
    whole_wins: str = option("drop-sentence", choices=WHOLE_WINS,
                             help="a sentence whose best region is the whole image: drop-sentence (as the GOAL "
                             "authors' pipeline) keeps the image's best pair among the other sentences, and an image "
                             "where every sentence chose the whole image stays with 'local': null for the global "
                             "loss (counted as without_local_pair); drop-image skips the image when its best pair "
                             "is the whole image")
    batch_size: int = option(32, help="images per mining batch")
    crop_batch_size: int = option(256, help="crops/sentences per CLIP forward")
    num_workers: int = option(2, help="worker processes of each kind: decoding + proposer preprocessing, and crop "
                              "cutting (0 = all in the main process)")
    device: str = option("auto", help=DEVICE_HELP.format(what="the matcher, detector and SAM"))
    precision: str = option("auto", choices=INFERENCE_PRECISIONS, help=INFERENCE_PRECISION_HELP)
    resume: bool = option(False, help="continue an interrupted run: ids already written are skipped, never "
                          "duplicated")
    max_images: int | None = option(None, help="mine only the first N images (for a quick look)")
    progress: bool = option(True, flag="--no-progress", help=NO_PROGRESS_HELP)
    max_image_pixels: int | None = option(None, help=MAX_IMAGE_PIXELS_HELP, default_help=MAX_IMAGE_PIXELS_DEFAULT)
