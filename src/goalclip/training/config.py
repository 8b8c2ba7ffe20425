"""What a training run is: its settings, their choices and defaults, and their JSON form.

Torch-free on purpose: the CLI builds its flags from these declarations and checks a config
without loading torch, and a run record can be read anywhere.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from goalclip.core.options import MAX_IMAGE_PIXELS_DEFAULT, MAX_IMAGE_PIXELS_HELP, NO_PROGRESS_HELP, SHARDS_HELP, option
from goalclip.core.settings import SettingsError, check_fields, read_json_object
from goalclip.evaluation.names import DIRECTIONS, JOINT_K
from goalclip.training.recipes import RECIPES, recipe_settings

METHOD_TERMS: dict[str, tuple[str, ...]] = {
    "goal": ("global", "local", "tsl"),
    "wo-tsl": ("global", "local"),
    "global": ("global",),
    "local": ("local",),
}
"""Which loss terms each training method (the paper's ablations) switches on."""

METHODS = tuple(METHOD_TERMS)
PRECISIONS = ("no", "fp16", "bf16", "bf16-weights")
TSL_HEADS = ("shared", "separate")
PAIR_WEIGHTINGS = ("uniform", "similarity")
LOCAL_PAIR_LOSSES = ("best", "all")
TSL_TARGETS = ("diagonal", "identity")
DECODE_PLACES = ("workers", "device")
VAL_KS = (1, 5)
TRACKER_PREFIX = "val/"

TEXT_CONTEXTS = {"clip": 248, "siglip": 196}
"""``--max-text-len`` when not given, by backbone kind: the longest context the Long-CLIP stretch reaches
(``4L - 3*keep``) from the stock text tower's L positions (CLIP 77, SigLIP 64) keeping ``--keep-positions``'
default 20, the positions short training captions taught well. For CLIP that is GOAL's 248. SigLIP's 64
positions reach 196 at most with 20 kept; 248 would keep at most 2 and interpolate through the rest."""

# Flags that say how this invocation runs, not what the run is: never part of the record.
INVOCATION_FIELDS = ("resume", "overwrite")
# Settings a resumed run may change: they do not change what is computed.
SAFE_ON_RESUME = frozenset(
    {"out", "num_workers", "log_every", "progress", "checkpoint_every", "checkpoint_epochs", "keep_checkpoints",
     "report_to", "skip_invalid", "gradient_checkpointing", "grad_cache_chunk", "val_every", "val_batch_size",
     "compile", *INVOCATION_FIELDS}
)


@dataclass(frozen=True)
class LossTerms:
    """A ``method`` decoded once: which terms of the GOAL objective it trains."""

    global_: bool
    local: bool
    tsl: bool

    @classmethod
    def of(cls, method: str) -> LossTerms:
        if method not in METHOD_TERMS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
        on = METHOD_TERMS[method]
        return cls(global_="global" in on, local="local" in on, tsl="tsl" in on)

    @property
    def needs_local(self) -> bool:
        """Local pairs (crops and sentences) are encoded: the local term and TSL's targets."""
        return self.local or self.tsl

    @property
    def needs_captions(self) -> bool:
        """Whole captions are encoded: the global term and TSL's caption token states."""
        return self.global_ or self.tsl

    @property
    def keys(self) -> tuple[str, ...]:
        """The named loss values the objective sums (TSL is two: image and text)."""
        return (("global",) * self.global_ + ("local",) * self.local + ("tsl_image", "tsl_text") * self.tsl)


@dataclass(frozen=True)
class LossOptions:
    """Readings of the papers that change the loss (``--local-pair-loss``, ``--tsl-target``).

    ``local_pair_loss`` with several local pairs per image (``--local-pairs``): ``best`` (FAST-GOAL's
    text: the K pairs and their weights enter TSL only) has L_local use each image's best pair;
    ``all`` puts every pair, weighted, into L_local too. Either way a crop or sentence is never a
    negative of another pair of its own image. ``tsl_target``: see
    :func:`goalclip.training.losses.tsl_loss`.
    """

    local_pair_loss: str = "best"
    tsl_target: str = "diagonal"


@dataclass
class LossWeights:
    """Weights of the GOAL objective ``L = global_ * L_global + local * L_local + tsl * L_TSL``.

    ``global_`` has a trailing underscore because ``global`` is a Python keyword. Defaults are the
    paper's 1.0 / 0.5 / 1.0. The weights balance terms against each other, so a method with a
    single term (``global``, ``local``) trains on that term alone with weight 1: the papers'
    local baseline is the local loss by itself, not half of it.
    """

    global_: float = option(1.0, flag="--w-global", help="weight of the global loss")
    local: float = option(0.5, flag="--w-local", help="weight of the local loss")
    tsl: float = option(1.0, flag="--w-tsl", help="weight of each TSL term")

    def weight(self, key: str) -> float:
        """The weight of one named loss value (:attr:`LossTerms.keys`)."""
        return {"global": self.global_, "local": self.local, "tsl_image": self.tsl, "tsl_text": self.tsl}[key]


def metric_names(joint: bool) -> list[str]:
    """The names a validation reports (as ``goalclip eval`` names its columns)."""
    names = [f"{direction}@{k}" for direction in DIRECTIONS for k in VAL_KS]
    return names + ([f"{direction}_map@{JOINT_K}" for direction in DIRECTIONS] if joint else [])


def check_keep_best(metric: str, joint: bool) -> str:
    """The metric ``--keep-best`` names, without the trackers' ``val/`` prefix; a clear error if unknown."""
    name = metric.removeprefix(TRACKER_PREFIX)
    if name in metric_names(joint):
        return name
    if not joint and name in metric_names(joint=True):
        raise ValueError(f"--keep-best {metric}: {name} needs --val-joint (the joint test)")
    raise ValueError(f"--keep-best {metric}: not a validation metric; choose one of "
                     f"{', '.join(metric_names(joint))} (optionally as val/NAME)")


@dataclass
class TrainConfig:
    """Everything a run needs; recorded next to the model in ``train_config.json`` (``"config"``).

    ``decay_all``, ``grad_clip`` and ``precision`` left at None take the ``recipe``'s choice
    (:mod:`goalclip.training.recipes`); :meth:`resolved` gives the values a run uses, recorded
    as ``"resolved"``. ``grad_clip`` 0 turns clipping off.
    """

    model: str = option(help="starting CLIP: hub id, model folder (e.g. a previous run's --out, for two-stage "
                        "training: only its weights, and its TSL heads with --tsl-heads separate, carry over; the run "
                        "starts a fresh optimizer and schedule) or state-dict file (with --base); required unless in "
                        "--config")
    data: str = option(help="mined-pairs manifest (a captioned manifest is enough for --method global), "
                       f"{SHARDS_HELP}; required unless in --config")
    out: str = option(help="output folder: the final model (loads with CLIPModel.from_pretrained), "
                      "train_config.json, metrics.jsonl, checkpoints/; required unless in --config")
    method: str = option("goal", choices=METHODS, help="loss terms: goal = global+local+TSL, wo-tsl = global+local, "
                         "global, local")
    base: str | None = option(None, help="base model id/folder when --model is a bare state-dict file")
    epochs: int = option(10, help="passes over the data")
    max_steps: int | None = option(None, help="stop after this many optimizer steps (overrides --epochs)")
    batch_size: int = option(16, help="pairs per process per step")
    lr: float = option(5e-6, help="AdamW learning rate")
    weight_decay: float = option(0.05, help="AdamW weight decay")
    recipe: str = option("goalclip", choices=RECIPES, help="optimisation choices at once: goalclip = no decay on "
                         "biases/norms/embeddings/logit scale, grad clip 1.0, fp32; reference = the GOAL authors' "
                         "code: decay on all parameters, no clipping, bf16 mixed precision (bf16 weights for --method "
                         "global/local). A SigLIP model gets the same choices (they are about optimisation; the "
                         "GOAL authors trained only CLIP): goalclip also exempts its logit bias and pooling probe from "
                         "decay. Sentence splitting and text cleaning happen when mining. Explicit flags override the "
                         "recipe")
    decay_all: bool | None = option(None, help="weight decay on every parameter (--no-decay-all: not on biases, "
                                    "norms, embeddings, logit scale)", default_help="from --recipe")
    warmup_steps: int = option(0, help="linear warmup before the cosine decay")
    max_text_len: int | None = option(None, help="text context after stretching (Long-CLIP style; a model with at "
                                      "least this many positions is not stretched)",
                                      default_help="248 for a CLIP, 196 for a SigLIP: the longest context 4L - 3*keep "
                                      "the stretch reaches from their 77 and 64 positions keeping 20")
    keep_positions: int = option(20, help="leading positions copied unchanged by the stretch")
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = option(0, help="random seed for init, data order and crops")
    precision: str | None = option(None, choices=PRECISIONS, help="no = fp32; fp16/bf16 = mixed precision through "
                                   "Accelerate (fp32 master weights); bf16-weights = model and optimizer state in "
                                   "bf16, as the authors' baselines ran", default_help="from --recipe")
    grad_clip: float | None = option(None, help="gradient norm clip; 0 disables", default_help="from --recipe")
    local_pairs: int = option(1, help="train on up to K mined pairs per image: the 'local' pair, then the record's "
                              "'candidates' (FAST-GOAL top-k; goalclip mine keeps --top-k of them, default 5); one "
                              "vision forward over all crops")
    pair_weighting: str = option("uniform", choices=PAIR_WEIGHTINGS, help="with --local-pairs > 1, each image's "
                                 "pairs share weight 1 equally (uniform) or in proportion to their mining score "
                                 "(similarity; negative scores count 0)")
    local_pair_loss: str = option("best", choices=LOCAL_PAIR_LOSSES, help="with --local-pairs > 1: best = L_local "
                                  "on each image's best pair, the K pairs and their weights enter TSL only "
                                  "(FAST-GOAL's text); all = every pair, weighted, in L_local too. Another pair of "
                                  "a pair's own image is never its negative")
    tsl_target: str = option("diagonal", choices=TSL_TARGETS, help="TSL target: diagonal = each pooled feature's "
                             "cosine with its own local embedding against 1 (the GOAL authors' code); identity = the "
                             "batch's pooled x local cosine matrix against the identity, pushing the other pairs' "
                             "cosines to 0 (GOAL's Eq. 14)")
    tsl_heads: str = option("shared", choices=TSL_HEADS, help="TSL projections: shared = CLIP's own post-norm + "
                            "projection (the reference code); separate = learned heads initialised from them "
                            "(FAST-GOAL psi_v, psi_t), saved beside the model as tsl_heads.safetensors and reloaded "
                            "when --model holds them")
    gradient_checkpointing: bool = option(False, help="recompute activations to save memory")
    draft_decode: bool = option(False, help="decode a JPEG whose only view is the global one (no local pair) at "
                                "libjpeg's reduced scale, for images much larger than the model's input: less "
                                "CPU per sample, but pixels a few levels off the full decode (6 of 255 at most, "
                                "0.45 on average, measured), so a --method global run no longer sees the global "
                                "pixels a goal run sees; crops always come from the full-resolution image")
    decode_on: str = option("workers", choices=DECODE_PLACES, help="where training images are decoded, cut and "
                            "resized: workers = the loader workers, on the CPU; device = the main process, on the "
                            "model's device, a batch at a time (torchcodec's nvJPEG and torch's resize on a GPU: the "
                            "workers then only read bytes and tokenise). Needs CLIP's image processor; other files "
                            "than JPEGs decode in the workers. On a GPU the resize runs in float32, within 2 levels "
                            "of 255 of the workers' pixels. An image that fails to decode there stops the run, or "
                            "with --skip-invalid is skipped and counted, as in the workers")
    grad_cache_chunk: int | None = option(None, metavar="M", default_help="off", help="gradient caching: encode the "
                                          "batch M rows at a time, first without a graph, compute the full-batch "
                                          "loss and its gradients for the cached embeddings, then encode each chunk "
                                          "again and back-propagate them: the same loss and gradients as the plain "
                                          "step (the contrastive negatives stay the whole batch, unlike gradient "
                                          "accumulation) with the activation memory of M rows, for about one extra "
                                          "forward pass; one process or DDP")
    num_workers: int = option(2, help="data-loading worker processes")
    checkpoint_every: int = option(0, help="also checkpoint every N steps", default_help="only at each epoch end")
    checkpoint_epochs: bool = option(True, flag="--no-epoch-checkpoints", help="do not checkpoint at epoch ends")
    keep_checkpoints: int = option(2, help="newest checkpoints kept, older ones deleted")
    log_every: int = option(10, help="steps between metrics.jsonl lines")
    resume: bool = option(False, help="continue the unfinished run in --out from its latest checkpoint (same "
                          "settings; a finished run is left as it is)")
    overwrite: bool = option(False, help="replace the model and run record already in --out")
    skip_invalid: bool = option(False, help="skip and count bad records instead of stopping")
    report_to: str | None = option(None, help="Accelerate tracker: tensorboard, wandb, all (needs the package "
                                   "installed)")
    progress: bool = option(True, flag="--no-progress", help=NO_PROGRESS_HELP)
    max_image_pixels: int | None = option(None, help=MAX_IMAGE_PIXELS_HELP, default_help=MAX_IMAGE_PIXELS_DEFAULT)
    val_data: str | None = option(None, metavar="FILE", default_help="no validation", help="validate during "
                                  "training on this retrieval manifest (the format of goalclip eval --data): "
                                  "Recall@1/5 both ways as goalclip eval --ks 1 5 scores the weights of that step, "
                                  "logged to metrics.jsonl as {\"step\", \"epoch\", \"val\": {...}} and to the "
                                  "trackers as val/NAME")
    val_joint: str | None = option(None, metavar="FILE", help="with --val-data: also the global-local joint test on "
                                   "this manifest of local pairs (as goalclip eval --joint): mAP@10 both ways")
    val_every: int = option(0, metavar="N", help="validate every N optimizer steps; 0 = at each epoch end. The final "
                            "model is always validated")
    val_batch_size: int = option(64, metavar="N", help="images or texts per validation forward pass")
    keep_best: str | None = option(None, metavar="METRIC", help="export the model with the best validation METRIC "
                                   "(higher is better; ties keep the earlier step) to OUT/best/, a model folder like "
                                   "the final one; the step and value are in train_config.json and survive --resume. "
                                   "METRIC: i2t@1, i2t@5, t2i@1, t2i@5, or with --val-joint i2t_map@10, t2i_map@10 "
                                   "(val/ prefix allowed)")
    compile: bool = option(False, help="torch.compile the training step (opt-in: the first steps wait for "
                           "compilation, minutes for a large model, and new batch shapes recompile; pays off on a GPU "
                           "over long runs). SDPA attention, fused AdamW on CUDA and pinned memory need no flag: the "
                           "run logs and records which are on (train_config.json 'speed_path')")

    def text_context(self, kind: str) -> int:
        """``max_text_len``, or the default of the model's backbone ``kind`` (:data:`TEXT_CONTEXTS`)."""
        return self.max_text_len if self.max_text_len is not None else TEXT_CONTEXTS[kind]

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.batch_size < 2:
            raise ValueError("--batch-size must be at least 2 (contrastive losses need negatives)")
        if self.epochs < 1 and not self.max_steps:
            raise ValueError("--epochs must be at least 1")
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise ValueError(f"--grad-clip must be 0 (off) or positive, got {self.grad_clip}")
        if self.local_pairs < 1:
            raise ValueError(f"--local-pairs must be at least 1, got {self.local_pairs}")
        if self.pair_weighting not in PAIR_WEIGHTINGS:
            raise ValueError(f"--pair-weighting must be one of {', '.join(PAIR_WEIGHTINGS)}, "
                             f"got {self.pair_weighting!r}")
        if self.local_pair_loss not in LOCAL_PAIR_LOSSES:
            raise ValueError(f"--local-pair-loss must be one of {', '.join(LOCAL_PAIR_LOSSES)}, "
                             f"got {self.local_pair_loss!r}")
        if self.tsl_target not in TSL_TARGETS:
            raise ValueError(f"--tsl-target must be one of {', '.join(TSL_TARGETS)}, got {self.tsl_target!r}")
        if self.tsl_heads not in TSL_HEADS:
            raise ValueError(f"--tsl-heads must be one of {', '.join(TSL_HEADS)}, got {self.tsl_heads!r}")
        if self.tsl_heads == "separate" and not LossTerms.of(self.method).tsl:
            raise ValueError(f"--tsl-heads separate trains TSL projections, but --method {self.method} has no TSL")
        if self.grad_cache_chunk is not None and self.grad_cache_chunk < 1:
            raise ValueError(f"--grad-cache-chunk must be at least 1 (rows per chunk), got {self.grad_cache_chunk}")
        if self.keep_checkpoints < 1:
            raise ValueError("--keep-checkpoints must be at least 1")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        self._validate_validation()

    def _validate_validation(self) -> None:
        for flag, value in (("--val-joint", self.val_joint), ("--keep-best", self.keep_best)):
            if value and not self.val_data:
                raise ValueError(f"{flag} needs --val-data (the retrieval set validated during training)")
        if self.val_every < 0:
            raise ValueError(f"--val-every must be 0 (each epoch end) or positive, got {self.val_every}")
        if self.val_batch_size < 1:
            raise ValueError(f"--val-batch-size must be positive, got {self.val_batch_size}")
        if self.keep_best:
            check_keep_best(self.keep_best, joint=self.val_joint is not None)

    def resolved(self) -> dict[str, Any]:
        """The recipe-governed settings this run uses: explicit values, else the recipe's."""
        chosen = recipe_settings(self.recipe, self.method)
        return {name: chosen[name] if getattr(self, name) is None else getattr(self, name) for name in chosen}

    def to_dict(self) -> dict[str, Any]:
        """The run's definition as JSON-ready values (invocation flags left out)."""
        values = asdict(self)
        for name in INVOCATION_FIELDS:
            values.pop(name)
        return values

    @classmethod
    def settings(cls, values: dict[str, Any], source: str = "config", *, partial: bool = False) -> dict[str, Any]:
        """The training settings of a config object or a whole ``train_config.json`` record, checked
        field by field (``partial``: fields without a default may come from the command line)."""
        settings = values.get("config", values)
        if not isinstance(settings, dict):
            raise SettingsError(f"{source}: field 'config' must be an object of training settings")
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            from goalclip import __version__

            versions = values.get("versions")
            wrote = versions.get("goalclip") if isinstance(versions, dict) else None
            raise SettingsError(
                f"{source}: unknown training settings {', '.join(unknown)}"
                + (f" (a run record of goalclip {wrote}; this is goalclip {__version__}: run it again with "
                   "its settings as flags, or a --config without these keys)" if wrote else "")
            )
        check_fields(cls, settings, source, partial=partial)
        return dict(settings)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from :meth:`to_dict` output or a whole ``train_config.json`` record."""
        values = cls.settings(values, source)
        if isinstance(values.get("weights"), dict):
            values["weights"] = LossWeights(**values["weights"])
        if "recipe" not in values and "grad_clip" in values and values["grad_clip"] is None:
            values["grad_clip"] = 0.0  # a record from before recipes: null meant "no clipping" then
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a config or a run's ``train_config.json``, so any run can be run again."""
        return cls.from_dict(read_json_object(path), source=str(path))
