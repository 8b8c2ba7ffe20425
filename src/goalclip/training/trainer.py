"""GOAL / FAST-GOAL fine-tuning under Accelerate: one training step and the loop around it.

The step runs the vision tower once over ``[global images ; crops]`` and encodes each text
input once (captions, and sentences padded to their own short length); TSL pools the global
tokens with the batch's precomputed span/patch masks. Under ``accelerate launch`` the
contrastive logits use embeddings gathered from every process (``losses``), so N processes
with batch b train exactly like one process with batch N*b.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import CLIPModel, get_cosine_schedule_with_warmup

from goalclip.core.images import set_max_image_pixels
from goalclip.training.data import Collate, TrainDataset, load_examples
from goalclip.training.losses import METHOD_TERMS, LossWeights, combine_losses, contrastive_loss, masked_mean, tsl_loss
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

logger = logging.getLogger(__name__)

METHODS = tuple(METHOD_TERMS)
MAX_LOGIT_SCALE = 100.0


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where it stopped."""


@dataclass
class TrainConfig:
    """Everything a run needs; saved next to the model as ``train_config.json``."""

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
    warmup_steps: int = 0
    max_text_len: int = 248
    keep_positions: int = 20
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    precision: str = "no"
    grad_clip: float | None = 1.0
    gradient_checkpointing: bool = False
    num_workers: int = 2
    checkpoint_every: int = 0
    checkpoint_epochs: bool = True
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = False
    skip_invalid: bool = False
    report_to: str | None = None
    progress: bool = True
    max_image_pixels: int | None = None

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.batch_size < 2:
            raise ValueError("--batch-size must be at least 2 (contrastive losses need negatives)")
        if self.epochs < 1 and not self.max_steps:
            raise ValueError("--epochs must be at least 1")
        if self.precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--precision must be no, fp16 or bf16, got {self.precision!r}")


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


