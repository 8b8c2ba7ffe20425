"""``goalclip serve`` refuses what it cannot serve before it listens: one line on stderr, exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goalclip.cli import main
from goalclip.demo.layout import served_views


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "--host 0.0.0.0: only loopback addresses"),
        (["--host", "example.org"], "--host example.org: only loopback addresses"),
        (["--model", "a", "--model", "b", "--model", "c", "--images", "."], "at most two models side by side"),
        (["--model", "a"], "--model needs --images DIR or --data MANIFEST"),
    ],
)
def test_serve_refuses_bad_flags_with_one_line(argv, message, capsys):
    assert main(["serve", "--port", "0", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def _demo_layout(root: Path) -> None:
    """The folders ``goalclip demo --out`` leaves (goalclip.demo.pipeline), without their contents."""
    for run in ("pretrained", "global/seed0", "goal/seed0", "goal/seed1", "wo-tsl/seed0"):
        (root / "models" / run).mkdir(parents=True)
        (root / "models" / run / "train_config.json").write_text("{}")
    (root / "models" / "init").mkdir()
    (root / "world").mkdir()
    (root / "world" / "test.jsonl").write_text("")
    (root / "mined").mkdir()
    (root / "mined" / "train.jsonl").write_text("")
    (root / "metrics.json").write_text(json.dumps({"models": []}))
    (root / "summary.json").write_text(json.dumps({"plan": {"max_text_len": 104, "keep_positions": 8}}))


def test_serve_demo_finds_the_demos_models_test_images_pairs_and_runs(tmp_path):
    _demo_layout(tmp_path)
    models = tmp_path / "models"
    assert served_views(str(tmp_path)) == {
        "model": [str(models / "pretrained"), str(models / "goal" / "seed0")],
        "data": str(tmp_path / "world" / "test.jsonl"),
        "pairs": str(tmp_path / "mined" / "train.jsonl"),
        "runs": [str(models / run) for run in ("pretrained", "global/seed0", "goal/seed0", "goal/seed1",
                                               "wo-tsl/seed0")],
        "evals": [str(tmp_path / "metrics.json")],
        "context": 104,
        "keep_positions": 8,
    }


def test_serve_demo_refuses_an_unfinished_demo_folder_with_one_line(tmp_path, capsys):
    _demo_layout(tmp_path)
    (tmp_path / "summary.json").unlink()
    assert main(["serve", "--port", "0", "--demo", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"--demo {tmp_path}: no summary.json" in err and len(err.strip().splitlines()) == 1
    assert main(["serve", "--port", "0", "--demo", str(tmp_path), "--images", str(tmp_path)]) == 1
    assert "--demo serves the demo's own test images" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text('{"plan": {\n')  # a demo killed while writing it
    assert main(["serve", "--port", "0", "--demo", str(tmp_path)]) == 1
    assert f"{tmp_path / 'summary.json'}: not valid JSON (line 2" in capsys.readouterr().err
