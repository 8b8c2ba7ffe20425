"""Region proposers: geometry by hand, external/combined logic, and the real transformers paths.

The detector and SAM tests build tiny randomly initialised models, save them with
``save_pretrained`` and load them back through the same ``from_pretrained`` code a hub id takes.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import goalclip.mining.sam as sam_module
from goalclip.mining.boxes import Region, dedupe_regions, mask_boxes
from goalclip.mining.detector import DetectorProposer
from goalclip.mining.proposers import (
    CombinedProposer, ExternalProposer, GridProposer, WholeImageProposer, take_invalid_boxes,
)
from goalclip.mining.regions import build_proposer
from goalclip.mining.sam import SamProposer


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise with one bright square, so models see some structure."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = 255
    return Image.fromarray(pixels)


def _inside(box: tuple[float, ...], image: Image.Image) -> bool:
    x1, y1, x2, y2 = box
    return 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height


def test_grid_and_whole_proposers_use_each_images_size():
    images = [_image(40, 30), _image(20, 60)]
    grid = GridProposer().propose(images, ["a", "b"])
    assert [len(r) for r in grid] == [5, 5]
    assert grid[0][3] == Region((20.0, 15.0, 40.0, 30.0), "grid")
    assert grid[1][4] == Region((5.0, 15.0, 15.0, 45.0), "grid")
    whole = WholeImageProposer().propose(images, ["a", "b"])
    assert whole == [[Region((0.0, 0.0, 40.0, 30.0), "whole")], [Region((0.0, 0.0, 20.0, 60.0), "whole")]]
    with pytest.raises(ValueError, match="2 images but 1 ids"):
        GridProposer().propose(images, ["a"])


# ---------------------------------------------------------------------------------------------
# External boxes, combination, construction
# ---------------------------------------------------------------------------------------------


def test_external_proposer_clips_drops_and_counts_missing_ids(caplog):
    boxes = {
        "a": [[-10, -10, 20, 20], [50, 50, 60, 60], [5, 5, 5, 10], [10, 10, 30, 25], [10, 10, 30, 25]],
        "b": [],
    }
    proposer = ExternalProposer(boxes)
    images = [_image(40, 30), _image(40, 30), _image(40, 30)]
    with caplog.at_level(logging.WARNING, logger="goalclip.mining.proposers"):
        out = proposer.propose(images, ["a", "b", "c"])
        proposer.propose(images[:1], ["d"])
    assert out[0] == [Region((0.0, 0.0, 20.0, 20.0), "external"), Region((10.0, 10.0, 30.0, 25.0), "external")]
    assert out[1] == [] and out[2] == []
    assert proposer.missing_ids == {"b", "c", "d"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of 3 images" in warnings[0].getMessage()


def test_external_proposer_reads_a_boxes_file(tmp_path):
    path = tmp_path / "boxes.jsonl"
    lines = [{"id": "a", "boxes": [[1, 2, 30, 20]]}, {"id": "b", "boxes": [[0, 0, 100, 100]]}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    out = ExternalProposer(path).propose([_image(40, 30), _image(40, 30)], ["a", "b"])
    assert out == [[Region((1.0, 2.0, 30.0, 20.0), "external")], [Region((0.0, 0.0, 40.0, 30.0), "external")]]
    assert ExternalProposer(str(path)).boxes == {"a": [[1.0, 2.0, 30.0, 20.0]], "b": [[0.0, 0.0, 100.0, 100.0]]}


def test_combined_proposer_dedupes_keeping_the_first_source():
    images = [_image(40, 30)]
    external = ExternalProposer({"a": [[0, 0, 20, 15], [3, 3, 9, 9]]})  # first box == top-left quadrant
    out = CombinedProposer([external, GridProposer()]).propose(images, ["a"])[0]
    assert len(out) == 6
    assert out[0] == Region((0.0, 0.0, 20.0, 15.0), "external")
    assert [r.source for r in out] == ["external", "external", "grid", "grid", "grid", "grid"]
    reverse = CombinedProposer([GridProposer(), external])
    assert reverse.name == "grid+external"
    assert [r.source for r in reverse.propose(images, ["a"])[0]] == ["grid"] * 5 + ["external"]
    # float noise does not defeat the dedupe
    noisy = [Region((0.1 + 0.2, 0.0, 1.0, 1.0), "sam"), Region((0.3, 0.0, 1.0, 1.0), "whole")]
    assert dedupe_regions(noisy) == noisy[:1]


def test_build_proposer_kinds_without_models(caplog):
    assert isinstance(build_proposer("grid"), GridProposer)
    boxes = {"a": [[1, 1, 5, 5]]}
    assert isinstance(build_proposer("external", boxes=boxes), ExternalProposer)  # no grid added
    assert build_proposer("external,grid", boxes=boxes).name == "external+grid"
    # flism with external boxes standing in for the detector, and kinds named twice load once
    assert build_proposer("flism", boxes=boxes).name == "external+grid"
    assert build_proposer("flism, grid,whole", boxes=boxes).name == "external+grid+whole"
    out = build_proposer("flism", boxes=boxes).propose([_image(40, 30)], ["a"])[0]
    assert [r.source for r in out] == ["external"] + ["grid"] * 5
    with caplog.at_level(logging.WARNING, logger="goalclip.mining.regions"):
        build_proposer("grid", boxes=boxes)
    assert "--boxes is given but --regions grid does not use it" in caplog.text


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("flism", {}, r"--detector.*--boxes"),
        ("lism", {}, "--sam"),
        ("external", {}, "--boxes"),
        ("grid,external", {}, "--boxes"),
        ("detector", {"boxes": {"a": []}}, "--detector"),
        ("sam", {}, "--sam"),
        ("yolo", {}, "unknown --regions kind 'yolo'"),
        (" , ", {}, "empty"),
    ],
)
def test_build_proposer_errors_name_the_option(kind, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_proposer(kind, **kwargs)


# ---------------------------------------------------------------------------------------------
# Tiny random checkpoints through the real from_pretrained paths
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yolos_dir(tmp_path_factory):
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(0)
    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[64, 96],
        patch_size=16,
        num_detection_tokens=8,
        num_labels=3,
    )
    model = YolosForObjectDetection(config)
    with torch.no_grad():  # detection tokens start as zeros: make them differ so boxes differ
        model.vit.embeddings.detection_tokens.normal_(std=1.0)
    folder = tmp_path_factory.mktemp("yolos")
    model.save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    config = SamConfig(
        vision_config=dict(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            image_size=64,
            patch_size=16,
            window_size=2,
            global_attn_indexes=[1],
            num_pos_feats=16,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
    folder = tmp_path_factory.mktemp("sam")
    SamModel(config).save_pretrained(folder)
    image_processor = SamImageProcessor(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    SamProcessor(image_processor).save_pretrained(folder)
    return folder


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


def test_detector_proposer_batches_and_returns_boxes_inside_each_image(yolos_dir):
    proposer = DetectorProposer(str(yolos_dir), threshold=0.0, max_boxes=5)
    calls = _count_calls(proposer.model)
    images = [_image(80, 48), _image(60, 120, seed=1)]
    out = proposer.propose(images, ["a", "b"])
    assert calls[0] == 1  # one forward for the whole batch
    assert len(out) == 2
    for image, found in zip(images, out):
        assert 1 <= len(found) <= 5
        assert all(r.source == "detector" and _inside(r.box, image) for r in found)
        scores = [r.score for r in found]
        assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    # boxes are scaled to each image's own size, not the padded batch's
    assert max(r.box[3] for r in out[0]) <= 48 < max(r.box[3] for r in out[1])


def test_detector_with_no_boxes_leaves_grid_only(yolos_dir):
    images = [_image(80, 48), _image(60, 120, seed=1)]
    strict = DetectorProposer(str(yolos_dir), threshold=1.0)  # softmax scores never exceed 1
    assert strict.propose(images, ["a", "b"]) == [[], []]
    combined = CombinedProposer([strict, GridProposer()]).propose(images, ["a", "b"])
    assert [[r.source for r in found] for found in combined] == [["grid"] * 5, ["grid"] * 5]
    flism = build_proposer("flism", detector=str(yolos_dir), threshold=0.0)
    assert flism.name == "detector+grid"
    assert [r.source for r in flism.propose(images[:1], ["a"])[0]][-5:] == ["grid"] * 5


def test_sam_proposer_batches_filters_by_area_and_stays_inside(sam_dir, monkeypatch):
    recorded = []
    real_mask_boxes = sam_module.mask_boxes

    def spy(masks, min_area, max_area, margin):
        kept, boxes = real_mask_boxes(masks, min_area, max_area, margin)
        recorded.append((masks.float().flatten(1).mean(dim=1), kept))
        return kept, boxes

    monkeypatch.setattr(sam_module, "mask_boxes", spy)
    proposer = SamProposer(
        str(sam_dir),
        min_area=0.3,
        max_area=0.7,
        margin=0.1,
        points_per_side=4,
        points_per_batch=8,
        pred_iou_thresh=0.0,  # a random model's predicted IoUs are near 0
        stability_score_thresh=0.0,
    )
    encoder_calls = _count_calls(proposer.model.vision_encoder)
    decoder_calls = _count_calls(proposer.model.mask_decoder)
    images = [_image(80, 48), _image(60, 90, seed=1)]
    out = proposer.propose(images, ["a", "b"])
    assert encoder_calls[0] == 1  # one image-encoder forward for both images
    assert decoder_calls[0] == 4  # 16 points per image, 8 prompts per call over 2 images
    for image, found in zip(images, out):
        assert found, "expected at least one SAM region per image"
        assert all(r.source == "sam" and isinstance(r.score, float) and _inside(r.box, image) for r in found)
        assert len({r.box for r in found}) == len(found)
    fractions = torch.cat([f for f, _ in recorded])
    kept = torch.cat([f[k] for f, k in recorded])
    assert ((kept >= 0.3) & (kept <= 0.7)).all()
    assert ((fractions < 0.3) | (fractions > 0.7)).any(), "the filter should have had something to drop"

    monkeypatch.setattr(sam_module, "mask_boxes", real_mask_boxes)
    proposer.min_area = 0.99
    assert proposer.propose(images, ["a", "b"]) == [[], []]
    lism = build_proposer("lism", sam=str(sam_dir), points_per_side=2)
    assert lism.name == "sam+whole"
    assert [found[-1].source for found in lism.propose(images, ["a", "b"])] == ["whole", "whole"]


def test_sam_proposer_matches_the_transformers_mask_generation_pipeline(sam_dir):
    """Batching over images must not change SAM's answer: compare with the per-image pipeline."""
    from transformers import pipeline

    images = [_image(80, 48), _image(60, 90, seed=1)]
    proposer = SamProposer(
        str(sam_dir),
        min_area=0.3,
        max_area=0.7,
        margin=0.1,
        points_per_side=4,
        points_per_batch=64,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        nms_thresh=1.0,  # no suppression: the pipeline applies NMS before our area filter
    )
    ours = proposer.propose(images, ["a", "b"])
    generator = pipeline("mask-generation", model=str(sam_dir), device="cpu")
    for image, found in zip(images, ours):
        result = generator(
            image, points_per_crop=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crops_nms_thresh=1.0
        )
        masks = torch.stack([torch.as_tensor(m) for m in result["masks"]])
        _, boxes = mask_boxes(masks, min_area=0.3, max_area=0.7, margin=0.1)
        expected = {tuple(round(v, 3) for v in box) for box in boxes.tolist()}
        assert {tuple(round(v, 3) for v in r.box) for r in found} == expected


