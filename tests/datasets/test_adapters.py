"""Dataset adapters: tiny fixtures in each dataset's real on-disk layout, converted and read back."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from goalclip.datasets.adapters import (
    ADAPTERS,
    add_convert_arguments,
    convert,
    convert_coco,
    convert_dci,
    convert_docci,
    convert_flickr30k,
    convert_goal_json,
    convert_sharegpt4v,
    convert_urban1k,
    dci_boxes,
    run_convert,
)
from goalclip.core.manifest import ManifestError, SkipReport, read_boxes
from goalclip.core.records import read_manifest

# ----------------------------------------------------------------------------- fixture writers


def _image(path: Path, size: tuple[int, int] = (12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 40, 200)).save(path)
    return path


def _json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _docci(root: Path) -> Path:
    """DOCCI: docci_descriptions.jsonlines + images/; one missing photo, one empty description,
    and an aspect-ratio (aar_) line that the standard test split must not pick up."""
    lines = [
        {
            "example_id": "train_00000",
            "split": "train",
            "image_file": "train_00000.jpg",
            "description": "  A red mug on a desk. It is empty.  ",
        },
        {"example_id": "train_00001", "split": "train", "image_file": "train_00001.jpg", "description": "Two cats."},
        {"example_id": "test_00000", "split": "test", "image_file": "test_00000.jpg", "description": "A blue door."},
        {"example_id": "test_00001", "split": "test", "image_file": "test_00001.jpg", "description": "Not on disk."},
        {"example_id": "test_00002", "split": "test", "image_file": "test_00002.jpg", "description": "   "},
        {
            "example_id": "aar_test_00000",
            "split": "test",
            "image_file": "aar_test_00000.jpg",
            "description": "Variant.",
        },
        {
            "example_id": "qual_dev_00000",
            "split": "qual_dev",
            "image_file": "qual_dev_00000.jpg",
            "description": "A dog.",
        },
    ]
    for line in lines:
        if line["example_id"] != "test_00001":
            _image(root / "images" / line["image_file"])
    (root / "docci_descriptions.jsonlines").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return root


def _dci_annotation(image: str, short: str, extra: str, masks: dict, summary: str | None = None) -> dict:
    obj = {"image": image, "short_caption": short, "extra_caption": extra, "mask_data": masks, "mask_keys": list(masks)}
    if summary is not None:
        obj["summaries"] = {"base": [summary, "another summary"]}
    return obj


def _mask(x1: int, y1: int, x2: int, y2: int, quality: int = 0) -> dict:
    return {
        "bounds": {"topLeft": {"x": x1, "y": y1}, "bottomRight": {"x": x2, "y": y2}},
        "mask_quality": quality,
        "label": "thing",
        "caption": "a thing",
        "parent": -1,
        "requirements": [],
    }


def _dci(root: Path) -> Path:
    """DCI: densely_captioned_images/{photos, annotations, complete, splits.json}."""
    base = root / "densely_captioned_images"
    anns = {
        "sa_1.json": _dci_annotation(
            "sa_1.jpg",
            "A street",
            "Cars park on the left. A shop is open.",
            {
                "0": _mask(0, 0, 6, 4),
                "2": _mask(1, 1, 5, 7),
                "10": _mask(2, 2, 2, 6),
                "3": _mask(0, 0, 6, 4),
                "4": _mask(3, 3, 9, 9, quality=2),
            },
            summary="A street with cars.",
        ),
        "sa_2.json": _dci_annotation(
            "sa_2.jpg", "A beach", "Waves roll in.", {"0": _mask(0, 0, 12, 8)}, summary="A beach."
        ),
        "sa_3.json": _dci_annotation("sa_3.jpg", "A room", "A lamp glows.", {"0": _mask(1, 1, 3, 3)}),
    }
    for name, obj in anns.items():
        _json(base / "annotations" / name, {k: v for k, v in obj.items() if k != "summaries"})
        _json(base / "complete" / name, obj)
    _image(base / "photos" / "sa_1.jpg")
    _image(base / "photos" / "sa_2.jpg")
    _json(base / "splits.json", {"train": ["sa_1.json"], "valid": [], "test": ["sa_2.json", "sa_3.json"]})
    return root


def _urban1k(root: Path) -> Path:
    """Urban1k/image/<n>.jpg and Urban1k/caption/<n>.txt; caption 11 has no photo, photo 12 no caption."""
    base = root / "Urban1k"
    for n in (1, 2, 10, 12):
        _image(base / "image" / f"{n}.jpg")
    captions = {
        1: "A busy street.\n",
        2: "A bridge over a river.\nBoats pass below.\n",
        10: " A square. ",
        11: "No photo.",
    }
    for n, text in captions.items():
        (base / "caption").mkdir(parents=True, exist_ok=True)
        (base / "caption" / f"{n}.txt").write_text(text, encoding="utf-8")
    return root


def _sentences(*texts: str) -> list[dict]:
    return [{"raw": t, "tokens": t.lower().split(), "sentid": i} for i, t in enumerate(texts)]


def _coco(root: Path) -> Path:
    images = [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000001.jpg",
            "imgid": 0,
            "cocoid": 1,
            "split": "test",
            "sentences": _sentences("a", "b", "c", "d", "e", "f"),
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000002.jpg",
            "imgid": 1,
            "cocoid": 2,
            "split": "val",
            "sentences": _sentences("v1", "v2", "v3", "v4", "v5"),
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000003.jpg",
            "imgid": 2,
            "cocoid": 3,
            "split": "train",
            "sentences": _sentences("t1", "t2", "t3", "t4", "t5"),
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000004.jpg",
            "imgid": 3,
            "cocoid": 4,
            "split": "restval",
            "sentences": _sentences("r1", "r2", "r3", "r4", "r5"),
        },
    ]
    for item in images:
        _image(root / item["filepath"] / item["filename"])
    _json(root / "dataset_coco.json", {"images": images, "dataset": "coco"})
    return root


def _flickr(root: Path) -> Path:
    images = [
        {
            "filename": "1000092795.jpg",
            "imgid": 0,
            "split": "test",
            "sentences": _sentences("s1", "  ", "s3", "s4", "s5"),
        },
        {
            "filename": "10002456.jpg",
            "imgid": 1,
            "split": "test",
            "sentences": _sentences("u1", "u2", "u3", "u4", "u5"),
        },
        {
            "filename": "1001465944.jpg",
            "imgid": 2,
            "split": "train",
            "sentences": _sentences("w1", "w2", "w3", "w4", "w5"),
        },
    ]
    for item in images:
        _image(root / "flickr30k-images" / item["filename"])
    _json(root / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    return root


def _sharegpt4v(root: Path) -> Path:
    records = []
    for i, source in enumerate(
        [
            "coco/train2017/000000000009.jpg",
            "sam/images/sa_1.jpg",
            "llava/llava_pretrain/images/00000/0001.jpg",
            "sam/images/sa_2.jpg",
            "coco/train2017/000000000025.jpg",
        ]
    ):
        records.append(
            {
                "id": Path(source).stem,
                "image": source,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat do you see happening in this image?"},
                    {"from": "gpt", "value": f"Caption {i}.\nIt has a second line."},
                ],
            }
        )
        _image(root / source)
    _json(root / "share-captioner_coco_lcs_sam_1246k_1107.json", records)
    return root


def _goal(root: Path) -> tuple[Path, Path]:
    """GOAL repo: datasets/*.json with the authors' relative paths; photos under photos/."""
    photos = root / "photos"
    for name in ("sa_1.jpg", "sa_2.jpg", "sa_3.jpg"):
        _image(photos / name, size=(20, 10))
    prefix = "../DCI/dataset/densely_captioned_images/photos"
    test = [
        {"filename": f"{prefix}/sa_1.jpg", "caption": "A street. Cars park."},
        {"filename": f"{prefix}/sa_2.jpg", "caption": "A beach."},
    ]
    crops = "../pipline/segment_with_background_DCI_test_set_max_0.01"
    joint = test + [
        {"filename": f"{prefix}/sa_3.jpg", "caption": "A room. A lamp glows."},
        {"filename": f"{crops}/sa_1.jpg_results/sa_1_max_4.png", "caption": "Cars park", "similarity_score": 27.5},
        {"filename": f"{crops}/sa_2.jpg_results/original_image.jpg", "caption": "A beach", "similarity_score": 21.0},
        {
            "filename": f"{crops}/sa_3.jpg_results/sa_3_max_2.png",
            "caption": "A lamp glows",
            "similarity_score": 30.0,
            "bbox_coordinates": {"x1": 2, "y1": 1, "x2": 9, "y2": 7, "width": 7, "height": 6},
        },
        {"filename": f"{crops}/sa_9.jpg_results/sa_9_max_1.png", "caption": "Orphan", "similarity_score": 25.0},
    ]
    train = [
        {
            "original_filename": f"{prefix}/sa_1.jpg",
            "original_caption": "A street. Cars park. A shop is open.",
            "segment": [
                {
                    "filename": "x/sa_1.jpg_results/sa_1_max_1.png",
                    "caption": "Cars park",
                    "similarity_score": 26.0,
                    "bbox_coordinates": {"x1": 0, "y1": 0, "x2": 5, "y2": 5},
                },
                {
                    "filename": "x/sa_1.jpg_results/sa_1_max_2.png",
                    "caption": "A shop is open",
                    "similarity_score": 31.0,
                    "bbox_coordinates": {"x1": 4, "y1": 2, "x2": 8, "y2": 9},
                },
            ],
        }
    ]
    _json(root / "datasets" / "DCI_test.json", test)
    _json(root / "datasets" / "DCI_test_joint_sim_max_11.json", joint)
    _json(root / "datasets" / "goal_train.json", train)
    return root, photos


def _roundtrip(records: list[dict], out: Path) -> list[dict]:
    """Write through convert's writer and read back with the strict reader (images must exist)."""
    from goalclip.core.manifest import write_manifest

    write_manifest(out, records)
    return read_manifest(out, check_images=True)


# ----------------------------------------------------------------------------- DOCCI


def test_docci_test_split_skips_missing_empty_and_aar(tmp_path: Path) -> None:
    root = _docci(tmp_path / "docci")
    summary = convert("docci", root, "test", tmp_path / "out" / "docci_test.jsonl")
    records = read_manifest(tmp_path / "out" / "docci_test.jsonl", check_images=True)
    assert [r["id"] for r in records] == ["test_00000"]
    assert records[0]["caption"] == "A blue door."
    assert Path(records[0]["image"]).resolve() == (root / "images" / "test_00000.jpg").resolve()
    assert summary.written == 1
    assert summary.skipped == {"missing image": 1, "empty caption": 1}
    assert summary.examples["missing image"] == ["test_00001"]
    assert not Path(
        json.loads((tmp_path / "out" / "docci_test.jsonl").read_text().splitlines()[0])["image"]
    ).is_absolute()


def test_adapter_called_directly_still_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="goalclip.datasets.adapters"):
        convert_docci(_docci(tmp_path / "docci"), "test")
    assert "skipped 1 record(s): missing image (first ids: test_00001)" in caplog.text


def test_docci_train_strips_and_keeps_order(tmp_path: Path) -> None:
    records = convert_docci(_docci(tmp_path / "docci"), "train")
    assert [r["id"] for r in records] == ["train_00000", "train_00001"]
    assert records[0]["caption"] == "A red mug on a desk. It is empty."
    assert [r["id"] for r in convert_docci(tmp_path / "docci", "qual_dev")] == ["qual_dev_00000"]


def test_docci_keeps_missing_images_when_not_checking(tmp_path: Path) -> None:
    tally = SkipReport()
    records = convert_docci(_docci(tmp_path / "docci"), "test", check_images=False, tally=tally)
    assert [r["id"] for r in records] == ["test_00000", "test_00001"]
    assert tally.skipped == {"empty caption": 1}


def test_docci_errors_name_file_line_and_field(tmp_path: Path) -> None:
    root = _docci(tmp_path / "docci")
    with (root / "docci_descriptions.jsonlines").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"example_id": "test_00009", "split": "test", "image_file": "test_00009.jpg"}) + "\n")
    with pytest.raises(ManifestError, match=r"docci_descriptions\.jsonlines:8: field 'description' is missing"):
        convert_docci(root, "test")
    with pytest.raises(ValueError, match="qual_dev"):
        convert_docci(root, "qual_train")
    with pytest.raises(ManifestError, match="docci_descriptions.jsonlines: no such file"):
        convert_docci(tmp_path, "test")


# ----------------------------------------------------------------------------- DCI


def test_dci_captions_splits_and_missing_image(tmp_path: Path) -> None:
    root = _dci(tmp_path / "dci")
    tally = SkipReport()
    test = convert_dci(root, "test", tally=tally)
    assert [r["id"] for r in test] == ["sa_2"]
    assert test[0]["caption"] == "Waves roll in."
    assert tally.skipped == {"missing image": 1} and tally.examples["missing image"] == ["sa_3"]
    (train,) = convert_dci(root / "densely_captioned_images", "train", caption="short+extra")
    assert train["caption"] == "A street\nCars park on the left. A shop is open."
    assert convert_dci(root, "train", caption="short")[0]["caption"] == "A street"
    assert convert_dci(root, "train", caption="summary")[0]["caption"] == "A street with cars."
    assert [r["id"] for r in convert_dci(root, "all", check_images=False)] == ["sa_1", "sa_2", "sa_3"]
    assert [r["id"] for r in _roundtrip(convert_dci(root, "all"), tmp_path / "all.jsonl")] == ["sa_1", "sa_2"]


def test_dci_boxes_and_convert_with_boxes_out(tmp_path: Path) -> None:
    root = _dci(tmp_path / "dci")
    (entry,) = dci_boxes(root, "train")
    # mask-index order (0, 2, 3, 10): 3 repeats 0, 10 has no width, 4 is marked unusable
    assert entry == {"id": "sa_1", "boxes": [[0.0, 0.0, 6.0, 4.0], [1.0, 1.0, 5.0, 7.0]]}
    summary = convert(
        "dci", root, "test", tmp_path / "dci_test.jsonl", boxes_out=tmp_path / "boxes.jsonl", caption="short"
    )
    assert summary.written == 1 and summary.boxes_written == 1  # sa_3's photo is missing: no boxes either
    assert read_boxes(tmp_path / "boxes.jsonl") == {"sa_2": [[0.0, 0.0, 12.0, 8.0]]}
    assert [r["id"] for r in read_manifest(tmp_path / "dci_test.jsonl")] == ["sa_2"]


def test_dci_malformed_inputs(tmp_path: Path) -> None:
    root = _dci(tmp_path / "dci")
    ann = root / "densely_captioned_images" / "annotations" / "sa_2.json"
    _json(ann, {"image": "sa_2.jpg", "short_caption": "A beach", "mask_data": {}})
    with pytest.raises(ManifestError, match=r"sa_2\.json: field 'extra_caption' is missing"):
        convert_dci(root, "test")
    _json(ann, {"image": "sa_2.jpg", "extra_caption": "x", "mask_data": {"0": {"bounds": {"topLeft": {"x": 0}}}}})
    with pytest.raises(ManifestError, match=r"mask_data\['0'\]: field 'bounds': field 'bottomRight' is missing"):
        dci_boxes(root, "test")
    shutil.rmtree(root / "densely_captioned_images" / "complete")  # summaries live only there
    with pytest.raises(ManifestError, match=r"sa_1\.json: field 'summaries' is missing"):
        convert_dci(root, "train", caption="summary")
    with pytest.raises(ValueError, match="boxes_out is only available for format 'dci'"):
        convert("docci", _docci(tmp_path / "docci"), "test", tmp_path / "x.jsonl", boxes_out=tmp_path / "b.jsonl")


# ----------------------------------------------------------------------------- Urban1k


def test_urban1k_natural_order_and_unpaired_files(tmp_path: Path) -> None:
    root = _urban1k(tmp_path)
    summary = convert("urban1k", root, "test", tmp_path / "urban.jsonl")
    records = read_manifest(tmp_path / "urban.jsonl", check_images=True)
    assert [r["id"] for r in records] == ["urban1k_1", "urban1k_2", "urban1k_10"]
    assert records[1]["caption"] == "A bridge over a river. Boats pass below."
    assert records[2]["caption"] == "A square."
    assert summary.skipped == {"missing image": 1, "image without a caption file": 1}
    assert summary.examples["image without a caption file"] == ["urban1k_12"]
    with pytest.raises(ValueError, match="urban1k: unknown split 'train'"):
        convert_urban1k(root, "train")


# ----------------------------------------------------------------------------- COCO / Flickr30k


def test_coco_karpathy_splits_and_caption_counts(tmp_path: Path) -> None:
    root = _coco(tmp_path / "coco")
    test = _roundtrip(convert_coco(root, "test"), tmp_path / "coco_test.jsonl")
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
    root = _coco(tmp_path / "coco")
    data = json.loads((root / "dataset_coco.json").read_text())
    del data["images"][0]["sentences"][2]["raw"]
    _json(root / "dataset_coco.json", data)
    with pytest.raises(ManifestError, match=r"dataset_coco\.json: images\[0\]\.sentences\[2\]: field 'raw' is missing"):
        convert_coco(root, "test")
    (root / "dataset_coco.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match="dataset_coco.json: malformed JSON"):
        convert_coco(root, "test")


def test_flickr30k_drops_empty_caption_and_prefixes_ids(tmp_path: Path) -> None:
    root = _flickr(tmp_path / "flickr")
    summary = convert("flickr30k", root, "test", tmp_path / "f.jsonl")
    records = read_manifest(tmp_path / "f.jsonl", check_images=True)
    assert [r["id"] for r in records] == ["flickr30k_1000092795", "flickr30k_10002456"]
    assert records[0]["captions"] == ["s1", "s3", "s4", "s5"]
    assert [len(r["captions"]) for r in records] == [4, 5]
    assert summary.notes == {"empty caption dropped": 1} and summary.skipped == {}
    assert [r["id"] for r in convert_flickr30k(root, "train")] == ["flickr30k_1001465944"]


# ----------------------------------------------------------------------------- ShareGPT4V


def test_sharegpt4v_test1k_is_the_leading_records(tmp_path: Path) -> None:
    root = _sharegpt4v(tmp_path / "data")
    test = convert_sharegpt4v(root, "test1k", test_size=2)
    train = convert_sharegpt4v(root, "train", test_size=2)
    assert [r["id"] for r in test] == ["000000000009", "sa_1"]
    assert [r["id"] for r in train] == ["0001", "sa_2", "000000000025"]
    assert test[0]["caption"] == "Caption 0. It has a second line."
    assert len(convert_sharegpt4v(root, "test1k")) == 5  # default 1,000 > file length
    assert [r["id"] for r in _roundtrip(test, tmp_path / "s.jsonl")] == ["000000000009", "sa_1"]


def test_sharegpt4v_record_without_gpt_turn(tmp_path: Path) -> None:
    root = _sharegpt4v(tmp_path / "data")
    path = root / "share-captioner_coco_lcs_sam_1246k_1107.json"
    data = json.loads(path.read_text())
    data[1]["conversations"] = data[1]["conversations"][:1]
    _json(path, data)
    with pytest.raises(ManifestError, match=r"\[1\]: field 'conversations' has no turn with \"from\": \"gpt\""):
        convert_sharegpt4v(root, "test1k")


# ----------------------------------------------------------------------------- GOAL JSON


def test_goal_test_json_with_image_root(tmp_path: Path) -> None:
    root, photos = _goal(tmp_path / "GOAL")
    records = convert_goal_json(root, "DCI_test", image_root=photos)
    assert [r["id"] for r in records] == ["sa_1", "sa_2"]
    assert Path(records[0]["image"]) == (photos / "sa_1.jpg").resolve()
    tally = SkipReport()
    assert convert_goal_json(root, "datasets/DCI_test.json", tally=tally) == []  # authors' paths do not exist here
    assert tally.skipped == {"missing image": 2}


def test_goal_joint_json_keeps_boxed_whole_and_crop_file_pairs(tmp_path: Path) -> None:
    root, photos = _goal(tmp_path / "GOAL")
    # the authors' crop files, where their relative paths point (next to the GOAL folder)
    crop = _image(tmp_path / "pipline/segment_with_background_DCI_test_set_max_0.01/sa_1.jpg_results/sa_1_max_4.png")
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
    root, photos = _goal(tmp_path / "GOAL")
    tally = SkipReport()
    records = convert_goal_json(root, "DCI_test_joint_sim_max_11", image_root=photos, tally=tally)
    assert "local" not in records[0] and tally.notes == {"local crop file missing": 1}
    crops = tmp_path / "crops"
    crop = _image(crops / "sa_1.jpg_results" / "sa_1_max_4.png")
    records = convert_goal_json(root, "DCI_test_joint_sim_max_11", image_root=photos, crop_root=crops)
    assert records[0]["local"]["image"] == str(crop)
    unchecked = convert_goal_json(root, "DCI_test_joint_sim_max_11", image_root=photos, check_images=False)
    assert unchecked[0]["local"]["image"].endswith("sa_1.jpg_results/sa_1_max_4.png")


def test_goal_training_format_gives_mined_records(tmp_path: Path) -> None:
    root, photos = _goal(tmp_path / "GOAL")
    (record,) = convert_goal_json(root, "goal_train", image_root=photos)
    assert record["caption"] == "A street. Cars park. A shop is open."
    assert record["local"]["sentence"] == "A shop is open"  # best score first
    assert [c["sentence"] for c in record["candidates"]] == ["A shop is open", "Cars park"]
    assert record["local"]["box"] == [4.0, 2.0, 8.0, 9.0]


def test_goal_pair_with_a_nan_box_is_counted_not_written(tmp_path: Path) -> None:
    root, photos = _goal(tmp_path / "GOAL")
    path = root / "datasets" / "goal_train.json"
    data = json.loads(path.read_text())
    data[0]["segment"][1]["bbox_coordinates"]["x2"] = float("nan")  # json writes NaN, as numpy-based tools do
    path.write_text(json.dumps(data))
    tally = SkipReport()
    (record,) = convert_goal_json(root, "goal_train", image_root=photos, tally=tally)
    assert [c["sentence"] for c in record["candidates"]] == ["Cars park"]
    assert tally.notes == {"local pair with a non-finite box": 1}


def test_goal_json_errors(tmp_path: Path) -> None:
    root, _ = _goal(tmp_path / "GOAL")
    with pytest.raises(ManifestError, match="no GOAL JSON file 'nope' found"):
        convert_goal_json(root, "nope")
    _json(root / "datasets" / "bad.json", [{"filename": "a.jpg"}])
    with pytest.raises(ManifestError, match=r"bad\.json: \[0\]: field 'caption' is missing"):
        convert_goal_json(root, "bad")
    _json(
        root / "datasets" / "bad.json",
        [{"filename": "r/a.jpg_results/c.png", "caption": "x", "similarity_score": 1, "bbox_coordinates": {"x1": 0}}],
    )
    with pytest.raises(ManifestError, match="field 'bbox_coordinates': field 'y1' is missing"):
        convert_goal_json(root, "bad")


# ----------------------------------------------------------------------------- convert, CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="goalclip data convert")
    add_convert_arguments(parser)
    return parser.parse_args(argv)


def test_run_convert_cli_roundtrip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _coco(tmp_path / "coco")
    (root / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    args = _parse(
        [
            "--format",
            "coco",
            "--root",
            str(root),
            "--split",
            "test",
            "--out",
            str(tmp_path / "c.jsonl"),
            "--max-captions",
            "0",
        ]
    )
    with caplog.at_level(logging.WARNING), pytest.raises(ManifestError, match="no records to write") as error:
        run_convert(args)  # nothing would be written: an error naming a missing image, not an empty manifest
    assert str(root / "val2014" / "COCO_val2014_000000000001.jpg") in str(error.value)
    assert "COCO_val2014_000000000001" in caplog.text and not (tmp_path / "c.jsonl").exists()
    args = _parse(
        [
            "--format",
            "coco",
            "--root",
            str(root),
            "--split",
            "test",
            "--out",
            str(tmp_path / "c.jsonl"),
            "--no-check-images",
        ]
    )
    result = run_convert(args)
    assert result["written"] == 1 and result["format"] == "coco" and result["boxes_out"] is None
    assert len(read_manifest(tmp_path / "c.jsonl")[0]["captions"]) == 5


def test_options_that_do_not_apply_are_errors(tmp_path: Path) -> None:
    root = _coco(tmp_path / "coco")
    args = _parse(
        [
            "--format",
            "coco",
            "--root",
            str(root),
            "--split",
            "test",
            "--out",
            str(tmp_path / "c.jsonl"),
            "--caption",
            "short",
        ]
    )
    with pytest.raises(ValueError, match="--caption do\\(es\\) not apply to --format coco"):
        run_convert(args)
    with pytest.raises(ValueError, match="option\\(s\\) test_size do not apply to format 'coco'"):
        convert("coco", root, "test", tmp_path / "c.jsonl", test_size=3)
    with pytest.raises(ValueError, match="unknown format 'laion'"):
        convert("laion", root, "test", tmp_path / "c.jsonl")
    with pytest.raises(SystemExit):
        _parse(["--format", "laion", "--root", "r", "--split", "s", "--out", "o"])
    assert set(ADAPTERS) == {"docci", "dci", "urban1k", "coco", "flickr30k", "sharegpt4v", "goal-json", "sa1b"}


def test_outputs_are_deterministic(tmp_path: Path) -> None:
    root = _dci(tmp_path / "dci")
    convert("dci", root, "all", tmp_path / "a.jsonl", boxes_out=tmp_path / "a_boxes.jsonl", check_images=False)
    convert("dci", root, "all", tmp_path / "b.jsonl", boxes_out=tmp_path / "b_boxes.jsonl", check_images=False)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a_boxes.jsonl").read_bytes() == (tmp_path / "b_boxes.jsonl").read_bytes()
