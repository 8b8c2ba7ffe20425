"""Every file a command writes, weights included, gets the permissions the umask gives new files
(core.manifest's atomic writers), so other users of a shared machine can read the model."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from goalclip.cli import main

TINY = ["--max-text-len", "52", "--keep-positions", "4", "--num-workers", "0", "--no-progress", "--log-every", "1"]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in sorted(folder.rglob("*"))}


def test_train_writes_model_checkpoints_best_and_heads_readable_by_others(tiny_world, tmp_path, umask_022):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_world.model), "--data", str(tiny_world.mined), "--out", str(out),
                 "--batch-size", "2", "--max-steps", "2", "--tsl-heads", "separate", "--checkpoint-every", "1",
                 "--val-data", str(tiny_world.captions), "--keep-best", "i2t@1", *TINY]) == 0
    modes = _modes(out)
    for name in ("model.safetensors", "tsl_heads.safetensors", "best/model.safetensors",
                 "best/tsl_heads.safetensors", "train_config.json"):
        assert modes[name] == 0o644, name
    assert any(name.startswith("checkpoints/step-2/") and name.endswith(".safetensors") for name in modes)
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (out / name).is_dir() else 0o644)}
    assert not wrong


def test_save_clip_writes_a_readable_folder_without_leaving_temps(tiny_bundle, tmp_path, umask_022):
    from goalclip.models.clip import save_clip

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "NOTES.txt").write_text("kept\n")
    save_clip(tiny_bundle, tmp_path / "model")
    modes = _modes(tmp_path)
    assert modes["model/model.safetensors"] == 0o644 and (tmp_path / "model" / "NOTES.txt").read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
