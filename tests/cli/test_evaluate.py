"""``goalclip eval``: the flags declared on ``EvalConfig`` default to the library's values and reach it; rows of
different model kinds (CLIP, BLIP-2) in one table."""

from __future__ import annotations

import json

from goalclip.cli import build_parser, main
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


def test_clip_and_blip2_rows_in_one_table(tiny_world, tiny_blip2, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(tiny_world.model), "--model", str(tiny_blip2), "--data",
                 str(tiny_world.captions), "--joint", str(tiny_world.mined), "--ks", "1", "5", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in printed[2:4]] == ["| model", "| blip2"]
    rows = json.loads(out.read_text())["models"]
    assert [row["model"] for row in rows] == [str(tiny_world.model), str(tiny_blip2)]
    assert all(set(row["metrics"]) == {"i2t@1", "i2t@5", "t2i@1", "t2i@5", "i2t_map@10", "t2i_map@10"}
               for row in rows)
    blip2 = rows[1]
    assert blip2["text_len"] == 16 and blip2["truncated_texts"]["retrieval"] == 8  # every caption is longer
    assert "text context: model 16 (" in printed[-1] and "blip2 16 (16 cut) tokens" in printed[-1]
