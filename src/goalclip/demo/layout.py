"""Where ``goalclip demo --out`` puts its outputs: the one place the demo (the writer) and ``goalclip serve
--demo`` (a reader) take the paths from. Torch-free, so the CLI can read a demo folder at parse time."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any


def world_dir(out: str | os.PathLike) -> Path:
    """The synthetic world: images and manifests (its README.txt lists them)."""
    return Path(out) / "world"


def mined_manifest(out: str | os.PathLike, split: str) -> Path:
    """The pairs ``goalclip mine`` found in a split (``train``, ``test``)."""
    return Path(out) / "mined" / f"{split}.jsonl"


def model_dir(out: str | os.PathLike, name: str) -> Path:
    """A model folder: ``init`` (random), ``pretrained``, ``siglip_init``, ... or a method's folder of seeds."""
    return Path(out) / "models" / name


def run_dir(out: str | os.PathLike, method: str, seed: int) -> Path:
    """The fine-tuning run of ``method`` with ``seed``."""
    return model_dir(out, method) / f"seed{seed}"


def metrics_path(out: str | os.PathLike) -> Path:
    """Every model's scores (``goalclip eval``'s output) and the marking probe's."""
    return Path(out) / "metrics.json"


def summary_path(out: str | os.PathLike) -> Path:
    """Written last: its presence marks a finished demo."""
    return Path(out) / "summary.json"


def _seed_order(folder: Path) -> tuple[int, str]:
    digits = re.fullmatch(r"seed(\d+)", folder.name)
    return (int(digits.group(1)) if digits else -1, folder.name)


def served_views(out: str | os.PathLike) -> dict[str, Any]:
    """What ``goalclip serve --demo`` shows of a finished demo: the pretrained model and ``goal``'s first seed
    over the test images, read at the context the demo evaluated them at; the mined training pairs; every
    training run, with the demo's evaluation beside it. A ValueError names what is missing."""
    summary = summary_path(out)
    if not summary.is_file():
        raise ValueError(f"--demo {out}: no summary.json (not a finished goalclip demo --out folder)")
    try:
        plan = json.loads(summary.read_text(encoding="utf-8")).get("plan", {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"{summary}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    runs = sorted((p for p in model_dir(out, "").glob("*/seed*") if (p / "train_config.json").is_file()),
                  key=lambda p: (p.parent.name, _seed_order(p)))
    goal = [p for p in runs if p.parent.name == "goal"]
    if not goal:
        raise ValueError(f"--demo {out}: no models/goal/seedN run")
    pretrained = model_dir(out, "pretrained")
    return {"model": [str(pretrained), str(goal[0])], "data": str(world_dir(out) / "test.jsonl"),
            "pairs": str(mined_manifest(out, "train")), "runs": [str(pretrained), *map(str, runs)],
            "evals": [str(metrics_path(out))] if metrics_path(out).is_file() else [],
            "context": plan.get("max_text_len"), "keep_positions": plan.get("keep_positions")}
