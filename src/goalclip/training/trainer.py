"""GOAL / FAST-GOAL fine-tuning under Accelerate: one training step and the loop around it.

The step runs the vision tower once over ``[global images ; crops]`` and encodes each text
input once (captions, and sentences padded to their own short length); TSL pools the global
tokens with the batch's precomputed span/patch masks. Under ``accelerate launch`` the
contrastive logits use embeddings gathered from every process (``losses``), so N processes
with batch b train exactly like one process with batch N*b.

Two-stage training (FAST-GOAL's second stage) is two runs: the second run's ``--model`` is the
first run's ``--out``. It starts a fresh optimizer and learning-rate schedule (warmup, cosine
over its own steps) from those weights; only ``--resume`` restores optimizer and schedule state,
and only within one run's folder. Learned TSL heads saved by the first run are picked up when
the second also uses ``--tsl-heads separate``.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import accelerate.tracking
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import CLIPModel, get_cosine_schedule_with_warmup

from goalclip.training.data import PAIR_WEIGHTINGS, Collate, TrainDataset, load_examples
from goalclip.training.gradcache import Chunk, grad_cache_step, plan_chunks
from goalclip.training.heads import HEADS_FILE, HEADS_META, TslHeads, build_heads, save_heads
from goalclip.training.losses import (
    LOCAL_PAIR_LOSSES, METHOD_TERMS, TSL_TARGETS, LossOptions, LossWeights, combine_losses, contrastive_loss,
    local_pair_loss, masked_mean, tsl_loss,
)
from goalclip.training.recipes import RECIPES, recipe_settings
from goalclip.training.validation import TRACKER_PREFIX, Validator, check_keep_best
from goalclip.core.images import ImageError, set_max_image_pixels
from goalclip.core.manifest import SkipReport, atomic_write, output_lock
from goalclip.models.clip import (
    ClipBundle,
    image_forward,
    load_clip,
    project_patch_tokens,
    project_text_tokens,
    save_clip,
    stretch_positions,
    text_forward,
)
from goalclip.models.embed import count_truncated

logger = logging.getLogger(__name__)

METHODS = tuple(METHOD_TERMS)
MAX_LOGIT_SCALE = 100.0


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where it stopped."""


# Flags that say how this invocation runs, not what the run is: never part of the record.
INVOCATION_FIELDS = ("resume", "overwrite")
# Settings a resumed run may change: they do not change what is computed.
SAFE_ON_RESUME = frozenset(
    {"out", "num_workers", "log_every", "progress", "checkpoint_every", "checkpoint_epochs", "keep_checkpoints",
     "report_to", "skip_invalid", "gradient_checkpointing", "grad_cache_chunk", "val_every", "val_batch_size",
     "compile", *INVOCATION_FIELDS}
)
MODEL_FILES = ("model.safetensors", "config.json", HEADS_FILE, HEADS_META)
PRECISIONS = ("no", "fp16", "bf16", "bf16-weights")
TSL_HEADS = ("shared", "separate")
RECORD_FILES = ("train_config.json", "metrics.jsonl")
BEST_DIR = "best"  # --keep-best: the best validated model, a model folder like the final export


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
    local_pair_loss: str = "best"
    tsl_target: str = "diagonal"
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
        if self.local_pair_loss not in LOCAL_PAIR_LOSSES:
            raise ValueError(f"--local-pair-loss must be one of {', '.join(LOCAL_PAIR_LOSSES)}, "
                             f"got {self.local_pair_loss!r}")
        if self.tsl_target not in TSL_TARGETS:
            raise ValueError(f"--tsl-target must be one of {', '.join(TSL_TARGETS)}, got {self.tsl_target!r}")
        if self.tsl_heads not in TSL_HEADS:
            raise ValueError(f"--tsl-heads must be one of {', '.join(TSL_HEADS)}, got {self.tsl_heads!r}")
        if self.tsl_heads == "separate" and "tsl" not in METHOD_TERMS.get(self.method, ()):
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


def needs_local(method: str) -> bool:
    return "local" in METHOD_TERMS[method] or "tsl" in METHOD_TERMS[method]


def prepare_text_positions(bundle: ClipBundle, max_text_len: int, keep: int) -> int:
    """Stretch the text positions Long-CLIP style when the model's context is shorter than asked.

    A model that already has ``max_text_len`` or more positions (a GOAL checkpoint, a folder
    from an earlier run) is left alone, so two-stage training is simply two runs.
    """
    current = bundle.max_text_len
    if current >= max_text_len:
        return current
    new_len = stretch_positions(bundle.model, keep=keep, target=max_text_len)
    bundle.tokenizer.model_max_length = new_len
    logger.info("stretched text positions %d -> %d (keep %d)", current, new_len, keep)
    return new_len


