"""Mining records wall seconds per stage (FAST-GOAL Table V compares preprocessing time)."""

from __future__ import annotations

import json

from goalclip.cli import main

STAGES = ("load", "decode", "propose", "crop", "embed", "match")


def test_mine_summary_records_seconds_per_stage(tiny_world, tmp_path, capsys):
    out = tmp_path / "mined.jsonl"
    assert main(["mine", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--regions", "grid",
                 "--out", str(out), "--num-workers", "0", "--batch-size", "3", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads((tmp_path / "mined.summary.json").read_text())
    seconds = summary["stage_seconds"]
    assert tuple(seconds) == STAGES
    assert all(value >= 0 for value in seconds.values())
    assert seconds["load"] > 0 and seconds["embed"] > 0  # a model was loaded and ran
    assert sum(seconds.values()) <= summary["elapsed_s"] + 1e-6
    assert "stages: load " in line and " match " in line
