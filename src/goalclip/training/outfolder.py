"""What ``--out`` allows: a fresh run needs an empty folder, ``--overwrite`` clears one, ``--resume``
continues an unfinished run with the same defining settings and reports a finished one untouched."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from goalclip.training.checkpoints import BEST_DIR, EXPORT_TMP, MODEL_FILES, latest_checkpoint
from goalclip.training.config import SAFE_ON_RESUME, TrainConfig
from goalclip.training.record import RECORD_FILE, RECORD_FILES, read_record

logger = logging.getLogger(__name__)

PATH_SETTINGS = ("model", "data", "base", "val_data", "val_joint")


def prepare_out(config: TrainConfig, settings: dict[str, Any], acc: Accelerator,
                out: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """Decide what ``out`` allows: ``(checkpoint to resume or None, finished run's record or None)``.

    A fresh run refuses a folder that holds a model, a run record or checkpoints (unless
    ``overwrite``, which clears them first); ``resume`` continues an unfinished goalclip run
    with the same defining settings and reports a finished one without touching it.
    """
    record = read_record(out)
    ckpt = latest_checkpoint(out)
    held = [name for name in (*MODEL_FILES, *RECORD_FILES) if (out / name).exists()]
    held += ["checkpoints"] if ckpt else []
    held += [BEST_DIR] if (out / BEST_DIR).exists() else []
    if config.overwrite:
        acc.wait_for_everyone()
        if acc.is_main_process and held:
            clear_run(out)
        acc.wait_for_everyone()
        return None, None
    if not config.resume:
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
        check_resume_settings(record, config, settings, acc.num_processes, out)
    acc.wait_for_everyone()
    if acc.is_main_process:
        remove_partial_saves(out)
    return ckpt, None


def remove_partial_saves(out: Path) -> None:
    """Temporary folders a killed run left mid-checkpoint or mid-export: never complete, never reused."""
    for folder in [*out.glob("checkpoints/.tmp-step-*"), out / EXPORT_TMP]:
        if folder.exists():
            logger.info("removing %s, left by an interrupted save", folder)
            shutil.rmtree(folder)


def clear_run(out: Path) -> None:
    logger.info("--overwrite: removing the earlier run in %s", out)
    for name in (*MODEL_FILES, *RECORD_FILES):
        (out / name).unlink(missing_ok=True)
    for folder in (out / "checkpoints", out / EXPORT_TMP, out / BEST_DIR):
        if folder.exists():
            shutil.rmtree(folder)


def _same_setting(name: str, recorded: Any, now: Any) -> bool:
    if recorded == now:
        return True
    # the same file named by another path (relative / absolute) is the same input
    return (name in PATH_SETTINGS and isinstance(recorded, str) and isinstance(now, str)
            and Path(recorded).exists() and Path(recorded).resolve() == Path(now).resolve())


def check_resume_settings(record: dict[str, Any], config: TrainConfig, settings: dict[str, Any],
                          num_processes: int, out: Path) -> None:
    """Refuse to continue a run with settings that change what it computes, naming each one."""
    recorded = {**record.get("config", record), **record.get("resolved", {})}
    now = {**config.to_dict(), **settings}
    diffs = [
        f"{name} (run: {recorded[name]!r}, now: {value!r})"
        for name, value in now.items()
        if name not in SAFE_ON_RESUME and name in recorded and not _same_setting(name, recorded[name], value)
    ]
    processes = record.get("derived", {}).get("num_processes")
    if processes is not None and processes != num_processes:
        diffs.append(f"num_processes (run: {processes}, now: {num_processes})")
    if diffs:
        raise ValueError(
            f"--resume: {out} was trained with other settings: {'; '.join(diffs)}. Resume with the "
            f"run's settings (goalclip train --config {out / RECORD_FILE} --resume) or choose another --out"
        )