def batch_chunks(batch: dict[str, torch.Tensor], method: str, size: int | None = None) -> list[Chunk]:
    """The input streams ``method`` encodes, in chunks of ``size`` rows (None: one chunk, the whole batch)."""
    terms_on = METHOD_TERMS[method]
    return plan_chunks(batch, size, captions="global" in terms_on or "tsl" in terms_on,
                       sentences=needs_local(method))


def encode(model: CLIPModel, batch: dict[str, torch.Tensor], method: str, chunk: Chunk) -> dict[str, torch.Tensor]:
    """The per-example tensors the loss consumes, for the rows of ``chunk`` (a plain step: the whole batch).

    ``image``: projected embeddings of the ``[global ; crops]`` rows (one vision forward), ``caption`` and
    ``sentence`` those of the texts (each encoded once); for TSL, ``patches`` / ``span``: each local pair's
    mean of its own image's patch tokens / caption token states, before the projection the loss applies.
    """
    use_tsl = "tsl" in METHOD_TERMS[method]
    reps: dict[str, torch.Tensor] = {}
    if chunk.images is not None:
        reps["image"], patch_tokens = image_forward(model, batch["pixel_values"][chunk.images])
        if use_tsl and chunk.image_pairs is not None:
            reps["patches"] = _pool_pairs(patch_tokens, chunk.images, chunk.image_pairs, batch, "patch_mask")
    if chunk.captions is not None:
        rows = chunk.captions
        reps["caption"], states = text_forward(model, batch["caption_ids"][rows], batch["caption_mask"][rows],
                                               token_states=use_tsl)
        if use_tsl and chunk.caption_pairs is not None:
            reps["span"] = _pool_pairs(states, rows, chunk.caption_pairs, batch, "span_mask")
    if chunk.sentences is not None:
        rows = chunk.sentences
        reps["sentence"], _ = text_forward(model, batch["sentence_ids"][rows], batch["sentence_mask"][rows])
    return reps


def _pool_pairs(states: torch.Tensor, rows: slice, pairs: slice, batch: dict[str, torch.Tensor],
                mask: str) -> torch.Tensor:
    """Each pair's masked mean over its own item's token states; ``states`` holds the items of ``rows``."""
    if "pair_owner" in batch:  # several pairs per image
        tokens = states[batch["pair_owner"][pairs] - rows.start]
    else:  # pair p belongs to item p
        tokens = states[pairs.start - rows.start : pairs.stop - rows.start]
    return masked_mean(tokens, batch[mask][pairs])


