"""ShareGPT4V's caption file: test1k is the file's leading records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goalclip.core.manifest import ManifestError
from goalclip.datasets.sharegpt4v import convert_sharegpt4v
from tests.datasets.conftest import roundtrip, sharegpt4v_layout, write_json


def test_sharegpt4v_test1k_is_the_leading_records(tmp_path: Path) -> None:
    root = sharegpt4v_layout(tmp_path / "data")
    test = convert_sharegpt4v(root, "test1k", test_size=2)
    train = convert_sharegpt4v(root, "train", test_size=2)
    assert [r["id"] for r in test] == ["000000000009", "sa_1"]
    assert [r["id"] for r in train] == ["0001", "sa_2", "000000000025"]
    assert test[0]["caption"] == "Caption 0. It has a second line."
    assert len(convert_sharegpt4v(root, "test1k")) == 5  # default 1,000 > file length
    assert [r["id"] for r in roundtrip(test, tmp_path / "s.jsonl")] == ["000000000009", "sa_1"]


def test_sharegpt4v_record_without_gpt_turn(tmp_path: Path) -> None:
    root = sharegpt4v_layout(tmp_path / "data")
    path = root / "share-captioner_coco_lcs_sam_1246k_1107.json"
    data = json.loads(path.read_text())
    data[1]["conversations"] = data[1]["conversations"][:1]
    write_json(path, data)
    with pytest.raises(ManifestError, match=r"\[1\]: field 'conversations' has no turn with \"from\": \"gpt\""):
        convert_sharegpt4v(root, "test1k")