def test_external_proposer_keeps_each_invalid_box_with_its_reason_until_taken():
    proposer = ExternalProposer(
        {"a": [[50, 50, 60, 60], [5, 5, 5, 10], [float("nan"), 0, 4, 4], [0, 0, float("inf"), 9], [1, 1, 9, 9]]}
    )
    out = proposer.propose([_image(40, 30)], ["a"])
    assert out == [[Region((1.0, 1.0, 9.0, 9.0), "external")]]
    taken = take_invalid_boxes(CombinedProposer([proposer, GridProposer()]))
    assert [(bad.image_id, bad.reason) for bad in taken] == [
        ("a", "outside the image"), ("a", "zero or negative area"), ("a", "not finite"), ("a", "not finite"),
    ]
    assert take_invalid_boxes(proposer) == []  # taken once


def test_sam_post_processes_each_image_once_whatever_the_batch_size(sam_dir):
    """Mask post-processing (host syncs, upscaling) runs once per image, not once per decoder call per image:
    a bigger batch means smaller point slices per call and, before, more post-processing calls per image."""
    proposer = SamProposer(str(sam_dir), points_per_side=4, points_per_batch=8, pred_iou_thresh=0.0,
                           stability_score_thresh=0.0, min_area=0.0, max_area=1.0)
    calls = []
    real = proposer.processor.post_process_masks

    def counting(masks, *args, **kwargs):
        calls.append(len(masks))
        return real(masks, *args, **kwargs)

    proposer.processor.post_process_masks = counting
    images = [_image(80, 48), _image(60, 90, seed=1), _image(64, 64, seed=2), _image(50, 70, seed=3)]
    alone = [proposer.propose([image], [str(i)])[0] for i, image in enumerate(images)]
    per_image_alone = sum(calls) / len(images)
    calls.clear()
    together = proposer.propose(images, [str(i) for i in range(len(images))])
    assert sum(calls) / len(images) == per_image_alone == 1
    assert together == alone
