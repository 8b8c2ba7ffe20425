"""Loader workers die with their parent in every command (core.processes.worker_loader).

Every DataLoader in the package is built by worker_loader, whose workers get SIGTERM from Linux
when the process that started them dies (kill -9 included); caption is checked as a user runs it.
"""

from __future__ import annotations

import ast
import json
import os
import signal
from pathlib import Path

import pytest
from PIL import Image

import goalclip
from goalclip.caption.tiny import build_tiny_llava_next
from tests.reliability.test_reliable_mining_eval import _killed_with_its_workers

PACKAGE = Path(goalclip.__file__).resolve().parent


def test_every_dataloader_of_the_package_is_built_by_worker_loader():
    makers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "DataLoader":
                makers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert len(makers) == 1 and makers[0].startswith("core/processes.py:"), makers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_caption_decoding_workers_exit_when_the_parent_dies(tmp_path, kill):
    model = build_tiny_llava_next(tmp_path / "llava")
    (tmp_path / "images").mkdir()
    Image.effect_noise((600, 600), 60).convert("RGB").save(tmp_path / "images" / "big.png")
    data = tmp_path / "images.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "image": "images/big.png"}) + "\n" for i in range(3000)))
    out = tmp_path / "captions.jsonl"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = ["caption", "--model", str(model), "--data", str(data), "--out", str(out), "--device", "cpu",
            "--batch-size", "1", "--num-workers", "2", "--max-new-tokens", "4", "--no-progress"]
    with _killed_with_its_workers(args, out.with_name("captions.jsonl.part0"), kill, env):
        pass
