"""The GOAL repo's JSON files: test sets, the joint test and mining output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goalclip.core.manifest import ManifestError, SkipReport
from goalclip.datasets.convert import convert
from goalclip.datasets.goal_json import convert_goal_json
from tests.datasets.conftest import goal_layout, write_image, write_json


def test_goal_test_json_with_image_root(tmp_path: Path) -> None:
    root, photos = goal_layout(tmp_path / "GOAL")
    records = convert_goal_json(root, "DCI_test", image_root=photos)
    assert [r["id"] for r in records] == ["sa_1", "sa_2"]
    assert Path(records[0]["image"]) == (photos / "sa_1.jpg").resolve()
    tally = SkipReport()
    assert convert_goal_json(root, "datasets/DCI_test.json", tally=tally) == []  # authors' paths do not exist here
    assert tally.skipped == {"missing image": 2}


def test_goal_joint_json_keeps_boxed_whole_and_crop_file_pairs(tmp_path: Path) -> None:
    root, photos = goal_layout(tmp_path / "GOAL")
    # the authors' crop files, where their relative paths point (next to the GOAL folder)
    crops = tmp_path / "pipline" / "segment_with_background_DCI_test_set_max_0.01"
    crop = write_image(crops / "sa_1.jpg_results" / "sa_1_max_4.png")
    summary = convert("goal-json", root, "DCI_test_joint_sim_max_11", tmp_path / "out" / "joint.jsonl",
                      image_root=photos)
    from goalclip.evaluation.items import joint_items, read_eval_records

    records = {r["id"]: r for _, r in read_eval_records(str(tmp_path / "out" / "joint.jsonl"))}
    lines = [json.loads(line) for line in (tmp_path / "out" / "joint.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["sa_1", "sa_2", "sa_3"]
    # a crop without bbox_coordinates: the crop FILE is the local item (no box is guessed), stored
    # relative to the manifest like the image, and kept out of the (box-only) training candidates
    assert lines[0]["local"] == {"sentence": "Cars park", "image": "../pipline/segment_with_background_DCI_test_"
                                 "set_max_0.01/sa_1.jpg_results/sa_1_max_4.png", "score": 0.275, "source": "sam"}
    assert "candidates" not in lines[0]
    assert (tmp_path / "out" / lines[0]["local"]["image"]).resolve() == crop.resolve()
    assert records["sa_2"]["local"] == {
        "sentence": "A beach",
        "box": [0.0, 0.0, 20.0, 10.0],
        "score": 0.21,
        "source": "whole",
    }
    assert records["sa_3"]["local"] == {
        "sentence": "A lamp glows",
        "box": [2.0, 1.0, 9.0, 7.0],
        "score": 0.3,
        "source": "external",
    }
    assert records["sa_3"]["candidates"] == [records["sa_3"]["local"]]
    assert summary.notes == {}
    assert summary.skipped == {"local pair without a whole-image entry": 1}
    assert summary.examples["local pair without a whole-image entry"] == ["sa_9"]
    # the eval harness reads the crop file as sa_1's local image item
    items = joint_items(str(tmp_path / "out" / "joint.jsonl"))
    assert Path(items.image_paths[1]).resolve() == crop.resolve() and items.image_boxes[1] is None
    assert items.whole_pairs == 1


def test_goal_joint_json_crop_root_and_missing_crop_files(tmp_path: Path) -> None:
    root, photos = goal_layout(tmp_path / "GOAL")
    tally = SkipReport()
    records = convert_goal_json(root, "DCI_test_joint_sim_max_11", image_root=photos, tally=tally)
    assert "local" not in records[0] and tally.notes == {"local crop file missing": 1}
    crops = tmp_path / "crops"
    crop = write_image(crops / "sa_1.jpg_results" / "sa_1_max_4.png")
    records = convert_goal_json(root, "DCI_test_joint_sim_max_11", image_root=photos, crop_root=crops)
    assert records[0]["local"]["image"] == str(crop)
    unchecked = convert_goal_json(root, "DCI_test_joint_sim_max_11", image_root=photos, check_images=False)
    assert unchecked[0]["local"]["image"].endswith("sa_1.jpg_results/sa_1_max_4.png")


def test_goal_training_format_gives_mined_records(tmp_path: Path) -> None:
    root, photos = goal_layout(tmp_path / "GOAL")
    (record,) = convert_goal_json(root, "goal_train", image_root=photos)
    assert record["caption"] == "A street. Cars park. A shop is open."
    assert record["local"]["sentence"] == "A shop is open"  # best score first
    assert [c["sentence"] for c in record["candidates"]] == ["A shop is open", "Cars park"]
    assert record["local"]["box"] == [4.0, 2.0, 8.0, 9.0]


def test_goal_pair_with_a_nan_box_is_counted_not_written(tmp_path: Path) -> None:
    root, photos = goal_layout(tmp_path / "GOAL")
    path = root / "datasets" / "goal_train.json"
    data = json.loads(path.read_text())
    data[0]["segment"][1]["bbox_coordinates"]["x2"] = float("nan")  # json writes NaN, as numpy-based tools do
    path.write_text(json.dumps(data))
    tally = SkipReport()
    (record,) = convert_goal_json(root, "goal_train", image_root=photos, tally=tally)
    assert [c["sentence"] for c in record["candidates"]] == ["Cars park"]
    assert tally.notes == {"local pair with a non-finite box": 1}


def test_goal_json_errors(tmp_path: Path) -> None:
    root, _ = goal_layout(tmp_path / "GOAL")
    with pytest.raises(ManifestError, match="no GOAL JSON file 'nope' found"):
        convert_goal_json(root, "nope")
    write_json(root / "datasets" / "bad.json", [{"filename": "a.jpg"}])
    with pytest.raises(ManifestError, match=r"bad\.json: \[0\]: field 'caption' is missing"):
        convert_goal_json(root, "bad")
    write_json(
        root / "datasets" / "bad.json",
        [{"filename": "r/a.jpg_results/c.png", "caption": "x", "similarity_score": 1, "bbox_coordinates": {"x1": 0}}],
    )
    with pytest.raises(ManifestError, match="field 'bbox_coordinates': field 'y1' is missing"):
        convert_goal_json(root, "bad")
