"""``goalclip caption``'s flags come from CaptionConfig's declarations: one default, help and choice list each."""

from __future__ import annotations

import dataclasses

import pytest

from goalclip.caption.config import CaptionConfig
from goalclip.cli import build_parser
from goalclip.core.options import values_from_args


def test_caption_flags_default_to_the_library_defaults() -> None:
    args = build_parser().parse_args(["caption", "--data", "d", "--out", "o"])
    assert CaptionConfig(**values_from_args(args, CaptionConfig)) == CaptionConfig(data="d", out="o")


def test_every_caption_flag_reaches_its_config_field() -> None:
    args = build_parser().parse_args([
        "caption", "--data", "d", "--out", "o", "--model", "m", "--prompt-file", "p.txt", "--backend", "vllm",
        "--max-new-tokens", "64", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--precision",
        "fp16", "--max-images", "5", "--resume", "--no-progress"])
    assert CaptionConfig(**values_from_args(args, CaptionConfig)) == CaptionConfig(
        data="d", out="o", model="m", prompt_file="p.txt", backend="vllm", max_new_tokens=64, batch_size=2,
        num_workers=0, device="cpu", precision="fp16", max_images=5, resume=True, progress=False)


def test_caption_help_shows_every_field_and_its_default(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["caption", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(CaptionConfig):
        assert ("--no-progress" if field.name == "progress" else "--" + field.name.replace("_", "-")) in text
        if field.default not in (dataclasses.MISSING, None, True, False):
            assert f"(default: {field.default})" in text, field.name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["caption", "--data", "d", "--out", "o", "--precision", "fp8"])
