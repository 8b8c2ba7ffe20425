"""SA-1B conversion (images -> manifest without captions, masks -> area-filtered external boxes) and
``goalclip data sample``, on a generated folder in SA-1B's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from goalclip.caption.engines import Generation
from goalclip.caption.generate import CaptionConfig, caption
from goalclip.cli import main
from goalclip.core.manifest import read_boxes
from goalclip.datasets.convert import convert

W, H = 100, 80  # 8000 pixels: 1% is 80, 80% is 6400


def _annotation(bbox: list[float], area: float) -> dict:
    return {"bbox": bbox, "area": area, "segmentation": {"size": [H, W], "counts": "x"}, "predicted_iou": 0.9}


def _write(folder: Path, stem: str, annotations: list[dict], image: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    info = {"image_id": int(stem.split("_")[1]), "width": W, "height": H, "file_name": f"{stem}.jpg"}
    (folder / f"{stem}.json").write_text(json.dumps({"image": info, "annotations": annotations}))
    if image:
        Image.new("RGB", (W, H), (90, 120, 200)).save(folder / f"{stem}.jpg")


@pytest.fixture()
def sa1b(tmp_path: Path) -> Path:
    root = tmp_path / "sa1b"
    _write(root / "sa_000000", "sa_1", [
        _annotation([10, 10, 40, 20], 800),  # 10%: kept
        _annotation([0, 0, 5, 5], 40),  # 0.5%: texture, dropped
        _annotation([0, 0, 100, 80], 7000),  # 87.5%: the whole scene, dropped
        _annotation([50, 30, 40, 40], 1600),  # 20%: kept
        _annotation([10, 10, 40, 20], 790),  # the same box again: listed once
    ])
    _write(root / "sa_000000", "sa_10", [_annotation([1, 1, 4, 4], 16)])  # no box in range: not listed
    _write(root / "sa_000001", "sa_2", [_annotation([20, 20, 30, 30], 80)])  # exactly 1%: kept
    _write(root / "sa_000001", "sa_3", [_annotation([20, 20, 30, 30], 900)], image=False)  # photo missing
    return root


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_convert_writes_the_mask_boxes_of_the_written_images(sa1b: Path, tmp_path: Path) -> None:
    summary = convert("sa1b", sa1b, "all", tmp_path / "sa1b.jsonl", boxes_out=tmp_path / "boxes.jsonl")
    assert summary.written == 3 and summary.boxes_written == 2  # sa_3's photo is missing; sa_10 has no box in range
    assert read_boxes(tmp_path / "boxes.jsonl") == {"sa_1": [[10.0, 10.0, 50.0, 30.0], [50.0, 30.0, 90.0, 70.0]],
                                                    "sa_2": [[20.0, 20.0, 50.0, 50.0]]}


def test_convert_sa1b_writes_images_and_area_filtered_xyxy_boxes(sa1b: Path, tmp_path: Path, capsys) -> None:
    out, boxes = tmp_path / "out" / "sa1b.jsonl", tmp_path / "out" / "boxes.jsonl"
    assert main(["data", "convert", "--format", "sa1b", "--root", str(sa1b), "--split", "all", "--out", str(out),
                 "--boxes-out", str(boxes)]) == 0
    records = _read(out)
    assert [r["id"] for r in records] == ["sa_1", "sa_10", "sa_2"]
    assert all("caption" not in r and r["width"] == W and r["height"] == H for r in records)
    assert (out.parent / records[0]["image"]).resolve() == (sa1b / "sa_000000" / "sa_1.jpg").resolve()
    assert _read(boxes) == [
        {"id": "sa_1", "boxes": [[10.0, 10.0, 50.0, 30.0], [50.0, 30.0, 90.0, 70.0]]},
        {"id": "sa_2", "boxes": [[20.0, 20.0, 50.0, 50.0]]},
    ]
    assert "converted 3 records (1 skipped)" in capsys.readouterr().out


def test_convert_sa1b_one_chunk_folder(sa1b: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    assert main(["data", "convert", "--format", "sa1b", "--root", str(sa1b), "--split", "sa_000001",
                 "--out", str(out)]) == 0
    assert [r["id"] for r in _read(out)] == ["sa_2"]


def test_convert_sa1b_malformed_annotation_names_file_and_field(sa1b: Path, tmp_path: Path, capsys) -> None:
    _write(sa1b / "sa_000001", "sa_4", [{"area": 100}])
    assert main(["data", "convert", "--format", "sa1b", "--root", str(sa1b), "--split", "all",
                 "--out", str(tmp_path / "c.jsonl"), "--boxes-out", str(tmp_path / "b.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "sa_4.json: annotations[0]: field 'bbox' is missing" in err


def test_sa1b_manifest_without_captions_is_accepted_by_caption(sa1b: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    assert main(["data", "convert", "--format", "sa1b", "--root", str(sa1b), "--split", "all", "--out", str(out)]) == 0

    class Engine:
        def generate(self, images, prompt):
            return [Generation("A blue picture.", False) for _ in images]

    captions = tmp_path / "captions.jsonl"
    summary = caption(CaptionConfig(data=str(out), out=str(captions), num_workers=0, progress=False), engine=Engine())
    assert summary["captioned"] == 3
    assert [(r["id"], r["caption"], r["width"]) for r in _read(captions)] == [
        ("sa_1", "A blue picture.", W), ("sa_10", "A blue picture.", W), ("sa_2", "A blue picture.", W)]


# ----------------------------------------------------------------------------- data sample


def test_data_sample_is_seeded_and_keeps_the_original_order(sa1b: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (8, 8)).save(folder / f"im{i:02d}.png")

    def sample(seed: int, name: str, source: Path = folder, n: int = 5) -> list[str]:
        assert main(["data", "sample", "--data", str(source), "--n", str(n), "--seed", str(seed),
                     "--out", str(tmp_path / name)]) == 0
        return [r["id"] for r in _read(tmp_path / name)]

    first = sample(3, "a.jsonl")
    assert len(set(first)) == 5 and first == sorted(first) and sample(3, "b.jsonl") == first
    assert any(sample(seed, f"s{seed}.jsonl") != first for seed in (4, 5, 6))
    assert sample(0, "all.jsonl", n=100) == [f"im{i:02d}" for i in range(12)]
    again = sample(3, "c.jsonl", source=tmp_path / "all.jsonl")  # a manifest gives the same pick as its folder
    assert again == first
    assert (tmp_path / _read(tmp_path / "c.jsonl")[0]["image"]).is_file()


def test_data_sample_refuses_a_non_positive_size(tmp_path: Path, capsys) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:  # a usage error
        main(["data", "sample", "--data", str(tmp_path), "--n", "0", "--out", str(tmp_path / "o.jsonl")])
    assert exit_info.value.code == 2 and "--n: expected a positive whole number" in capsys.readouterr().err
