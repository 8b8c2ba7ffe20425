"""The training loop under Accelerate: set a run up, step through its epochs, validate, checkpoint, export.

What a step computes lives in :mod:`~goalclip.training.step`, the run's settings in
:mod:`~goalclip.training.config`, what ``--out`` allows in :mod:`~goalclip.training.outfolder`,
checkpoints and the exported model in :mod:`~goalclip.training.checkpoints`, the run record in
:mod:`~goalclip.training.record`.

Two-stage training (FAST-GOAL's second stage) is two runs: the second run's ``--model`` is the
first run's ``--out``. It starts a fresh optimizer and learning-rate schedule (warmup, cosine
over its own steps) from those weights; only ``--resume`` restores optimizer and schedule state,
and only within one run's folder. Learned TSL heads saved by the first run are picked up when
the second also uses ``--tsl-heads separate``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import accelerate.tracking
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from goalclip.core.images import ImageError, set_max_image_pixels
from goalclip.core.manifest import SkipReport, output_lock
from goalclip.core.processes import worker_loader
from goalclip.models.clip import ClipBundle, compile_towers, load_clip, prepare_text_positions
from goalclip.models.embed import count_truncated
from goalclip.training import record
from goalclip.training.checkpoints import BEST_DIR, export_model, latest_checkpoint, save_checkpoint
from goalclip.training.config import TRACKER_PREFIX, LossOptions, LossTerms, TrainConfig
from goalclip.training.data import Collate, TrainDataset, epoch_batches, load_examples
from goalclip.training.gradcache import grad_cache_step
from goalclip.training.heads import TslHeads, build_heads
from goalclip.training.optimizer import build_optimizer
from goalclip.training.outfolder import prepare_out
from goalclip.training.step import ChunkedStepModule, StepModule, clamp_logit_scale
from goalclip.training.validation import Validator

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where it stopped."""


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


