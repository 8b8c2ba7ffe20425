"""``goalclip data convert`` on the command line: its summary line, its errors and the flags each format takes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from goalclip.caption.config import ScoreConfig
from goalclip.cli import build_parser, main
from goalclip.core.options import values_from_args
from goalclip.core.records import read_manifest
from tests.datasets.conftest import coco_layout


def _convert(root: Path, out: Path, *flags: str) -> list[str]:
    return ["data", "convert", "--format", "coco", "--root", str(root), "--split", "test", "--out", str(out), *flags]


def test_data_convert_refuses_an_empty_manifest_then_writes_one(tmp_path: Path, caplog, capsys) -> None:
    root = coco_layout(tmp_path / "coco")
    (root / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    out = tmp_path / "c.jsonl"
    with caplog.at_level(logging.WARNING):
        assert main(_convert(root, out, "--max-captions", "0")) == 1
    err = capsys.readouterr().err  # nothing would be written: an error naming a missing image, not an empty file
    assert "no records to write" in err and str(root / "val2014" / "COCO_val2014_000000000001.jpg") in err
    assert "COCO_val2014_000000000001" in caplog.text and not out.exists()
    assert main(_convert(root, out, "--no-check-images")) == 0
    assert capsys.readouterr().out.strip() == f"converted 1 records (0 skipped) -> {out.resolve()}"
    assert len(read_manifest(out)[0]["captions"]) == 5


def test_data_convert_flags_of_other_formats_are_errors(tmp_path: Path, capsys) -> None:
    root = coco_layout(tmp_path / "coco")
    assert main(_convert(root, tmp_path / "c.jsonl", "--caption", "short")) == 1
    assert "--caption do(es) not apply to --format coco" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "convert", "--format", "laion", "--root", "r", "--split", "s", "--out", "o"])


def test_data_score_flags_default_to_the_library_defaults() -> None:
    args = build_parser().parse_args(["data", "score", "--model", "m", "--data", "d"])
    assert ScoreConfig(**values_from_args(args, ScoreConfig)) == ScoreConfig(model="m", data="d")
    assert ScoreConfig(model="m", data="d").device == "auto"  # the CLI's default, also the library's


def test_every_data_score_flag_reaches_its_config_field() -> None:
    args = build_parser().parse_args([
        "data", "score", "--model", "m", "--base", "b", "--data", "d", "--sample", "0", "--seed", "3",
        "--scores-out", "s.jsonl", "--min-score", "0.2", "--out", "o.jsonl", "--max-text-len", "248",
        "--keep-positions", "8", "--batch-size", "4", "--num-workers", "1", "--device", "cpu", "--no-progress"])
    assert ScoreConfig(**values_from_args(args, ScoreConfig)) == ScoreConfig(
        model="m", base="b", data="d", sample=0, seed=3, scores_out="s.jsonl", min_score=0.2, out="o.jsonl",
        max_text_len=248, keep_positions=8, batch_size=4, num_workers=1, device="cpu", progress=False)
    with pytest.raises(SystemExit):  # a cosine is in [-1, 1]: anything else is a usage error
        build_parser().parse_args(["data", "score", "--model", "m", "--data", "d", "--min-score", "2"])
