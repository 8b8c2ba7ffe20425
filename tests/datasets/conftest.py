"""Tiny fixtures in each dataset's real on-disk layout, shared by the adapter and convert tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from goalclip.core.manifest import write_manifest
from goalclip.core.records import read_manifest


def write_image(path: Path, size: tuple[int, int] = (12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 40, 200)).save(path)
    return path


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def docci_layout(root: Path) -> Path:
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
            write_image(root / "images" / line["image_file"])
    (root / "docci_descriptions.jsonlines").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return root


def dci_annotation(image: str, short: str, extra: str, masks: dict, summary: str | None = None) -> dict:
    obj = {"image": image, "short_caption": short, "extra_caption": extra, "mask_data": masks, "mask_keys": list(masks)}
    if summary is not None:
        obj["summaries"] = {"base": [summary, "another summary"]}
    return obj


def dci_mask(x1: int, y1: int, x2: int, y2: int, quality: int = 0) -> dict:
    return {
        "bounds": {"topLeft": {"x": x1, "y": y1}, "bottomRight": {"x": x2, "y": y2}},
        "mask_quality": quality,
        "label": "thing",
        "caption": "a thing",
        "parent": -1,
        "requirements": [],
    }


def dci_layout(root: Path) -> Path:
    """DCI: densely_captioned_images/{photos, annotations, complete, splits.json}."""
    base = root / "densely_captioned_images"
    anns = {
        "sa_1.json": dci_annotation(
            "sa_1.jpg",
            "A street",
            "Cars park on the left. A shop is open.",
            {
                "0": dci_mask(0, 0, 6, 4),
                "2": dci_mask(1, 1, 5, 7),
                "10": dci_mask(2, 2, 2, 6),
                "3": dci_mask(0, 0, 6, 4),
                "4": dci_mask(3, 3, 9, 9, quality=2),
            },
            summary="A street with cars.",
        ),
        "sa_2.json": dci_annotation(
            "sa_2.jpg", "A beach", "Waves roll in.", {"0": dci_mask(0, 0, 12, 8)}, summary="A beach."
        ),
        "sa_3.json": dci_annotation("sa_3.jpg", "A room", "A lamp glows.", {"0": dci_mask(1, 1, 3, 3)}),
    }
    for name, obj in anns.items():
        write_json(base / "annotations" / name, {k: v for k, v in obj.items() if k != "summaries"})
        write_json(base / "complete" / name, obj)
    write_image(base / "photos" / "sa_1.jpg")
    write_image(base / "photos" / "sa_2.jpg")
    write_json(base / "splits.json", {"train": ["sa_1.json"], "valid": [], "test": ["sa_2.json", "sa_3.json"]})
    return root


def urban1k_layout(root: Path) -> Path:
    """Urban1k/image/<n>.jpg and Urban1k/caption/<n>.txt; caption 11 has no photo, photo 12 no caption."""
    base = root / "Urban1k"
    for n in (1, 2, 10, 12):
        write_image(base / "image" / f"{n}.jpg")
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


def karpathy_sentences(*texts: str) -> list[dict]:
    return [{"raw": t, "tokens": t.lower().split(), "sentid": i} for i, t in enumerate(texts)]


def coco_layout(root: Path) -> Path:
    images = [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000001.jpg",
            "imgid": 0,
            "cocoid": 1,
            "split": "test",
            "sentences": karpathy_sentences("a", "b", "c", "d", "e", "f"),
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000002.jpg",
            "imgid": 1,
            "cocoid": 2,
            "split": "val",
            "sentences": karpathy_sentences("v1", "v2", "v3", "v4", "v5"),
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000003.jpg",
            "imgid": 2,
            "cocoid": 3,
            "split": "train",
            "sentences": karpathy_sentences("t1", "t2", "t3", "t4", "t5"),
        },
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000004.jpg",
            "imgid": 3,
            "cocoid": 4,
            "split": "restval",
            "sentences": karpathy_sentences("r1", "r2", "r3", "r4", "r5"),
        },
    ]
    for item in images:
        write_image(root / item["filepath"] / item["filename"])
    write_json(root / "dataset_coco.json", {"images": images, "dataset": "coco"})
    return root


def flickr_layout(root: Path) -> Path:
    images = [
        {
            "filename": "1000092795.jpg",
            "imgid": 0,
            "split": "test",
            "sentences": karpathy_sentences("s1", "  ", "s3", "s4", "s5"),
        },
        {
            "filename": "10002456.jpg",
            "imgid": 1,
            "split": "test",
            "sentences": karpathy_sentences("u1", "u2", "u3", "u4", "u5"),
        },
        {
            "filename": "1001465944.jpg",
            "imgid": 2,
            "split": "train",
            "sentences": karpathy_sentences("w1", "w2", "w3", "w4", "w5"),
        },
    ]
    for item in images:
        write_image(root / "flickr30k-images" / item["filename"])
    write_json(root / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    return root


def sharegpt4v_layout(root: Path) -> Path:
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
        write_image(root / source)
    write_json(root / "share-captioner_coco_lcs_sam_1246k_1107.json", records)
    return root


def goal_layout(root: Path) -> tuple[Path, Path]:
    """GOAL repo: datasets/*.json with the authors' relative paths; photos under photos/."""
    photos = root / "photos"
    for name in ("sa_1.jpg", "sa_2.jpg", "sa_3.jpg"):
        write_image(photos / name, size=(20, 10))
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
    write_json(root / "datasets" / "DCI_test.json", test)
    write_json(root / "datasets" / "DCI_test_joint_sim_max_11.json", joint)
    write_json(root / "datasets" / "goal_train.json", train)
    return root, photos


def roundtrip(records: list[dict], out: Path) -> list[dict]:
    """Write through convert's writer and read back with the strict reader (images must exist)."""
    write_manifest(out, records)
    return read_manifest(out, check_images=True)
