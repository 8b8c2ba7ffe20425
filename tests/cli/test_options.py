"""Flags come from the config declarations: the CLI's defaults are the library's, and every old flag still parses."""

from __future__ import annotations

import dataclasses

import pytest

from goalclip.cli import build_parser
from goalclip.core.options import values_from_args
from goalclip.mining.config import MineConfig
from goalclip.training.config import LossWeights, TrainConfig


def test_mine_flags_default_to_the_library_defaults() -> None:
    args = build_parser().parse_args(["mine", "--model", "m", "--data", "d", "--out", "o"])
    assert MineConfig(**values_from_args(args, MineConfig)) == MineConfig(model="m", data="d", out="o")
    assert MineConfig(model="m", data="d", out="o").device == "auto"  # the CLI's default, also in the library


def test_every_mine_flag_reaches_its_config_field() -> None:
    args = build_parser().parse_args([
        "mine", "--model", "m", "--base", "b", "--data", "d", "--out", "o", "--regions", "grid", "--boxes", "x",
        "--detector", "det", "--sam", "sam", "--threshold", "0.5", "--max-boxes", "3", "--margin", "0.1",
        "--top-k", "2", "--batch-size", "4", "--crop-batch-size", "8", "--num-workers", "0", "--device", "cpu",
        "--max-images", "7", "--resume", "--no-progress", "--max-image-pixels", "100"])
    config = MineConfig(**values_from_args(args, MineConfig))
    assert config == MineConfig(model="m", data="d", out="o", regions="grid", base="b", boxes="x", detector="det",
                                sam="sam", threshold=0.5, max_boxes=3, margin=0.1, top_k=2, batch_size=4,
                                crop_batch_size=8, num_workers=0, device="cpu", resume=True, max_images=7,
                                progress=False, max_image_pixels=100)


def test_train_flags_pass_only_what_was_typed_and_keep_their_names() -> None:
    parser = build_parser()
    bare = parser.parse_args(["train"])
    assert values_from_args(bare, TrainConfig) == {}  # the defaults are TrainConfig's (and a --config file's)
    args = parser.parse_args(["train", "--w-global", "2", "--w-tsl", "0.5", "--no-epoch-checkpoints",
                              "--no-progress", "--no-decay-all", "--method", "local", "--grad-cache-chunk", "4"])
    assert values_from_args(args, TrainConfig) == {"checkpoint_epochs": False, "progress": False,
                                                   "decay_all": False, "method": "local", "grad_cache_chunk": 4}
    assert values_from_args(args, LossWeights, dest_prefix="weights.") == {"global_": 2.0, "tsl": 0.5}


@pytest.mark.parametrize("config", [TrainConfig, MineConfig])
def test_every_option_field_has_a_flag_and_every_default_is_shown(config, capsys) -> None:
    command = "train" if config is TrainConfig else "mine"
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    # argparse wraps after a hyphen too ("drop-\nsentence"): join those words again
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    for field in dataclasses.fields(config):
        if field.name == "weights":
            continue
        flag = {"progress": "--no-progress", "checkpoint_epochs": "--no-epoch-checkpoints"}.get(
            field.name, "--" + field.name.replace("_", "-"))
        assert flag in text
        if field.default not in (dataclasses.MISSING, None, True, False) and field.name not in ("checkpoint_every",):
            assert f"(default: {field.default})" in text, field.name


@pytest.mark.parametrize("command", ["train", "mine", "caption"])
def test_a_switch_shows_no_default(command, capsys) -> None:
    """An on/off flag (--no-progress, --resume) says what it does; "(default: True)" beside --no-progress read
    as if the flag were on by default."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: True)" not in text and "(default: False)" not in text
