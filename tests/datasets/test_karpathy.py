"""COCO and Flickr30k through Karpathy's split files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goalclip.core.manifest import ManifestError
from goalclip.core.records import read_manifest
from goalclip.datasets.convert import convert
from goalclip.datasets.karpathy import convert_coco, convert_flickr30k
from tests.datasets.conftest import coco_layout, flickr_layout, roundtrip, write_json


def test_coco_karpathy_splits_and_caption_counts(tmp_path: Path) -> None:
    root = coco_layout(tmp_path / "coco")
    test = roundtrip(convert_coco(root, "test"), tmp_path / "coco_test.jsonl")
    assert [r["id"] for r in test] == ["COCO_val2014_000000000001"]
    assert test[0]["captions"] == ["a", "b", "c", "d", "e"]
    assert len(convert_coco(root, "test", max_captions=0)[0]["captions"]) == 6
    assert Path(test[0]["image"]).parent.name == "val2014"
    assert [r["id"] for r in convert_coco(root, "train")] == [
        "COCO_train2014_000000000003",
        "COCO_val2014_000000000004",
    ]
    assert [r["id"] for r in convert_coco(root, "train", restval_into_train=False)] == ["COCO_train2014_000000000003"]
    assert [r["id"] for r in convert_coco(root, "val")] == ["COCO_val2014_000000000002"]


def test_coco_malformed_sentence(tmp_path: Path) -> None:
    root = coco_layout(tmp_path / "coco")
    data = json.loads((root / "dataset_coco.json").read_text())
    del data["images"][0]["sentences"][2]["raw"]
    write_json(root / "dataset_coco.json", data)
    with pytest.raises(ManifestError, match=r"dataset_coco\.json: images\[0\]\.sentences\[2\]: field 'raw' is missing"):
        convert_coco(root, "test")
    (root / "dataset_coco.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match="dataset_coco.json: malformed JSON"):
        convert_coco(root, "test")


def test_flickr30k_drops_empty_caption_and_prefixes_ids(tmp_path: Path) -> None:
    root = flickr_layout(tmp_path / "flickr")
    summary = convert("flickr30k", root, "test", tmp_path / "f.jsonl")
    records = read_manifest(tmp_path / "f.jsonl", check_images=True)
    assert [r["id"] for r in records] == ["flickr30k_1000092795", "flickr30k_10002456"]
    assert records[0]["captions"] == ["s1", "s3", "s4", "s5"]
    assert [len(r["captions"]) for r in records] == [4, 5]
    assert summary.notes == {"empty caption dropped": 1} and summary.skipped == {}
    assert [r["id"] for r in convert_flickr30k(root, "train")] == ["flickr30k_1001465944"]
