"""DOCCI, DCI (captions and mask boxes) and Urban1k read from their own layouts."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from goalclip.core.manifest import ManifestError, SkipReport, read_boxes
from goalclip.core.records import read_manifest
from goalclip.datasets.convert import convert
from goalclip.datasets.long_captions import convert_dci, convert_docci, convert_urban1k, dci_boxes
from tests.datasets.conftest import dci_layout, docci_layout, roundtrip, urban1k_layout, write_json


def test_docci_test_split_skips_missing_empty_and_aar(tmp_path: Path) -> None:
    root = docci_layout(tmp_path / "docci")
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
    with caplog.at_level(logging.WARNING, logger="goalclip.datasets.long_captions"):
        convert_docci(docci_layout(tmp_path / "docci"), "test")
    assert "skipped 1 record(s): missing image (first ids: test_00001)" in caplog.text


def test_docci_train_strips_and_keeps_order(tmp_path: Path) -> None:
    records = convert_docci(docci_layout(tmp_path / "docci"), "train")
    assert [r["id"] for r in records] == ["train_00000", "train_00001"]
    assert records[0]["caption"] == "A red mug on a desk. It is empty."
    assert [r["id"] for r in convert_docci(tmp_path / "docci", "qual_dev")] == ["qual_dev_00000"]


def test_docci_keeps_missing_images_when_not_checking(tmp_path: Path) -> None:
    tally = SkipReport()
    records = convert_docci(docci_layout(tmp_path / "docci"), "test", check_images=False, tally=tally)
    assert [r["id"] for r in records] == ["test_00000", "test_00001"]
    assert tally.skipped == {"empty caption": 1}


def test_docci_errors_name_file_line_and_field(tmp_path: Path) -> None:
    root = docci_layout(tmp_path / "docci")
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
    root = dci_layout(tmp_path / "dci")
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
    assert [r["id"] for r in roundtrip(convert_dci(root, "all"), tmp_path / "all.jsonl")] == ["sa_1", "sa_2"]


def test_dci_boxes_and_convert_with_boxes_out(tmp_path: Path) -> None:
    root = dci_layout(tmp_path / "dci")
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
    root = dci_layout(tmp_path / "dci")
    ann = root / "densely_captioned_images" / "annotations" / "sa_2.json"
    write_json(ann, {"image": "sa_2.jpg", "short_caption": "A beach", "mask_data": {}})
    with pytest.raises(ManifestError, match=r"sa_2\.json: field 'extra_caption' is missing"):
        convert_dci(root, "test")
    write_json(ann, {"image": "sa_2.jpg", "extra_caption": "x", "mask_data": {"0": {"bounds": {"topLeft": {"x": 0}}}}})
    with pytest.raises(ManifestError, match=r"mask_data\['0'\]: field 'bounds': field 'bottomRight' is missing"):
        dci_boxes(root, "test")
    shutil.rmtree(root / "densely_captioned_images" / "complete")  # summaries live only there
    with pytest.raises(ManifestError, match=r"sa_1\.json: field 'summaries' is missing"):
        convert_dci(root, "train", caption="summary")
    with pytest.raises(ValueError, match="boxes_out is only available for formats dci, sa1b"):
        convert("docci", docci_layout(tmp_path / "docci"), "test", tmp_path / "x.jsonl", boxes_out=tmp_path / "b.jsonl")


# ----------------------------------------------------------------------------- Urban1k


def test_urban1k_natural_order_and_unpaired_files(tmp_path: Path) -> None:
    root = urban1k_layout(tmp_path)
    summary = convert("urban1k", root, "test", tmp_path / "urban.jsonl")
    records = read_manifest(tmp_path / "urban.jsonl", check_images=True)
    assert [r["id"] for r in records] == ["urban1k_1", "urban1k_2", "urban1k_10"]
    assert records[1]["caption"] == "A bridge over a river. Boats pass below."
    assert records[2]["caption"] == "A square."
    assert summary.skipped == {"missing image": 1, "image without a caption file": 1}
    assert summary.examples["image without a caption file"] == ["urban1k_12"]
    with pytest.raises(ValueError, match="urban1k: unknown split 'train'"):
        convert_urban1k(root, "train")
