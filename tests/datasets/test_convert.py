"""convert: the adapter registry, its option checks, box outputs and byte-identical reruns."""

from __future__ import annotations

from pathlib import Path

import pytest

from goalclip.datasets.convert import ADAPTERS, convert
from tests.datasets.conftest import coco_layout, dci_layout, docci_layout


def test_options_that_do_not_apply_are_errors(tmp_path: Path) -> None:
    root = coco_layout(tmp_path / "coco")
    with pytest.raises(ValueError, match="option\\(s\\) test_size do not apply to format 'coco'"):
        convert("coco", root, "test", tmp_path / "c.jsonl", test_size=3)
    with pytest.raises(ValueError, match="unknown format 'laion'"):
        convert("laion", root, "test", tmp_path / "c.jsonl")
    with pytest.raises(ValueError, match="boxes_out is only available for formats dci, sa1b"):
        convert("docci", docci_layout(tmp_path / "docci"), "test", tmp_path / "x.jsonl", boxes_out=tmp_path / "b.jsonl")
    assert set(ADAPTERS) == {"docci", "dci", "urban1k", "coco", "flickr30k", "sharegpt4v", "goal-json", "sa1b"}


def test_outputs_are_deterministic(tmp_path: Path) -> None:
    root = dci_layout(tmp_path / "dci")
    convert("dci", root, "all", tmp_path / "a.jsonl", boxes_out=tmp_path / "a_boxes.jsonl", check_images=False)
    convert("dci", root, "all", tmp_path / "b.jsonl", boxes_out=tmp_path / "b_boxes.jsonl", check_images=False)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a_boxes.jsonl").read_bytes() == (tmp_path / "b_boxes.jsonl").read_bytes()
