"""The goalclip command line: the real subcommands end to end on the tiny world, and bad input
ending in one clear message with exit code 2 instead of a traceback."""

import json

import pytest
from transformers import AutoProcessor, CLIPModel

from goalclip.cli import build_parser, main


def test_mine_train_eval_chain(tiny_world, tmp_path, capsys):
    mined = tmp_path / "mined.jsonl"
    assert main(["mine", "--model", str(tiny_world.model), "--data", str(tiny_world.captions),
                 "--regions", "flism", "--boxes", str(tiny_world.boxes), "--out", str(mined),
                 "--num-workers", "0", "--no-progress"]) == 0
    assert "mined 8 pairs from 8 images" in capsys.readouterr().out
    records = [json.loads(line) for line in mined.read_text().splitlines()]
    assert [r["id"] for r in records] == list(tiny_world.ids)
    assert all(r["local"]["source"] in ("external", "grid") for r in records)

    out = tmp_path / "goal"
    assert main(["train", "--model", str(tiny_world.model), "--data", str(mined), "--method", "goal",
                 "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--max-text-len", "40",
                 "--keep-positions", "4", "--num-workers", "0", "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert "trained goal for 2 steps on 8 examples" in line and "context 40" in line
    model = CLIPModel.from_pretrained(out)
    assert model.config.text_config.max_position_embeddings == 40
    assert AutoProcessor.from_pretrained(out) is not None

    metrics = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(tiny_world.model), "--model", str(out), "--data", str(tiny_world.captions),
                 "--ks", "1", "5", "--out", str(metrics), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("| model | i2t@1 | i2t@5 | t2i@1 | t2i@5")
    assert [row.split(" | ")[0] for row in printed[2:4]] == ["| model", "| goal"]
    assert len(json.loads(metrics.read_text())["models"]) == 2


def test_bad_manifest_line_is_one_clear_error(tiny_world, tmp_path, capsys):
    bad = tiny_world.root / "torn.jsonl"
    lines = tiny_world.mined.read_text().splitlines()
    lines[2] = lines[2][:-5]  # a torn JSON line
    bad.write_text("\n".join(lines) + "\n")
    code = main(["train", "--model", str(tiny_world.model), "--data", str(bad), "--out", str(tmp_path / "o"),
                 "--max-steps", "1", "--batch-size", "2", "--num-workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{bad}:3: malformed JSON" in err and "Traceback" not in err


def test_skip_invalid_counts_instead_of_stopping(tiny_world, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    records = [json.loads(line) for line in tiny_world.mined.read_text().splitlines()]
    for record in records:
        record["image"] = str(tiny_world.root / record["image"])
    records[0]["local"]["sentence"] = "A purple triangle is not in this caption."
    records[1]["image"] = str(tmp_path / "missing.png")
    bad.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["train", "--model", str(tiny_world.model), "--data", str(bad), "--out", str(tmp_path / "o"),
            "--max-steps", "1", "--batch-size", "2", "--max-text-len", "40", "--keep-positions", "4",
            "--num-workers", "0", "--no-progress"]
    assert main(args) == 1
    assert "field 'local.sentence' not found in the caption" in capsys.readouterr().err
    assert main([*args, "--skip-invalid"]) == 0
    assert "on 6 examples (2 skipped)" in capsys.readouterr().out


def _subparsers(parser):
    """Every (name, parser) pair below ``parser``, nested subcommands included (viz attention, ...)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_building_the_parser_imports_neither_torch_nor_transformers():
    """--help must be instant: parsers are built without the heavy libraries."""
    import subprocess
    import sys

    code = ("import sys; from goalclip.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_subcommand_option_has_help_and_devices_default_to_auto():
    for name, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"goalclip {name} {action.option_strings} has no help"
            if action.dest == "device":
                assert action.default == "auto", f"goalclip {name} --device defaults to {action.default!r}"


@pytest.mark.parametrize("command", ["mine", "train", "eval", "search", "demo", "viz attention", "viz retrieval"])
def test_long_commands_take_no_progress(command, capsys):
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    assert "--no-progress hide progress bars" in " ".join(capsys.readouterr().out.split())


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("goalclip ")


def test_usage_error_exits_2_and_runtime_error_exits_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--method", "bogus"])  # not one of the choices
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--method: invalid choice: 'bogus'" in err and "goal" in err and "Traceback" not in err
    code = main(["eval", "--model", "m", "--data", str(tmp_path / "missing.jsonl"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("goalclip eval: error:") and "Traceback" not in err


def test_unexpected_exception_is_one_line_and_verbose_shows_the_traceback(monkeypatch, tmp_path, capsys):
    import goalclip.cli.data as data_cli

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setattr(data_cli, "run_joint", broken)  # bound when main() builds the parser
    argv = ["data", "joint", "--data", "a", "--mined", "b", "--out", str(tmp_path / "c")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected error (KeyError)" in err and "-v" in err
    with pytest.raises(KeyError):
        main(["-v", *argv])


def test_no_progress_also_silences_transformers_bars(tmp_path):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    main(["eval", "--model", "m", "--data", str(tmp_path / "missing.jsonl"), "--no-progress"])
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