def _no_pairs(model: CLIPModel, image_emb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero-row local representations, so the local and TSL terms of a batch without pairs are 0 and
    every process still makes the same collective calls."""
    config = model.config
    return {"sentence": image_emb.new_zeros((0, image_emb.shape[1])),
            "patches": image_emb.new_zeros((0, config.vision_config.hidden_size)),
            "span": image_emb.new_zeros((0, config.text_config.hidden_size))}


def batch_loss(
    model: CLIPModel,
    reps: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    method: str,
    weights: LossWeights,
    heads: TslHeads | None = None,
    options: LossOptions = LossOptions(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of a batch from its representations (:func:`encode`); see :func:`training_step`."""
    terms_on = METHOD_TERMS[method]
    b = batch["caption_ids"].shape[0]
    image_emb = reps["image"]
    if needs_local(method) and "sentence" not in reps:  # no image of the batch has a local pair: zero rows
        reps = {**reps, **_no_pairs(model, image_emb)}
    scale = model.logit_scale.exp()  # bounded by clamping the parameter after each step, not here
    terms: dict[str, torch.Tensor] = {}
    logs: dict[str, torch.Tensor] = {"logit_scale": scale.detach()}
    if "global" in terms_on:
        terms["global"] = contrastive_loss(image_emb[:b], reps["caption"], scale)
    pair_weight, owner = batch.get("pair_weight"), batch.get("pair_owner")
    if "local" in terms_on:
        terms["local"] = local_pair_loss(image_emb[b:], reps["sentence"], scale, owner, pair_weight,
                                         options.local_pair_loss)
    if "tsl" in terms_on:
        pooled_image = heads.project_patches(reps["patches"]) if heads else project_patch_tokens(model, reps["patches"])
        terms["tsl_image"], cos_image = tsl_loss(pooled_image, image_emb[b:], batch["image_tsl_valid"],
                                                 weights=pair_weight, tsl_target=options.tsl_target, groups=owner)
        pooled_text = heads.project_text(reps["span"]) if heads else project_text_tokens(model, reps["span"])
        terms["tsl_text"], cos_text = tsl_loss(pooled_text, reps["sentence"], batch["text_tsl_valid"],
                                               weights=pair_weight, tsl_target=options.tsl_target, groups=owner)
        logs["tsl_cos_image"] = cos_image.nanmean()
        logs["tsl_cos_text"] = cos_text.nanmean()
    if pair_weight is not None:
        logs["local_pairs"] = pair_weight.new_tensor(len(pair_weight) / b)  # mean pairs per image
    loss = combine_losses(terms, method, weights)
    logs.update({f"loss_{k}": v.detach() for k, v in terms.items()})
    logs["loss"] = loss.detach()
    return loss, logs


def training_step(
    model: CLIPModel,
    batch: dict[str, torch.Tensor],
    method: str,
    weights: LossWeights,
    heads: TslHeads | None = None,
    options: LossOptions = LossOptions(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch: one vision forward over ``[global ; crops]``, each text encoded once.

    With top-k local pairs (``pair_owner`` / ``pair_weight`` in the batch, see ``Collate``) the
    crops and sentences are every valid pair of the batch. Each TSL term is the weighted mean over
    its valid pairs, a pair pooling its own image's patch tokens / caption tokens. The local
    InfoNCE (``options.local_pair_loss``, see :func:`~goalclip.training.losses.local_pair_loss`)
    takes each image's best pair (``best``) or every pair weighted (``all``); a pair never has
    another pair of its own image as a negative. Without those keys every weight is 1 and each
    image has one pair (the plain means). ``heads`` (``--tsl-heads
    separate``) project the TSL pooled features instead of CLIP's own norm + projection.

    Returns the loss and detached scalars for logging (kept as tensors: converting them every
    step would force a device sync).
    """
    [whole] = batch_chunks(batch, method)
    return batch_loss(model, encode(model, batch, method, whole), batch, method, weights, heads, options)


class StepModule(torch.nn.Module):
    """Wraps the CLIP so the whole step is one ``forward``: DDP then prepares and syncs as usual
    (calling submodules of a DDP-wrapped model directly would skip its forward bookkeeping).

    With gradient caching (:mod:`goalclip.training.gradcache`) ``forward(batch, chunk)`` encodes one
    chunk of the batch instead, and ``loss`` is the step's loss from the cached representations.
    """

    def __init__(self, clip: CLIPModel, method: str, weights: LossWeights, heads: TslHeads | None = None,
                 options: LossOptions = LossOptions()):
        super().__init__()
        self.clip = clip
        self.method = method
        self.weights = weights
        self.heads = heads
        self.options = options

    def forward(
        self, batch: dict[str, torch.Tensor], chunk: Chunk | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        if chunk is not None:
            return encode(self.clip, batch, self.method, chunk)
        return training_step(self.clip, batch, self.method, self.weights, self.heads, self.options)

    def chunks(self, batch: dict[str, torch.Tensor], size: int) -> list[Chunk]:
        return batch_chunks(batch, self.method, size)

    def loss(
        self, reps: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return batch_loss(self.clip, reps, batch, self.method, self.weights, self.heads, self.options)


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Fused AdamW (one kernel for every parameter instead of a loop over them) needs every
    parameter on a CUDA device and floating point; elsewhere AdamW's default implementation runs."""
    return bool(params) and all(p.device.type == "cuda" and p.is_floating_point() for p in params)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, decay_all: bool) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in one group when ``decay_all`` (the reference recipe),
    else with no weight decay on biases, norms, embeddings and the logit scale (as CLIP trains).

    Fused when :func:`fused_adamw_supported` (so move the model to its device first)."""
    params = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    fused = {"fused": True} if fused_adamw_supported([p for _, p in params]) else {}
    if decay_all:
        return torch.optim.AdamW([{"params": [p for _, p in params], "weight_decay": weight_decay}], lr=lr, **fused)
    decay, no_decay = [], []
    for name, param in params:
        flat = param.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if flat else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, **fused)


def speed_path(clip: CLIPModel, optimizer: torch.optim.Optimizer, pin_memory: bool, compiled: bool) -> dict[str, Any]:
    """What the run actually uses of the GPU speed path, read back from the objects (logged and recorded)."""
    return {"attention": clip.config._attn_implementation,
            "fused_adamw": any(bool(group.get("fused")) for group in optimizer.param_groups),
            "pin_memory": pin_memory, "compile": compiled}


def describe_speed_path(path: dict[str, Any]) -> str:
    on = {True: "on", False: "off"}
    return (f"speed path: attention {path['attention']}, fused AdamW {on[path['fused_adamw']]}, pinned memory "
            f"{on[path['pin_memory']]}, compile {on[path['compile']]}")


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches for one epoch; the order depends only on (seed, epoch).

    Global batches of ``batch_size * world`` (the incomplete last one dropped, so every process
    has the same batch size for the gathered contrastive loss); process ``rank`` takes its slice
    of each. A resumed run rebuilds the same list and skips the batches already done.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    per_step = batch_size * world
    return [
        order[start + rank * batch_size : start + (rank + 1) * batch_size]
        for start in range(0, n - per_step + 1, per_step)
    ]


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted(out.glob("checkpoints/step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def clamp_logit_scale(clip: CLIPModel) -> None:
    """Keep the temperature in [1, MAX_LOGIT_SCALE] by clamping the parameter (as open_clip does).

    Clamping ``exp(logit_scale)`` inside the forward instead would zero its gradient for OpenAI
    weights, which store exactly ln(100), and freeze the temperature for the whole run.
    """
    with torch.no_grad():
        clip.logit_scale.clamp_(0.0, math.log(MAX_LOGIT_SCALE))


def _cpu_multiprocess() -> bool:
    """Launched as several processes (torchrun / accelerate launch) on a machine without CUDA.

    Accelerate then needs ``cpu=True`` to set up a gloo process group; without it every process
    would train alone on all the data and write into the same folder.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _check_trackers(report_to: str | None) -> None:
    """Fail before any work when a requested tracker's package is missing (Accelerate only warns)."""
    if not report_to:
        return
    available = {str(t) for t in accelerate.tracking.get_available_trackers()}
    for name in report_to.split(","):
        if name == "all" and not available:
            raise ValueError("--report-to all: no tracker package is installed (e.g. pip install tensorboard)")
        if name != "all" and name not in available:
            raise ValueError(f"--report-to {name}: the {name} package is not installed (pip install {name})")


def _tracker_hparams(config: TrainConfig) -> dict[str, Any]:
    """Flat hyperparameters for trackers (they take scalars): the loss weights as w_global/w_local/w_tsl."""
    values = {k: v for k, v in {**config.to_dict(), **config.resolved()}.items() if k != "weights"}
    weights = config.weights
    return {**values, "w_global": weights.global_, "w_local": weights.local, "w_tsl": weights.tsl}


def _versions() -> dict[str, str]:
    import accelerate as accelerate_pkg
    import transformers

    import goalclip

    return {"goalclip": goalclip.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate_pkg.__version__, "python": platform.python_version()}


def _git_commit() -> str | None:
    """The commit of the goalclip checkout that ran, or None for an installed package."""
    if "site-packages" in Path(__file__).parts:
        return None
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _read_record(out: Path) -> dict[str, Any] | None:
    path = out / "train_config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: unreadable run record ({exc})") from None


def _metrics_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinite for a line torn by a kill, so it is dropped."""
    try:
        return float(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _same_setting(name: str, recorded: Any, now: Any) -> bool:
    if recorded == now:
        return True
    # the same file named by another path (relative / absolute) is the same input
    return (name in ("model", "data", "base", "val_data", "val_joint") and isinstance(recorded, str)
            and isinstance(now, str) and Path(recorded).exists() and Path(recorded).resolve() == Path(now).resolve())


LOW_DISK_BYTES = 64 * 2**20  # below this, a failed write is reported as a full disk


def _write_error(exc: BaseException, what: str, path: Path) -> OSError | None:
    """A clear error for a failed write when the disk is full (torch says only 'enforce fail')."""
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if getattr(exc, "errno", None) == errno.ENOSPC or free < LOW_DISK_BYTES:
        return OSError(errno.ENOSPC, f"no space left on device while writing {what} {path} "
                                     f"({free / 2**20:.0f} MiB free): {exc}")
    return None


class Trainer:
    """Runs a ``TrainConfig``: output checks, data validation, Accelerate setup, the loop, checkpoints, export."""

    def __init__(self, config: TrainConfig):
        config.validate()
        _check_trackers(config.report_to)
        self.config = config
        self.out = Path(config.out)
        if Path(config.model).exists() and Path(config.model).resolve() == self.out.resolve():
            raise ValueError(f"--out {self.out} is the --model folder: write the fine-tuned model to a new folder")
        self.settings = config.resolved()
        # Accelerate keeps one mixed-precision setting per process; a second run in the same process
        # (a notebook, a sweep) may need another, so start from a clean state (the process group stays).
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            # bf16 weights are a cast of the model, not Accelerate's mixed precision
            mixed_precision="no" if self.settings["precision"] == "bf16-weights" else self.settings["precision"],
            log_with=config.report_to.split(",") if config.report_to else None,
            project_dir=str(self.out),
            cpu=_cpu_multiprocess(),
        )
        launched = int(os.environ.get("WORLD_SIZE", "0"))  # set by torchrun / accelerate launch
        if launched and launched != self.accelerator.num_processes:
            raise RuntimeError(
                f"launched as {launched} processes but Accelerate set up {self.accelerator.num_processes}; "
                "each would train on its own into one folder (use `accelerate launch`)"
            )
        set_seed(config.seed)
        self.skipped = SkipReport()
        self.failed: dict[str, str] = {}  # example -> why its image did not decode mid-run
        self._commit: str | None = None
        self.validator: Validator | None = None

    # ------------------------------------------------------------------ the output folder

    def _prepare_out(self) -> tuple[Path | None, dict[str, Any] | None]:
        """Decide what ``--out`` allows: ``(checkpoint to resume or None, finished run's record or None)``.

        A fresh run refuses a folder that holds a model, a run record or checkpoints (unless
        ``overwrite``, which clears them first); ``resume`` continues an unfinished goalclip run
        with the same defining settings and reports a finished one without touching it.
        """
        cfg, acc, out = self.config, self.accelerator, self.out
        record = _read_record(out)
        ckpt = _latest_checkpoint(out)
        held = [name for name in (*MODEL_FILES, *RECORD_FILES) if (out / name).exists()]
        held += ["checkpoints"] if ckpt else []
        held += [BEST_DIR] if (out / BEST_DIR).exists() else []
        if cfg.overwrite:
            acc.wait_for_everyone()
            if acc.is_main_process and held:
                self._clear_run()
            acc.wait_for_everyone()
            return None, None
        if not cfg.resume:
            if held:
                raise FileExistsError(
                    f"{out} holds an earlier run or model ({', '.join(held)}); pass --resume to continue an "
                    "unfinished run, --overwrite to replace it, or choose another --out"
                )
            return None, None
        if record is not None and "result" in record:
            return None, record
        if record is None and ckpt is None and held:
            raise FileExistsError(f"{out} holds a model but no unfinished goalclip run to resume "
                                  f"({', '.join(held)}); pass --overwrite to replace it or choose another --out")
        if record is not None:
            self._check_resume_settings(record)
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._remove_partial_saves()
        return ckpt, None

    def _remove_partial_saves(self) -> None:
        """Temporary folders a killed run left mid-checkpoint or mid-export: never complete, never reused."""
        for folder in [*self.out.glob("checkpoints/.tmp-step-*"), self.out / ".export-tmp"]:
            if folder.exists():
                logger.info("removing %s, left by an interrupted save", folder)
                shutil.rmtree(folder)

    def _clear_run(self) -> None:
        logger.info("--overwrite: removing the earlier run in %s", self.out)
        for name in (*MODEL_FILES, *RECORD_FILES):
            (self.out / name).unlink(missing_ok=True)
        for folder in (self.out / "checkpoints", self.out / ".export-tmp", self.out / BEST_DIR):
            if folder.exists():
                shutil.rmtree(folder)

    def _check_resume_settings(self, record: dict[str, Any]) -> None:
        """Refuse to continue a run with settings that change what it computes, naming each one."""
        recorded = {**record.get("config", record), **record.get("resolved", {})}
        now = {**self.config.to_dict(), **self.settings}
        diffs = [
            f"{name} (run: {recorded[name]!r}, now: {value!r})"
            for name, value in now.items()
            if name not in SAFE_ON_RESUME and name in recorded and not _same_setting(name, recorded[name], value)
        ]
        processes = record.get("derived", {}).get("num_processes")
        if processes is not None and processes != self.accelerator.num_processes:
            diffs.append(f"num_processes (run: {processes}, now: {self.accelerator.num_processes})")
        if diffs:
            raise ValueError(
                f"--resume: {self.out} was trained with other settings: {'; '.join(diffs)}. Resume with the "
                f"run's settings (goalclip train --config {self.out / 'train_config.json'} --resume) or "
                "choose another --out"
            )

    def _write_record(self, derived: dict[str, Any], result: dict[str, Any] | None = None) -> None:
        """``train_config.json``: the user's config (re-runnable with --config) apart from derived facts.

        ``result`` is added once the model is exported: its presence marks the run finished.
        """
        if not self.accelerator.is_main_process:
            return
        record = {"config": self.config.to_dict(), "resolved": self.settings, "derived": derived,
                  "versions": _versions(), "git_commit": self._commit}
        if result is not None:
            record["result"] = result
        with atomic_write(self.out / "train_config.json") as handle:
            json.dump(record, handle, indent=2)

    def _truncate_metrics(self, path: Path, step: int) -> None:
        """Drop metric lines past the step a resumed run restarts from, so no step appears twice."""
        if not (self.accelerator.is_main_process and path.exists()):
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _metrics_step(line) <= step]
        if len(kept) != len(lines):
            with atomic_write(path) as handle:
                handle.writelines(kept)

    # ------------------------------------------------------------------ checkpoints and bad images

    def _save_checkpoint(self, step: int, epoch: int, step_in_epoch: int) -> Path:
        """Model + optimizer + scheduler + RNG + position, written to a temp dir then renamed."""
        acc = self.accelerator
        final = self.out / "checkpoints" / f"step-{step}"
        tmp = self.out / "checkpoints" / f".tmp-step-{step}"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
        except (OSError, RuntimeError) as exc:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            clear = _write_error(exc, "checkpoint", final)
            if clear is None:
                raise
            raise clear from exc
        if acc.is_main_process:
            progress = {"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch}
            if self.validator is not None:
                progress["validation"] = self.validator.state_dict()
            (tmp / "progress.json").write_text(json.dumps(progress))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            ckpts = sorted(self.out.glob("checkpoints/step-*"), key=lambda p: int(p.name.split("-")[1]))
            for old in ckpts[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def _note_failed(self, reasons: list[str], batch: dict[str, Any]) -> None:
        """Images that failed to decode mid-run: stop with one line, or (--skip-invalid) skip and count.

        The batch goes on with the remaining items (the gathered losses accept unequal shares).
        """
        if not self.config.skip_invalid:
            raise ImageError(f"{reasons[0]}; pass --skip-invalid to skip and count such images")
        for reason in reasons:
            key = reason.split(":", 1)[0]
            if key not in self.failed:
                self.failed[key] = reason
                logger.warning("skipping: %s", reason)
        if "caption_ids" not in batch:
            raise TrainingError(f"every image of a batch failed to decode ({reasons[0]})")

    def _all_failed(self) -> dict[str, str]:
        """Decode failures of every process (each saw only its own share of the batches)."""
        if self.accelerator.num_processes == 1:
            return dict(self.failed)
        merged: dict[str, str] = {}
        for part in gather_object([self.failed]):
            merged.update(part)
        return merged

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        set_max_image_pixels(cfg.max_image_pixels)
        ckpt, finished = self._prepare_out()
        if finished is not None:
            logger.info("%s holds a finished run; nothing to resume", self.out)
            return {"out": str(self.out), "method": cfg.method, "already_finished": True, **finished["result"]}
        self._commit = _git_commit()
        local = needs_local(cfg.method)
        examples = load_examples(cfg.data, need_local=local, skip_invalid=cfg.skip_invalid, skipped=self.skipped,
                                 local_pairs=cfg.local_pairs, pair_weighting=cfg.pair_weighting)
        # SDPA: the same numbers as eager attention (tests/test_speed_path.py), fused kernels on a GPU
        bundle = load_clip(cfg.model, base=cfg.base, attn_implementation="sdpa")
        context = prepare_text_positions(bundle, cfg.max_text_len, cfg.keep_positions)
        model = bundle.model
        clamp_logit_scale(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        dataset = TrainDataset(examples, bundle, need_local=local, pair_weighting=cfg.pair_weighting)
        truncated = count_truncated(bundle, [ex.caption for ex in examples], context)
        if truncated:
            logger.warning("%d of %d captions are longer than the %d-token context: their tails are cut and "
                           "sentences past it get no text-TSL term", truncated, len(examples), context)
        collate = Collate(pad_id=bundle.tokenizer.pad_token_id, weighted=cfg.local_pairs > 1)
        heads, heads_from = build_heads(model, cfg.model) if cfg.tsl_heads == "separate" else (None, None)
        options = LossOptions(cfg.local_pair_loss, cfg.tsl_target)
        step_module = StepModule(model, cfg.method, cfg.weights, heads, options)
        bf16_weights = self.settings["precision"] == "bf16-weights"
        if bf16_weights:
            step_module.to(torch.bfloat16)
        per_step = cfg.batch_size * acc.num_processes
        if len(dataset) < per_step:
            raise ValueError(
                f"{cfg.data}: {len(dataset)} usable examples, fewer than one global batch "
                f"({cfg.batch_size} x {acc.num_processes} processes)"
            )
        steps_per_epoch = len(dataset) // per_step
        total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
        epochs = math.ceil(total_steps / steps_per_epoch)
        step_module.to(acc.device)  # before the optimizer: fused AdamW needs the parameters on the GPU
        optimizer = build_optimizer(step_module, cfg.lr, cfg.weight_decay, self.settings["decay_all"])
        if cfg.compile:
            step_module.compile()  # in place: parameter names, checkpoints and unwrap_model stay as they are
        pin_memory = acc.device.type == "cuda"  # page-locked batches: the .to(non_blocking=True) copies overlap
        # The schedule counts optimizer steps, so it stays out of accelerate.prepare (whose wrapper
        # would step it once per process per step); checkpoints still save and restore it.
        scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)
        acc.register_for_checkpointing(scheduler)
        model, optimizer = acc.prepare(step_module, optimizer)
        clip, heads = acc.unwrap_model(model).clip, acc.unwrap_model(model).heads
        if cfg.val_data:
            self.validator = Validator(cfg.val_data, cfg.val_joint, cfg.keep_best, batch_size=cfg.val_batch_size,
                                       num_workers=cfg.num_workers, state=acc.state, device=acc.device)

        step = start_epoch = skip_batches = 0
        if ckpt is not None:
            acc.load_state(str(ckpt))
            progress = json.loads((ckpt / "progress.json").read_text())
            step, start_epoch, skip_batches = progress["step"], progress["epoch"], progress["step_in_epoch"]
            if self.validator is not None and "validation" in progress:
                self.validator.load_state_dict(progress["validation"])
            logger.info("resumed from %s at step %d", ckpt, step)
        metrics_path = self.out / "metrics.jsonl"
        validate = functools.partial(self._validate, ClipBundle(clip, bundle.tokenizer, bundle.image_processor),
                                     heads, heads_from, metrics_path)
        derived = {"context_length": context, "num_processes": acc.num_processes, "examples": len(dataset),
                   "examples_without_local_pair": sum(not ex.pairs for ex in examples) if local else None,
                   "skipped": len(self.skipped), "truncated_captions": truncated, "steps_per_epoch": steps_per_epoch,
                   "total_steps": total_steps, "speed_path": speed_path(clip, optimizer, pin_memory, cfg.compile)}
        logger.info(describe_speed_path(derived["speed_path"]))
        if heads is not None:
            derived["tsl_heads_from"] = heads_from
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            self._truncate_metrics(metrics_path, step)
            self._write_record(derived)
        if cfg.report_to:
            acc.init_trackers("goalclip", config=_tracker_hparams(cfg))

        last_ckpt = _latest_checkpoint(self.out)
        bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.method}",
                   disable=not (cfg.progress and acc.is_main_process))
        started = time.perf_counter()
        step_times: list[float] = []
        logs: dict[str, Any] = {}
        epoch = start_epoch
        model.train()
        for epoch in range(start_epoch, epochs):
            step_in_epoch = skip_batches if epoch == start_epoch else 0
            batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, epoch, acc.process_index,
                                    acc.num_processes)
            loader = DataLoader(dataset, batch_sampler=batches[step_in_epoch:], collate_fn=collate,
                                num_workers=cfg.num_workers, pin_memory=pin_memory)
            for batch in loader:
                if step >= total_steps:
                    break
                if "failed" in batch:
                    self._note_failed(batch.pop("failed"), batch)
                batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
                if bf16_weights:
                    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
                tick = time.perf_counter()
                if cfg.grad_cache_chunk:  # forward and backward chunk by chunk, the same gradients
                    loss, logs = grad_cache_step(acc, model, batch, cfg.grad_cache_chunk)
                else:
                    with acc.autocast():
                        loss, logs = model(batch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"non-finite loss ({loss.item()}) at step {step + 1}; last good checkpoint: "
                        f"{last_ckpt or 'none (use --checkpoint-every)'}"
                    )
                if not cfg.grad_cache_chunk:
                    acc.backward(loss)
                if self.settings["grad_clip"]:
                    acc.clip_grad_norm_(model.parameters(), self.settings["grad_clip"])
                optimizer.step()
                if not optimizer.step_was_skipped:  # fp16 overflow: the schedule waits too
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                clamp_logit_scale(clip)
                step += 1
                step_in_epoch += 1
                step_times.append(time.perf_counter() - tick)
                bar.update(1)
                if step % cfg.log_every == 0 or step == total_steps:
                    # each process's loss is its share of the global-batch loss: average them
                    logs = {k: float(acc.reduce(v.detach().float(), "mean")) for k, v in logs.items()}
                    logs["lr"] = scheduler.get_last_lr()[0]
                    bar.set_postfix({k.removeprefix("loss_"): f"{v:.3g}" for k, v in logs.items()})
                    self._log(metrics_path, step, epoch, logs)
                if self.validator is not None and cfg.val_every and step % cfg.val_every == 0:
                    validate(step, epoch)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    last_ckpt = self._save_checkpoint(step, epoch, step_in_epoch)
            if step >= total_steps:
                break
            if self.validator is not None and not cfg.val_every:
                validate(step, epoch)
            if cfg.checkpoint_epochs:
                last_ckpt = self._save_checkpoint(step, epoch + 1, 0)
        bar.close()
        if self.validator is not None and self.validator.last_step != step:
            validate(step, epoch)  # the final model is always validated (and may be the best)
        failed = self._all_failed()
        acc.wait_for_everyone()
        median = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")
        result = {
            "steps": step,
            "examples": len(dataset),
            "skipped": len(self.skipped) + len(failed),
            "skipped_reasons": [m for kind in self.skipped.examples.values() for m in kind] + sorted(failed.values()),
            "context_length": context,
            "final_loss": float(logs["loss"]) if "loss" in logs else None,
        }
        if self.validator is not None and self.validator.keep_best:
            result["best"] = self.validator.best
        if acc.is_main_process:
            self._export(ClipBundle(clip.float(), bundle.tokenizer, bundle.image_processor), heads, heads_from)
            self._write_record(derived, result)
        acc.wait_for_everyone()  # no process returns (or tears the group down) before the model is on disk
        acc.end_training()
        return {"out": str(self.out), "method": cfg.method, **result, "median_step_s": median,
                "wall_s": time.perf_counter() - started}

    def _log(self, path: Path, step: int, epoch: int, logs: dict[str, float]) -> None:
        self.accelerator.log(logs, step=step)
        if self.accelerator.is_main_process:
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "epoch": epoch, **logs}) + "\n")

    def _validate(self, bundle: ClipBundle, heads: TslHeads | None, heads_from: str | None, path: Path, step: int,
                  epoch: int) -> None:
        """Score the model now (every process encodes a share); the main process logs the scores
        (a metrics.jsonl line ``{"step", "epoch", "val": {...}}`` and ``val/NAME`` to the trackers)
        and, on a new best ``--keep-best`` score, exports the model to ``best/``."""
        scores = self.validator.score(bundle, step)
        if scores:
            self.accelerator.log({f"{TRACKER_PREFIX}{name}": value for name, value in scores.items()}, step=step)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "epoch": epoch, "val": scores}) + "\n")
        if self.validator.improved(scores, step):
            model = bundle.model
            if model.dtype != torch.float32:  # bf16 weights: export an fp32 copy, training goes on in bf16
                model = copy.deepcopy(model).float()
            self._export(ClipBundle(model, bundle.tokenizer, bundle.image_processor), heads, heads_from,
                         self.out / BEST_DIR)
        self.accelerator.wait_for_everyone()

    def _export(self, bundle: ClipBundle, heads: TslHeads | None, heads_from: str | None,
                folder: Path | None = None) -> None:
        """Write the final model folder (or ``folder``: best/) and learned TSL heads beside it via a temporary
        folder, so a crash never leaves half a model. A bf16-weight run is exported as fp32 (exactly its values)."""
        folder = folder or self.out
        tmp = self.out / ".export-tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            save_clip(bundle, tmp)
            if heads is not None:
                save_heads(heads, tmp, initialised_from=str(heads_from))
        except (OSError, RuntimeError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            clear = _write_error(exc, "the model", folder)
            if clear is None:
                raise
            raise clear from exc
        folder.mkdir(exist_ok=True)
        for item in tmp.iterdir():
            os.replace(item, folder / item.name)
        tmp.rmdir()


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one training job and return its summary (what the CLI prints).

    The main process holds ``<out>.lock`` throughout, so two runs never write one folder. A resumed
    run that had already finished returns its recorded result with ``already_finished=True`` and
    leaves the folder untouched.
    """
    trainer = Trainer(config)
    with output_lock(config.out) if trainer.accelerator.is_main_process else contextlib.nullcontext():
        return trainer.run()