def training_step(
    model: CLIPModel, batch: dict[str, torch.Tensor], method: str, weights: LossWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch: one vision forward over ``[global ; crops]``, each text encoded once.

    Returns the loss and detached scalars for logging (kept as tensors: converting them every
    step would force a device sync).
    """
    terms_on = METHOD_TERMS[method]
    use_tsl = "tsl" in terms_on
    b = batch["caption_ids"].shape[0]
    image_emb, patch_tokens = image_forward(model, batch["pixel_values"])
    scale = model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    terms: dict[str, torch.Tensor] = {}
    logs: dict[str, torch.Tensor] = {"logit_scale": scale.detach()}
    caption_emb = caption_states = sentence_emb = None
    if "global" in terms_on or use_tsl:
        caption_emb, caption_states = text_forward(
            model, batch["caption_ids"], batch["caption_mask"], token_states=use_tsl
        )
    if needs_local(method):
        sentence_emb, _ = text_forward(model, batch["sentence_ids"], batch["sentence_mask"])
    if "global" in terms_on:
        terms["global"] = contrastive_loss(image_emb[:b], caption_emb, scale)
    if "local" in terms_on:
        terms["local"] = contrastive_loss(image_emb[b:], sentence_emb, scale)
    if use_tsl:
        pooled_image = project_patch_tokens(model, masked_mean(patch_tokens[:b], batch["patch_mask"]))
        terms["tsl_image"], cos_image = tsl_loss(pooled_image, image_emb[b:], batch["image_tsl_valid"])
        pooled_text = project_text_tokens(model, masked_mean(caption_states, batch["span_mask"]))
        terms["tsl_text"], cos_text = tsl_loss(pooled_text, sentence_emb, batch["text_tsl_valid"])
        logs["tsl_cos_image"] = cos_image.nanmean()
        logs["tsl_cos_text"] = cos_text.nanmean()
    loss = combine_losses(terms, method, weights)
    logs.update({f"loss_{k}": v.detach() for k, v in terms.items()})
    logs["loss"] = loss.detach()
    return loss, logs


class StepModule(torch.nn.Module):
    """Wraps the CLIP so the whole step is one ``forward``: DDP then prepares and syncs as usual
    (calling submodules of a DDP-wrapped model directly would skip its forward bookkeeping)."""

    def __init__(self, clip: CLIPModel, method: str, weights: LossWeights):
        super().__init__()
        self.clip = clip
        self.method = method
        self.weights = weights

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return training_step(self.clip, batch, self.method, self.weights)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, embeddings and the logit scale (as CLIP trains)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        flat = param.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if flat else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


class Trainer:
    """Runs a ``TrainConfig``: data validation, Accelerate setup, the loop, checkpoints, export."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self.accelerator = Accelerator(
            mixed_precision=config.precision,
            log_with=config.report_to,
            project_dir=str(self.out),
        )
        set_seed(config.seed)
        self.skipped = SkipReport()

    def _save_checkpoint(self, step: int, epoch: int, step_in_epoch: int) -> Path:
        """Model + optimizer + scheduler + RNG + position, written to a temp dir then renamed."""
        acc = self.accelerator
        final = self.out / "checkpoints" / f"step-{step}"
        tmp = self.out / "checkpoints" / f".tmp-step-{step}"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            (tmp / "progress.json").write_text(
                json.dumps({"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch})
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            ckpts = sorted(self.out.glob("checkpoints/step-*"), key=lambda p: int(p.name.split("-")[1]))
            for old in ckpts[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def run(self) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        set_max_image_pixels(cfg.max_image_pixels)
        local = needs_local(cfg.method)
        examples = load_examples(cfg.data, need_local=local, skip_invalid=cfg.skip_invalid, skipped=self.skipped)
        bundle = load_clip(cfg.model, base=cfg.base)
        context = prepare_text_positions(bundle, cfg.max_text_len, cfg.keep_positions)
        model = bundle.model
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        dataset = TrainDataset(examples, bundle, need_local=local)
        collate = Collate(pad_id=bundle.tokenizer.pad_token_id)
        per_step = cfg.batch_size * acc.num_processes
        if len(dataset) < per_step:
            raise ValueError(
                f"{cfg.data}: {len(dataset)} usable examples, fewer than one global batch "
                f"({cfg.batch_size} x {acc.num_processes} processes)"
            )
        steps_per_epoch = len(dataset) // per_step
        total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
        epochs = math.ceil(total_steps / steps_per_epoch)
        optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
        scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)
        model, optimizer, scheduler = acc.prepare(StepModule(model, cfg.method, cfg.weights), optimizer, scheduler)

        step = start_epoch = skip_batches = 0
        if not cfg.resume and _latest_checkpoint(self.out) is not None:
            raise FileExistsError(
                f"{self.out} holds checkpoints of an earlier run; pass --resume to continue it or choose another --out"
            )
        if cfg.resume and (ckpt := _latest_checkpoint(self.out)) is not None:
            acc.load_state(str(ckpt))
            progress = json.loads((ckpt / "progress.json").read_text())
            step, start_epoch, skip_batches = progress["step"], progress["epoch"], progress["step_in_epoch"]
            logger.info("resumed from %s at step %d", ckpt, step)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            resolved = {**asdict(cfg), "context_length": context, "num_processes": acc.num_processes,
                        "examples": len(dataset), "skipped": len(self.skipped), "total_steps": total_steps}
            with atomic_write(self.out / "train_config.json") as handle:
                json.dump(resolved, handle, indent=2)
        if cfg.report_to:
            acc.init_trackers("goalclip", config={k: v for k, v in asdict(cfg).items() if not isinstance(v, dict)})

        metrics_path = self.out / "metrics.jsonl"
        last_ckpt = _latest_checkpoint(self.out)
        bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.method}",
                   disable=not (cfg.progress and acc.is_main_process))
        started = time.perf_counter()
        step_times: list[float] = []
        logs: dict[str, Any] = {}
        model.train()
        for epoch in range(start_epoch, epochs):
            step_in_epoch = skip_batches if epoch == start_epoch else 0
            batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, epoch, acc.process_index,
                                    acc.num_processes)
            loader = DataLoader(dataset, batch_sampler=batches[step_in_epoch:], collate_fn=collate,
                                num_workers=cfg.num_workers)
            for batch in loader:
                if step >= total_steps:
                    break
                batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
                tick = time.perf_counter()
                with acc.autocast():
                    loss, logs = model(batch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"non-finite loss ({loss.item()}) at step {step + 1}; last good checkpoint: "
                        f"{last_ckpt or 'none (use --checkpoint-every)'}"
                    )
                acc.backward(loss)
                if cfg.grad_clip:
                    acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
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
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    last_ckpt = self._save_checkpoint(step, epoch, step_in_epoch)
            if step >= total_steps:
                break
            if cfg.checkpoint_epochs:
                last_ckpt = self._save_checkpoint(step, epoch + 1, 0)
        bar.close()
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._export(ClipBundle(acc.unwrap_model(model).clip, bundle.tokenizer, bundle.image_processor))
        acc.end_training()
        median = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")
        return {
            "out": str(self.out),
            "method": cfg.method,
            "steps": step,
            "examples": len(dataset),
            "skipped": len(self.skipped),
            "context_length": context,
            "final_loss": float(logs["loss"]) if "loss" in logs else None,
            "median_step_s": median,
            "wall_s": time.perf_counter() - started,
        }

    def _log(self, path: Path, step: int, epoch: int, logs: dict[str, float]) -> None:
        self.accelerator.log(logs, step=step)
        if self.accelerator.is_main_process:
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "epoch": epoch, **logs}) + "\n")

    def _export(self, bundle: ClipBundle) -> None:
        """Write the final model folder via a temporary folder, so a crash never leaves half a model."""
        tmp = self.out / ".export-tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_clip(bundle, tmp)
        for item in tmp.iterdir():
            os.replace(item, self.out / item.name)
        tmp.rmdir()


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one training job and return its summary (what the CLI prints).

    The main process holds ``<out>.lock`` throughout, so two runs never write one folder.
    """
    trainer = Trainer(config)
    with output_lock(config.out) if trainer.accelerator.is_main_process else contextlib.nullcontext():
        return trainer.run()
