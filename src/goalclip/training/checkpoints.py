"""Checkpoints (to resume a run) and the exported model folder, each written whole or not at all.

Both go through a temporary folder renamed into place, so a crash never leaves half a checkpoint
or half a model; a write that fails on a full disk says so (torch says only 'enforce fail').
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from goalclip.models.card import write_model_card
from goalclip.models.clip import ClipBundle, save_clip
from goalclip.training.heads import HEADS_FILE, HEADS_META, TslHeads, save_heads

logger = logging.getLogger(__name__)

MODEL_FILES = ("model.safetensors", "config.json", HEADS_FILE, HEADS_META)
BEST_DIR = "best"  # --keep-best: the best validated model, a model folder like the final export
EXPORT_TMP = ".export-tmp"
LOW_DISK_BYTES = 64 * 2**20  # below this, a failed write is reported as a full disk


def write_error(exc: BaseException, what: str, path: Path) -> OSError | None:
    """A clear error for a failed write when the disk is full (torch says only 'enforce fail')."""
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if getattr(exc, "errno", None) == errno.ENOSPC or free < LOW_DISK_BYTES:
        return OSError(errno.ENOSPC, f"no space left on device while writing {what} {path} "
                                     f"({free / 2**20:.0f} MiB free): {exc}")
    return None


def checkpoint_folders(out: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    return sorted(out.glob("checkpoints/step-*"), key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = checkpoint_folders(out)
    return ckpts[-1] if ckpts else None


def save_checkpoint(acc: Accelerator, out: Path, progress: dict[str, Any], keep: int) -> Path:
    """Model + optimizer + scheduler + RNG (Accelerate's state) + ``progress.json``, written to a temp dir
    then renamed; the oldest checkpoints beyond ``keep`` are removed. Every process must call it."""
    step = progress["step"]
    final = out / "checkpoints" / f"step-{step}"
    tmp = out / "checkpoints" / f".tmp-step-{step}"
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp))
    except (OSError, RuntimeError) as exc:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        clear = write_error(exc, "checkpoint", final)
        if clear is None:
            raise
        raise clear from exc
    if acc.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(progress))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_folders(out)[:-keep]:
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return final


def export_model(bundle: ClipBundle, heads: TslHeads | None, heads_from: str | None, out: Path,
                 folder: Path | None = None) -> None:
    """Write the final model folder (or ``folder``: best/) and learned TSL heads beside it via a temporary
    folder in ``out``, so a crash never leaves half a model."""
    folder = folder or out
    tmp = out / EXPORT_TMP
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save_clip(bundle, tmp)
        if heads is not None:
            save_heads(heads, tmp, initialised_from=str(heads_from))
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        clear = write_error(exc, "the model", folder)
        if clear is None:
            raise
        raise clear from exc
    folder.mkdir(exist_ok=True)
    for item in tmp.iterdir():
        os.replace(item, folder / item.name)
    tmp.rmdir()
    write_model_card(folder, out)
