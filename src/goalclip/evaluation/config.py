"""What defines one ``goalclip eval`` retrieval run, declared once for the library and the CLI.

The fields whose flag is a plain value carry their help here (:func:`goalclip.core.options.option`), so the
library's defaults are the CLI's; the flags with their own shape (``--model`` repeated, ``--ks`` with its
presets, ``--device``, ``--precision``, whose CLI default ``auto`` differs from the library's) stay in
``cli/evaluate.py``. Torch-free, so the CLI builds its parser without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from goalclip.core.options import MAX_IMAGE_PIXELS_DEFAULT, MAX_IMAGE_PIXELS_HELP, NO_PROGRESS_HELP, option

LONG_CAPTION_KS = (1, 5, 25, 50)
MULTI_CAPTION_KS = (1, 5, 10)
# The K values each paper reports: GOAL and FAST-GOAL on long captions; FAST-GOAL Table IV on COCO/Flickr30k.
KS_PRESETS = {"goal": [1, 5, 25, 50], "fastgoal-coco": [1, 5, 10, 15]}
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


@dataclass
class EvalConfig:
    """Everything that defines one evaluation run (the fields mirror ``goalclip eval``'s options).

    ``models`` are anything ``models.embed.load_encoder`` loads: CLIP and SigLIP sources, BLIP-2 retrieval
    checkpoints and ``open_clip:`` specs.

    ``ks=None`` picks the paper's protocol from the data: K = 1, 5, 25, 50 for one long caption
    per image, 1, 5, 10 when records carry several captions (COCO / Flickr30k style).
    ``max_text_len`` caps the text length; a model with a shorter context uses its own.
    ``cache_dir=None`` disables the embedding cache.
    ``joint_keep_whole=False`` drops joint-test records whose local pair is the whole image.
    ``context`` evaluates every model at that many text positions, as the papers evaluate even
    stock CLIP at 248: a model with a shorter context is stretched Long-CLIP style before scoring
    (the training-time stretch, :func:`goalclip.models.clip.prepare_text_positions`, keeping
    the first ``keep_positions``); a model already that long is left alone; texts are cut at
    ``context`` either way, so every row of a table reads the same tokens.
    """

    models: list[str]
    data: str
    base: str | None = option(
        None, help="architecture (hub id or folder) that state-dict files given to --model are loaded onto")
    joint: str | None = option(
        None, help="manifest with a 'local' pair per record for the global-local joint test: the whole image and "
        "its local item (the crop of local.box, or the crop FILE local.image, as in the GOAL authors' published "
        "joint test) and the captions + local.sentence per record, scored with mAP@10 both ways; as in the "
        "papers, every global/local text of a record is relevant to every global/local image of it")
    ks: list[int] | None = None
    batch_size: int = option(64, help="images or texts per forward pass")
    num_workers: int = option(0, help="DataLoader worker processes decoding images (0 = in process)")
    device: str = "cpu"
    precision: str = "fp32"  # or auto: bf16 on CUDA, fp32 elsewhere
    cache_dir: str | None = option(
        None, help="folder caching embeddings per model + data + max text length + precision, so reruns and added "
        "models do not re-encode", default_help="no cache")
    out: str | None = option(None, help="write metrics, counts and timing as JSON to this file")
    progress: bool = option(True, flag="--no-progress", help=NO_PROGRESS_HELP)
    max_text_len: int | None = option(
        None, help="truncate texts to this many tokens (open_clip rows other than CLIP-tokenizer ones only at their "
        "own context)", default_help="each model's own context, also the upper bound")
    max_image_pixels: int | None = option(None, help=MAX_IMAGE_PIXELS_HELP, default_help=MAX_IMAGE_PIXELS_DEFAULT)
    context: int | None = option(
        None, help="evaluate every model at this many text positions, as the papers do (248 even for stock CLIP): "
        "a model with a shorter context is stretched Long-CLIP style first (the stretch 'goalclip train' applies: "
        "77 -> 248 with keep 20, at most 4L - 3*keep), a longer one (BLIP-2's 512) is left alone, and texts are cut "
        "at this length for every model; an open_clip or BLIP-2 row shorter than this is an error, it is not "
        "stretched", default_help="each model's own context")
    keep_positions: int = option(
        20, help="with --context: leading positions copied unchanged by the stretch; must be smaller than --context "
        "and than the model's own context minus 1 (20 fits 77-position CLIP; tiny test models need less, e.g. 2)")
    joint_keep_whole: bool = True


def check_config(config: EvalConfig) -> None:
    """Refuse values no run can use, before any model is loaded."""
    if not config.models:
        raise ValueError("at least one model is needed")
    if config.precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {config.precision!r}")
    if config.ks is not None and (not config.ks or any(k < 1 for k in config.ks)):
        raise ValueError(f"ks must be positive integers, got {config.ks}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {config.batch_size}")
    if config.max_text_len is not None and config.max_text_len < 2:
        raise ValueError(f"max_text_len must be at least 2 (start and end tokens), got {config.max_text_len}")
    if config.context is not None:
        if config.context < 2:
            raise ValueError(f"--context must be at least 2 (start and end tokens), got {config.context}")
        if not 0 <= config.keep_positions < config.context:
            raise ValueError(
                f"--keep-positions {config.keep_positions} must be smaller than --context {config.context} "
                "(and not negative); tiny models need a small keep, e.g. 2 for 16 positions"
            )
