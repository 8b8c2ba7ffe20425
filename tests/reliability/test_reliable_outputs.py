"""Every command's output flags are checked by one mechanism before any work (goalclip.cli.outputs).

The tests enumerate the real parser, so a new command or output flag cannot skip the checks: each
output set to one of the command's inputs, to another output, or under a file (unwritable even for
root) is refused with exit 1 and a line naming the flag, and nothing is written.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from PIL import Image

from goalclip.cli import build_parser, main
from goalclip.cli.outputs import OUTPUTS, leaf_parsers

LEAVES = dict(leaf_parsers(build_parser()))
CASES = [(path, dest, kind) for path, outputs in OUTPUTS.items() for dest, kind in outputs.items()]
WRITES = re.compile(r"^(also )?(write|output|where to keep|folder caching|manifest to write|shard path)|to write\b",
                    re.IGNORECASE)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _argv(path: tuple[str, ...], given: dict[str, str], fill: Path) -> list[str]:
    """The command with ``given`` flags and every other required option filled in (``fill`` for paths)."""
    argv = list(path)
    for action in LEAVES[path]._actions:
        required = action.required or "required unless in --config" in (action.help or "")
        if not action.option_strings or action.dest in given or not required:
            continue
        if action.dest in OUTPUTS[path]:
            value = str(fill.parent / f"other-{action.dest}")
        elif action.choices:
            value = next(iter(action.choices))
        elif action.type not in (None, str, Path):  # a number (int, float, positive_int, cosine)
            value = "1"
        else:
            value = str(fill)
        argv += [action.option_strings[0], value]
    for dest, value in given.items():
        argv += [_flag(dest), value]
    return argv


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))}


def test_every_command_and_every_output_flag_is_declared():
    assert set(OUTPUTS) == set(LEAVES), "a command without an OUTPUTS entry (goalclip/cli/outputs.py)"
    for path, parser in LEAVES.items():
        dests = {a.dest: a for a in parser._actions if a.option_strings}
        assert set(OUTPUTS[path]) <= set(dests), f"{path}: OUTPUTS names flags the command lacks"
        for dest, action in dests.items():
            looks_like_output = dest == "out" or dest.startswith("out_") or dest.endswith(("_out", "_dir")) \
                or bool(WRITES.search(action.help or ""))
            if looks_like_output and action.nargs != 0:
                assert dest in OUTPUTS[path], f"goalclip {' '.join(path)} {_flag(dest)} writes but is not checked"


def _required_inputs(path: tuple[str, ...]) -> list[str]:
    return [a.dest for a in LEAVES[path]._actions if a.option_strings and a.dest not in OUTPUTS[path]
            and (a.required or "required unless in --config" in (a.help or ""))]


# a command without a required input (demo, serve) is started by these arguments: its outputs are
# covered by the unwritable-output test
WITH_INPUTS = [case for case in CASES if _required_inputs(case[0])]


@pytest.mark.parametrize(("path", "dest", "kind"), WITH_INPUTS,
                         ids=[f"{' '.join(p)} {_flag(d)}" for p, d, _ in WITH_INPUTS])
def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, capsys, path, dest, kind):
    given = tmp_path / ("inputs" if kind == "folder" else "input.jsonl")
    given.mkdir() if kind == "folder" else given.write_text('{"id": "a", "image": "a.png"}\n')
    before = _tree(tmp_path)
    assert main(_argv(path, {dest: str(given)}, given)) == 1
    err = capsys.readouterr().err
    assert f"{_flag(dest)} {given} is the same file as" in err and "Traceback" not in err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(("path", "dest", "kind"), CASES, ids=[f"{' '.join(p)} {_flag(d)}" for p, d, _ in CASES])
def test_an_unwritable_output_is_refused_before_any_work(tmp_path, capsys, path, dest, kind):
    source = tmp_path / "input.jsonl"
    source.write_text('{"id": "a", "image": "a.png"}\n')
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be\n")
    before = _tree(tmp_path)
    assert main(_argv(path, {dest: str(blocker / "sub" / "out")}, source)) == 1
    err = capsys.readouterr().err
    assert f"{_flag(dest)} {blocker / 'sub' / 'out'} cannot be written" in err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("path", [p for p, outs in OUTPUTS.items() if list(outs.values()).count("file") > 1])
def test_two_outputs_of_one_command_cannot_be_the_same_file(tmp_path, capsys, path):
    source = tmp_path / "input.jsonl"
    source.write_text('{"id": "a", "image": "a.png"}\n')
    first, second = [d for d, k in OUTPUTS[path].items() if k == "file"][:2]
    out = tmp_path / "same.jsonl"
    assert main(_argv(path, {first: str(out), second: str(out)}, source)) == 1
    assert f"{_flag(second)} {out} is the same file as {_flag(first)}" in capsys.readouterr().err
    assert not out.exists()


def _urban1k(root: Path) -> Path:
    for n, text in ((1, "A busy street."), (2, "A bridge over a river.")):
        (root / "Urban1k" / "image").mkdir(parents=True, exist_ok=True)
        (root / "Urban1k" / "caption").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / "Urban1k" / "image" / f"{n}.jpg")
        (root / "Urban1k" / "caption" / f"{n}.txt").write_text(text, encoding="utf-8")
    return root


def test_data_convert_onto_an_existing_manifest_needs_overwrite(tmp_path, capsys):
    root = _urban1k(tmp_path / "data")
    out = tmp_path / "urban.jsonl"
    out.write_text('{"id": "kept", "image": "x.png", "caption": "an earlier manifest"}\n')
    argv = ["data", "convert", "--format", "urban1k", "--root", str(root), "--split", "test", "--out", str(out)]
    assert main(argv) == 1
    assert f"--out {out} exists; pass --overwrite" in capsys.readouterr().err
    assert "earlier manifest" in out.read_text()
    assert main([*argv, "--overwrite"]) == 0
    assert "busy street" in out.read_text()


def test_train_checks_an_out_given_in_its_config_file(tmp_path, capsys, tiny_world):
    config = tmp_path / "run.json"
    config.write_text(f'{{"out": "{tiny_world.model}"}}')
    before = _tree(tiny_world.model)
    assert main(["train", "--config", str(config), "--model", str(tiny_world.model),
                 "--data", str(tiny_world.mined)]) == 1
    assert "is the same file as --model" in capsys.readouterr().err
    assert _tree(tiny_world.model) == before


def test_the_checks_see_every_option_that_takes_a_value():
    args = build_parser().parse_args(["data", "split", "--data", "d.jsonl", "--out-test", "t.jsonl"])
    assert isinstance(args, argparse.Namespace)
    assert {"data", "exclude", "ids_from"} <= set(args.input_options)
    assert not {"out_test", "out_rest"} & set(args.input_options)


@pytest.mark.parametrize("argv", [
    ["eval", "--task", "classify", "--model", "no-such-org/no-such-model"],
    ["data", "score", "--model", "no-such-org/no-such-model", "--min-score", "0"],
], ids=["eval classify", "data score --min-score"])
def test_an_unwritable_out_stops_commands_before_their_model_loads(tmp_path, capsys, argv):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be\n")
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": "a", "image": "a.png", "caption": "A photo."}\n')
    assert main([*argv, "--data", str(data), "--out", str(blocker / "out.json")]) == 1
    err = capsys.readouterr().err
    assert f"--out {blocker / 'out.json'} cannot be written" in err and "no-such-model" not in err
