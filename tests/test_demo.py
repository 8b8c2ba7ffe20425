"""The demo's own measurement: mined pairs scored against the synthetic world's truth."""

import json

import pytest

from goalclip.demo.pipeline import iou, mining_accuracy


def test_iou_hand_cases():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_mining_accuracy_counts_tight_and_containing_regions(tmp_path):
    objects = [{"sentence": "A red circle.", "box": [8, 8, 24, 24]}, {"sentence": "A blue square.", "box": [40, 40, 56, 56]}]
    truth = [{"id": f"i{k}", "image": "x.png", "caption": "A red circle. A blue square. Grey.", "objects": objects}
             for k in range(4)]
    locals_ = [
        {"sentence": "A red circle.", "box": [8, 8, 24, 24]},     # tight: hit, contains
        {"sentence": "A blue square.", "box": [32, 32, 64, 64]},  # quadrant holding the object: contains only
        {"sentence": "A red circle.", "box": [32, 32, 64, 64]},   # wrong place: neither
        {"sentence": "Grey.", "box": [0, 0, 32, 32]},             # scene sentence: neither
    ]
    mined = [{**t, "local": {**loc, "score": 0.5, "source": "grid"}} for t, loc in zip(truth, locals_)]
    for name, records in (("truth.jsonl", truth), ("mined.jsonl", mined)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    result = mining_accuracy(tmp_path / "truth.jsonl", tmp_path / "mined.jsonl")
    assert (result["pairs"], result["box_matches_sentence"], result["region_contains_object"]) == (4, 1, 2)
    assert result["scene_sentence_chosen"] == 1
    assert result["rate"] == 0.25 and result["contains_rate"] == 0.5
