"""``goalclip import-checkpoint longclip`` and its old name ``goalclip convert longclip``, kept as an alias."""

from __future__ import annotations

from pathlib import Path

import pytest

from goalclip.cli import build_parser, main


def _argv(command: str, tmp_path: Path) -> list[str]:
    return [command, "longclip", "--checkpoint", str(tmp_path / "missing.pt"), "--processor",
            "openai/clip-vit-base-patch16", "--out", str(tmp_path / "out")]


def test_import_checkpoint_and_its_old_name_take_the_same_flags(tmp_path: Path) -> None:
    new = vars(build_parser().parse_args(_argv("import-checkpoint", tmp_path)))
    old = vars(build_parser().parse_args(_argv("convert", tmp_path)))
    assert {k: v for k, v in new.items() if k not in ("command", "func")} == \
        {k: v for k, v in old.items() if k not in ("command", "func")}


@pytest.mark.parametrize("command", ["import-checkpoint", "convert"])
def test_only_the_old_name_prints_a_one_line_deprecation_note(command: str, tmp_path: Path, capsys) -> None:
    assert main(_argv(command, tmp_path)) == 1  # the checkpoint file is missing: the run itself fails
    err = capsys.readouterr().err.splitlines()
    note = "goalclip convert longclip is deprecated: use goalclip import-checkpoint longclip (same flags)"
    assert (note in err) == (command == "convert")
    assert f"goalclip {command}: error:" in err[-1] and "missing.pt" in err[-1]