@dataclass
class _Setup:
    """What :meth:`Trainer._setup` builds before the first step: data, the prepared model and optimizer."""

    dataset: TrainDataset
    collate: Collate
    bundle: ClipBundle  # the unwrapped CLIP (after prepare) with its tokenizer and processor
    heads: TslHeads | None
    heads_from: str | None
    model: torch.nn.Module  # the prepared step module (DDP-wrapped under several processes)
    optimizer: Any
    scheduler: Any
    total_steps: int
    epochs: int
    pin_memory: bool
    bf16_weights: bool
    derived: dict[str, Any]  # facts of the run recorded under "derived"


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
        self.terms = LossTerms.of(config.method)
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
        self.metrics_path = self.out / record.METRICS_FILE

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        set_max_image_pixels(cfg.max_image_pixels)
        ckpt, finished = prepare_out(cfg, self.settings, acc, self.out)
        if finished is not None:
            logger.info("%s holds a finished run; nothing to resume", self.out)
            return {"out": str(self.out), "method": cfg.method, "already_finished": True, **finished["result"]}
        self._commit = record.git_commit()
        run = self._setup()
        step, start_epoch, skip_batches = self._resume(ckpt) if ckpt is not None else (0, 0, 0)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            record.truncate_metrics(self.metrics_path, step)
            self._write_record(run.derived)
        if cfg.report_to:
            acc.init_trackers("goalclip", config=record.tracker_hparams(cfg))
        started = time.perf_counter()
        step, epoch, logs, step_times = self._loop(run, step, start_epoch, skip_batches)
        if self.validator is not None and self.validator.last_step != step:
            self._validate(run, step, epoch)  # the final model is always validated (and may be the best)
        failed = self._all_failed()
        acc.wait_for_everyone()
        median = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")
        result = {
            "steps": step,
            "examples": len(run.dataset),
            "skipped": len(self.skipped) + len(failed),
            "skipped_reasons": [m for kind in self.skipped.examples.values() for m in kind] + sorted(failed.values()),
            "context_length": run.derived["context_length"],
            "final_loss": float(logs["loss"]) if "loss" in logs else None,
        }
        if self.validator is not None and self.validator.keep_best:
            result["best"] = self.validator.best
        if acc.is_main_process:
            clip = run.bundle.model.float()  # a bf16-weight run is exported as fp32 (exactly its values)
            export_model(ClipBundle(clip, run.bundle.tokenizer, run.bundle.image_processor), run.heads,
                         run.heads_from, self.out)
            self._write_record(run.derived, result)
        acc.wait_for_everyone()  # no process returns (or tears the group down) before the model is on disk
        acc.end_training()
        return {"out": str(self.out), "method": cfg.method, **result, "median_step_s": median,
                "wall_s": time.perf_counter() - started}

    def _setup(self) -> _Setup:
        """Read the examples, load and prepare the model, build the optimizer, schedule and validator."""
        cfg, acc = self.config, self.accelerator
        local = self.terms.needs_local
        examples = load_examples(cfg.data, need_local=local, skip_invalid=cfg.skip_invalid, skipped=self.skipped,
                                 local_pairs=cfg.local_pairs, pair_weighting=cfg.pair_weighting)
        # SDPA: the same numbers as eager attention (tests/training/test_speed_path.py), fused kernels on a GPU
        bundle = load_clip(cfg.model, base=cfg.base, attn_implementation="sdpa")
        context = prepare_text_positions(bundle, cfg.text_context(bundle.kind), cfg.keep_positions)
        clamp_logit_scale(bundle.model)
        if cfg.gradient_checkpointing:
            bundle.model.activation_checkpointing_enable()
        dataset = TrainDataset(examples, bundle, need_local=local, pair_weighting=cfg.pair_weighting,
                               draft_decode=cfg.draft_decode, decode_on=cfg.decode_on)
        truncated = count_truncated(bundle, [ex.caption for ex in examples], context)
        if truncated:
            logger.warning("%d of %d captions are longer than the %d-token context: their tails are cut and "
                           "sentences past it get no text-TSL term", truncated, len(examples), context)
        collate = Collate(pad_id=bundle.tokenizer.pad_token_id, weighted=cfg.local_pairs > 1,
                          pad_to=context if bundle.backbone.pads_to_context else None)
        heads, heads_from = build_heads(bundle.model, cfg.model) if cfg.tsl_heads == "separate" else (None, None)
        step_class = ChunkedStepModule if cfg.grad_cache_chunk else StepModule
        step_module = step_class(bundle.model, cfg.method, cfg.weights, heads,
                                 LossOptions(cfg.local_pair_loss, cfg.tsl_target))
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
        step_module.to(acc.device)  # before the optimizer: fused AdamW needs the parameters on the GPU
        optimizer = build_optimizer(step_module, cfg.lr, cfg.weight_decay, self.settings["decay_all"])
        if cfg.compile:
            compile_towers(bundle.model)  # the towers only: the chunk and pair logic around them stays eager
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
        derived = {"backbone": bundle.kind, "context_length": context, "num_processes": acc.num_processes,
                   "examples": len(dataset),
                   "examples_without_local_pair": sum(not ex.pairs for ex in examples) if local else None,
                   "skipped": len(self.skipped), "truncated_captions": truncated, "steps_per_epoch": steps_per_epoch,
                   "total_steps": total_steps,
                   "speed_path": record.speed_path(clip, optimizer, pin_memory, cfg.compile)}
        logger.info(record.describe_speed_path(derived["speed_path"]))
        if heads is not None:
            derived["tsl_heads_from"] = heads_from
        return _Setup(dataset=dataset, collate=collate,
                      bundle=ClipBundle(clip, bundle.tokenizer, bundle.image_processor), heads=heads,
                      heads_from=heads_from, model=model, optimizer=optimizer, scheduler=scheduler,
                      total_steps=total_steps, epochs=math.ceil(total_steps / steps_per_epoch),
                      pin_memory=pin_memory, bf16_weights=bf16_weights, derived=derived)

    def _resume(self, ckpt: Path) -> tuple[int, int, int]:
        """Restore Accelerate's state and the validator's from ``ckpt``: ``(step, epoch, step in epoch)``."""
        self.accelerator.load_state(str(ckpt))
        progress = json.loads((ckpt / "progress.json").read_text())
        if self.validator is not None and "validation" in progress:
            self.validator.load_state_dict(progress["validation"])
        logger.info("resumed from %s at step %d", ckpt, progress["step"])
        return progress["step"], progress["epoch"], progress["step_in_epoch"]

    def _loop(self, run: _Setup, step: int, start_epoch: int,
              skip_batches: int) -> tuple[int, int, dict[str, Any], list[float]]:
        """The epochs from ``start_epoch`` on: ``(last step, last epoch, last logs, step times)``."""
        cfg, acc = self.config, self.accelerator
        last_ckpt = latest_checkpoint(self.out)
        bar = tqdm(total=run.total_steps, initial=step, desc=f"train {cfg.method}",
                   disable=not (cfg.progress and acc.is_main_process))
        step_times: list[float] = []
        logs: dict[str, Any] = {}
        epoch = start_epoch
        run.model.train()
        for epoch in range(start_epoch, run.epochs):
            step_in_epoch = skip_batches if epoch == start_epoch else 0
            batches = epoch_batches(len(run.dataset), cfg.batch_size, cfg.seed, epoch, acc.process_index,
                                    acc.num_processes)
            loader = worker_loader(run.dataset, batch_sampler=batches[step_in_epoch:], collate_fn=run.collate,
                                   num_workers=cfg.num_workers, pin_memory=run.pin_memory)
            for batch in loader:
                if step >= run.total_steps:
                    break
                logs, seconds = self._step(run, batch, step, last_ckpt)
                step += 1
                step_in_epoch += 1
                step_times.append(seconds)
                bar.update(1)
                if step % cfg.log_every == 0 or step == run.total_steps:
                    # each process's loss is its share of the global-batch loss: average them
                    logs = {k: float(acc.reduce(v.detach().float(), "mean")) for k, v in logs.items()}
                    logs["lr"] = run.scheduler.get_last_lr()[0]
                    bar.set_postfix({k.removeprefix("loss_"): f"{v:.3g}" for k, v in logs.items()})
                    self._log(step, epoch, logs)
                if self.validator is not None and cfg.val_every and step % cfg.val_every == 0:
                    self._validate(run, step, epoch)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    last_ckpt = self._save_checkpoint(step, epoch, step_in_epoch)
            if step >= run.total_steps:
                break
            if self.validator is not None and not cfg.val_every:
                self._validate(run, step, epoch)
            if cfg.checkpoint_epochs:
                last_ckpt = self._save_checkpoint(step, epoch + 1, 0)
        bar.close()
        return step, epoch, logs, step_times

    def _step(self, run: _Setup, batch: dict[str, Any], step: int,
              last_ckpt: Path | None) -> tuple[dict[str, Any], float]:
        """One optimizer step on ``batch`` (step number ``step + 1``): its logs and seconds (from the batch
        on the device to the clamped scale)."""
        cfg, acc, model = self.config, self.accelerator, run.model
        batch = run.dataset.to_device(batch, acc.device)  # with --decode-on device, failures can appear here
        if "failed" in batch:
            self._note_failed(batch.pop("failed"), batch)
        if run.bf16_weights:
            batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
        tick = time.perf_counter()
        if cfg.grad_cache_chunk:  # forward and backward chunk by chunk, the same gradients
            loss, logs = grad_cache_step(acc, model, batch, cfg.grad_cache_chunk)
        else:
            with acc.autocast():
                loss, logs = model(batch)
        if not cfg.grad_cache_chunk:
            acc.backward(loss)
        if self.settings["grad_clip"]:
            acc.clip_grad_norm_(model.parameters(), self.settings["grad_clip"])
        # A host read (a device sync) every step: after the backward is queued, so the GPU works through
        # it meanwhile, and before the optimizer, so a non-finite loss never reaches the weights.
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at step {step + 1}; last good checkpoint: "
                f"{last_ckpt or 'none (use --checkpoint-every)'}"
            )
        run.optimizer.step()
        if not run.optimizer.step_was_skipped:  # fp16 overflow: the schedule waits too
            run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(run.bundle.model)
        return logs, time.perf_counter() - tick

    # ------------------------------------------------------------------ record, validation, checkpoints

    def _write_record(self, derived: dict[str, Any], result: dict[str, Any] | None = None) -> None:
        if self.accelerator.is_main_process:
            record.write_record(self.out, self.config, self.settings, derived, self._commit, result)

    def _log(self, step: int, epoch: int, logs: dict[str, float]) -> None:
        self.accelerator.log(logs, step=step)
        if self.accelerator.is_main_process:
            record.append_metrics(self.metrics_path, {"step": step, "epoch": epoch, **logs})

    def _validate(self, run: _Setup, step: int, epoch: int) -> None:
        """Score the model now (every process encodes a share); the main process logs the scores
        (a metrics.jsonl line ``{"step", "epoch", "val": {...}}`` and ``val/NAME`` to the trackers)
        and, on a new best ``--keep-best`` score, exports the model to ``best/``."""
        scores = self.validator.score(run.bundle, step)
        if scores:
            self.accelerator.log({f"{TRACKER_PREFIX}{name}": value for name, value in scores.items()}, step=step)
            record.append_metrics(self.metrics_path, {"step": step, "epoch": epoch, "val": scores})
        if self.validator.improved(scores, step):
            model = run.bundle.model
            if model.dtype != torch.float32:  # bf16 weights: export an fp32 copy, training goes on in bf16
                model = copy.deepcopy(model).float()
            export_model(ClipBundle(model, run.bundle.tokenizer, run.bundle.image_processor), run.heads,
                         run.heads_from, self.out, self.out / BEST_DIR)
        self.accelerator.wait_for_everyone()

    def _save_checkpoint(self, step: int, epoch: int, step_in_epoch: int) -> Path:
        progress: dict[str, Any] = {"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch}
        if self.validator is not None:
            progress["validation"] = self.validator.state_dict()
        return save_checkpoint(self.accelerator, self.out, progress, self.config.keep_checkpoints)

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


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one training job and return its summary (what the CLI prints).

    The main process holds ``<out>.lock`` throughout, so two runs never write one folder. A resumed
    run that had already finished returns its recorded result with ``already_finished=True`` and
    leaves the folder untouched.
    """
    trainer = Trainer(config)
    with output_lock(config.out) if trainer.accelerator.is_main_process else contextlib.nullcontext():
        return trainer.run()
