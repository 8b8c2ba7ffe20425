"""``goalclip eval``'s flags: those declared on ``EvalConfig`` default to the library's values and reach it."""

from __future__ import annotations

from goalclip.cli import build_parser
from goalclip.core.options import values_from_args
from goalclip.evaluation.config import EvalConfig


def test_eval_flags_default_to_the_library_defaults_except_device_and_precision() -> None:
    args = build_parser().parse_args(["eval", "--model", "m", "--data", "d"])
    given = {**values_from_args(args, EvalConfig), "device": "cpu", "precision": "fp32"}
    assert EvalConfig(**given) == EvalConfig(models=["m"], data="d")
    assert (args.device, args.precision) == ("auto", "auto")  # resolved per machine by the command


def test_every_eval_flag_reaches_its_config_field() -> None:
    args = build_parser().parse_args([
        "eval", "--model", "a", "--model", "b", "--base", "x", "--data", "d", "--joint", "j", "--no-joint-keep-whole",
        "--ks", "1", "3", "--out", "o.json", "--max-text-len", "9", "--context", "12", "--keep-positions", "2",
        "--batch-size", "4", "--num-workers", "1", "--device", "cpu", "--precision", "bf16", "--cache-dir", "c",
        "--no-progress", "--max-image-pixels", "100"])
    assert EvalConfig(**values_from_args(args, EvalConfig)) == EvalConfig(
        models=["a", "b"], data="d", base="x", joint="j", ks=[1, 3], batch_size=4, num_workers=1, device="cpu",
        precision="bf16", cache_dir="c", out="o.json", progress=False, max_text_len=9, max_image_pixels=100,
        context=12, keep_positions=2, joint_keep_whole=False)
