"""``train --config`` files and run records are checked field by field (core.settings) before any
model is loaded or any file is written; every message names the file and the field."""

from __future__ import annotations

import json

import pytest

from goalclip.cli import main

TINY = ["--max-text-len", "52", "--keep-positions", "4", "--num-workers", "0", "--no-progress", "--batch-size", "2"]


def test_a_partial_config_with_model_data_and_out_on_the_command_line_trains(tiny_world, tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"epochs": 1, "batch_size": 2, "method": "global"}))
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--model", str(tiny_world.model), "--data", str(tiny_world.mined),
            "--out", str(out), "--max-steps", "1", *TINY[:-2]]
    assert main(argv) == 0, capsys.readouterr().err
    recorded = json.loads((out / "train_config.json").read_text())["config"]
    assert (recorded["epochs"], recorded["method"], recorded["out"]) == (1, "global", str(out))


@pytest.mark.parametrize(("settings", "field", "expected"), [
    ({"epochs": "1"}, "epochs", "an integer"),
    ({"epochs": None}, "epochs", "an integer"),
    ({"epochs": 4.5}, "epochs", "an integer"),
    ({"lr": "fast"}, "lr", "a number"),
    ({"gradient_checkpointing": 1}, "gradient_checkpointing", "true or false"),
    ({"weights": 3}, "weights", "an object with global_, local, tsl"),
    ({"weights": {"local": "half"}}, "local", "a number"),
    ({"weights": {"lokal": 0.5}}, "lokal", "unknown field"),
])
def test_a_config_value_of_the_wrong_type_names_file_and_field_before_anything_runs(
        tmp_path, capsys, settings, field, expected):
    config = tmp_path / "run.json"
    config.write_text(json.dumps(settings))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--model", "no-such-org/no-such-model", "--data",
                 str(tmp_path / "no-such-data.jsonl"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(config) in err and field in err and expected in err and "unexpected error" not in err
    assert not out.exists()


@pytest.mark.parametrize("record", [[1, 2], "a string", {"config": [1]}, {"config": {}, "derived": "x"}])
def test_a_run_record_that_is_not_an_object_is_named_on_resume(tiny_world, tmp_path, capsys, record):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text(json.dumps(record))
    assert main(["train", "--model", str(tiny_world.model), "--data", str(tiny_world.mined), "--out", str(out),
                 "--resume", *TINY]) == 1
    err = capsys.readouterr().err
    assert str(out / "train_config.json") in err and "unexpected error" not in err
    assert sorted(p.name for p in out.iterdir()) == ["train_config.json"]


def test_a_record_from_an_older_goalclip_says_which_version_wrote_it(tiny_world, tmp_path, capsys):
    config = tmp_path / "old.json"
    config.write_text(json.dumps({"config": {"model": "m", "data": "d", "out": "o", "context_length": 77},
                                  "versions": {"goalclip": "0.0.1"}}))
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "context_length" in err and "goalclip 0.0.1" in err and "--config" in err


def test_a_config_that_is_not_a_json_object_is_named(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text("[1, 2]")
    assert main(["train", "--config", str(config), "--model", "m", "--data", "d", "--out", str(tmp_path / "o")]) == 1
    assert f"{config}: expected a JSON object" in capsys.readouterr().err
