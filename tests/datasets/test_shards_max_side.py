"""``goalclip data shard --max-side N``: images stored at a working resolution, boxes scaled with them."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from goalclip.cli import main
from goalclip.core.images import load_rgb
from goalclip.core.records import read_manifest


def test_max_side_shrinks_large_images_and_scales_their_boxes(tmp_path, capsys) -> None:
    Image.new("RGB", (400, 100), (200, 30, 30)).save(tmp_path / "wide.jpg")
    Image.new("RGB", (50, 40), (30, 200, 30)).save(tmp_path / "small.png")
    local = {"sentence": "A red band.", "box": [40.0, 10.0, 200.0, 90.0], "score": 0.3, "source": "grid"}
    records = [
        {"id": "wide", "image": "wide.jpg", "caption": "A red band.", "local": local, "candidates": [local]},
        {"id": "small", "image": "small.png", "caption": "Green."},
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "shards" / "train"
    assert main(["data", "shard", "--data", str(data), "--out", str(out), "--max-side", "100", "--no-progress"]) == 0
    assert "1 resized to at most 100 px" in capsys.readouterr().out
    wide, small = read_manifest(f"{out}-000000.tar")
    assert load_rgb(wide["image"]).size == (100, 25)
    assert wide["local"]["box"] == pytest.approx([10.0, 2.5, 50.0, 22.5])
    assert wide["candidates"][0]["box"] == wide["local"]["box"] and wide["local"]["sentence"] == "A red band."
    assert load_rgb(small["image"]).size == (50, 40)  # already small enough: its bytes are copied


def test_max_side_must_be_positive(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["data", "shard", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "s"), "--max-side", "0"])
    assert usage.value.code == 2 and "--max-side" in capsys.readouterr().err
