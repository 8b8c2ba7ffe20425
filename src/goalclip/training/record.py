"""The run record: ``train_config.json`` (settings, derived facts, versions, git commit, result) and ``metrics.jsonl``.

``train_config.json`` holds the user's config (re-runnable with ``--config``) apart from what the
run derived; ``result`` is added once the model is exported, and its presence marks the run finished.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from goalclip.core.manifest import atomic_write
from goalclip.training.config import TrainConfig

RECORD_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
RECORD_FILES = (RECORD_FILE, METRICS_FILE)


def versions() -> dict[str, str]:
    import accelerate
    import transformers

    import goalclip

    return {"goalclip": goalclip.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def git_commit() -> str | None:
    """The commit of the goalclip checkout that ran, or None for an installed package."""
    if "site-packages" in Path(__file__).parts:
        return None
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def read_record(out: Path) -> dict[str, Any] | None:
    path = out / RECORD_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: unreadable run record ({exc})") from None


def write_record(out: Path, config: TrainConfig, settings: dict[str, Any], derived: dict[str, Any],
                 commit: str | None, result: dict[str, Any] | None = None) -> None:
    """Write ``train_config.json`` atomically (main process only)."""
    record = {"config": config.to_dict(), "resolved": settings, "derived": derived, "versions": versions(),
              "git_commit": commit}
    if result is not None:
        record["result"] = result
    with atomic_write(out / RECORD_FILE) as handle:
        json.dump(record, handle, indent=2)


def _metrics_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinite for a line torn by a kill, so it is dropped."""
    try:
        return float(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the step a resumed run restarts from, so no step appears twice."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _metrics_step(line) <= step]
    if len(kept) != len(lines):
        with atomic_write(path) as handle:
            handle.writelines(kept)


def append_metrics(path: Path, values: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(values) + "\n")


def tracker_hparams(config: TrainConfig) -> dict[str, Any]:
    """Flat hyperparameters for trackers (they take scalars): the loss weights as w_global/w_local/w_tsl."""
    values = {k: v for k, v in {**config.to_dict(), **config.resolved()}.items() if k != "weights"}
    weights = config.weights
    return {**values, "w_global": weights.global_, "w_local": weights.local, "w_tsl": weights.tsl}


def speed_path(clip: Any, optimizer: torch.optim.Optimizer, pin_memory: bool, compiled: bool) -> dict[str, Any]:
    """What the run actually uses of the GPU speed path, read back from the objects (logged and recorded)."""
    return {"attention": clip.config._attn_implementation,
            "fused_adamw": any(bool(group.get("fused")) for group in optimizer.param_groups),
            "pin_memory": pin_memory, "compile": compiled}


def describe_speed_path(path: dict[str, Any]) -> str:
    on = {True: "on", False: "off"}
    return (f"speed path: attention {path['attention']}, fused AdamW {on[path['fused_adamw']]}, pinned memory "
            f"{on[path['pin_memory']]}, compile {on[path['compile']]}")
