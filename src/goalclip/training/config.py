"""What a training run is: its settings, their choices and defaults, and their JSON form.

Torch-free on purpose: the CLI builds its flags from these declarations and checks a config
without loading torch, and a run record can be read anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

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
VAL_KS = (1, 5)
TRACKER_PREFIX = "val/"

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


@dataclass
class LossWeights:
    """Weights of the GOAL objective ``L = global_ * L_global + local * L_local + tsl * L_TSL``.

    ``global_`` has a trailing underscore because ``global`` is a Python keyword. Defaults are the
    paper's 1.0 / 0.5 / 1.0. The weights balance terms against each other, so a method with a
    single term (``global``, ``local``) trains on that term alone with weight 1: the papers'
    local baseline is the local loss by itself, not half of it.
    """

    global_: float = 1.0
    local: float = 0.5
    tsl: float = 1.0

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

    model: str
    data: str
    out: str
    method: str = "goal"
    base: str | None = None
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 5e-6
    weight_decay: float = 0.05
    recipe: str = "goalclip"
    decay_all: bool | None = None
    warmup_steps: int = 0
    max_text_len: int = 248
    keep_positions: int = 20
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    precision: str | None = None
    grad_clip: float | None = None
    local_pairs: int = 1
    pair_weighting: str = "uniform"
    tsl_heads: str = "shared"
    gradient_checkpointing: bool = False
    grad_cache_chunk: int | None = None
    num_workers: int = 2
    checkpoint_every: int = 0
    checkpoint_epochs: bool = True
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = False
    overwrite: bool = False
    skip_invalid: bool = False
    report_to: str | None = None
    progress: bool = True
    max_image_pixels: int | None = None
    val_data: str | None = None
    val_joint: str | None = None
    val_every: int = 0
    val_batch_size: int = 64
    keep_best: str | None = None
    compile: bool = False

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
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from :meth:`to_dict` output or a whole ``train_config.json`` record."""
        values = dict(values.get("config", values))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown training settings {', '.join(unknown)}")
        if isinstance(values.get("weights"), dict):
            values["weights"] = LossWeights(**values["weights"])
        if "recipe" not in values and "grad_clip" in values and values["grad_clip"] is None:
            values["grad_clip"] = 0.0  # a record from before recipes: null meant "no clipping" then
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a config or a run's ``train_config.json``, so any run can be run again."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of training settings")
        return cls.from_dict(values, source=str(path))
