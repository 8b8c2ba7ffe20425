"""Region geometry by hand: grid boxes, clipping, mask boxes (goalclip.mining.boxes)."""

from __future__ import annotations

import pytest
import torch

from goalclip.mining.boxes import Region, clip_box, grid_boxes, mask_boxes


def test_grid_boxes_square():
    assert grid_boxes(100, 100) == [
        (0.0, 0.0, 50.0, 50.0),
        (50.0, 0.0, 100.0, 50.0),
        (0.0, 50.0, 50.0, 100.0),
        (50.0, 50.0, 100.0, 100.0),
        (25.0, 25.0, 75.0, 75.0),
    ]


def test_grid_boxes_non_square_and_odd_sizes():
    assert grid_boxes(200, 60) == [
        (0.0, 0.0, 100.0, 30.0),
        (100.0, 0.0, 200.0, 30.0),
        (0.0, 30.0, 100.0, 60.0),
        (100.0, 30.0, 200.0, 60.0),
        (50.0, 15.0, 150.0, 45.0),
    ]
    # the centre box's corners are the quadrants' centres, also for odd sizes
    boxes = grid_boxes(7, 5)
    assert boxes[0] == (0.0, 0.0, 3.5, 2.5)
    assert boxes[4] == (1.75, 1.25, 5.25, 3.75)
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes[:4]]
    assert (boxes[4][0], boxes[4][1]) == centres[0] and (boxes[4][2], boxes[4][3]) == centres[3]


def test_region_rejects_unknown_source():
    with pytest.raises(ValueError, match="source"):
        Region((0.0, 0.0, 1.0, 1.0), "yolo")


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((10, 5, 50, 40), (10.0, 5.0, 50.0, 40.0)),  # inside: unchanged
        ((-10, 5, 50, 200), (0.0, 5.0, 50.0, 80.0)),  # partly outside: clipped
        ((-5.5, -1, 120, 90), (0.0, 0.0, 100.0, 80.0)),  # covers the image
        ((120, 0, 150, 10), None),  # fully outside (right)
        ((-20, -20, -5, -5), None),  # fully outside (top-left)
        ((10, 10, 10, 20), None),  # zero width
        ((10, 30, 20, 30), None),  # zero height
        ((20, 10, 10, 20), None),  # reversed: negative area
        ((100, 10, 130, 20), None),  # touches the border only: zero area after clipping
        ((float("nan"), 0, 10, 10), None),
    ],
)
def test_clip_box(box, expected):
    assert clip_box(box, 100, 80) == expected


def _rect(masks: torch.Tensor, index: int, rows: slice, cols: slice) -> None:
    masks[index, rows, cols] = True


def test_mask_boxes_area_filter_and_boxes():
    # a 80 x 50 image = 4000 pixels; 1% = 40 px, 80% = 3200 px
    masks = torch.zeros(7, 50, 80, dtype=torch.bool)
    _rect(masks, 0, slice(0, 3), slice(0, 3))  # 9 px = 0.225%: too small
    _rect(masks, 1, slice(1, 50), slice(0, 80))  # 3920 px = 98%: too big
    _rect(masks, 2, slice(10, 20), slice(30, 50))  # 200 px = 5%
    # mask 3 stays empty
    _rect(masks, 4, slice(0, 5), slice(0, 10))  # 50 px, top-left corner
    _rect(masks, 5, slice(45, 50), slice(70, 80))  # 50 px, bottom-right corner
    _rect(masks, 6, slice(30, 34), slice(60, 70))  # exactly 40 px = 1%: kept (bound inclusive)
    kept, boxes = mask_boxes(masks, min_area=0.01, max_area=0.8)
    assert kept.tolist() == [2, 4, 5, 6]
    assert boxes.tolist() == [
        [30.0, 10.0, 50.0, 20.0],
        [0.0, 0.0, 10.0, 5.0],
        [70.0, 45.0, 80.0, 50.0],
        [60.0, 30.0, 70.0, 34.0],
    ]
    # an empty mask is never a region, even with no lower bound
    kept_all, _ = mask_boxes(masks, min_area=0.0, max_area=1.0)
    assert 3 not in kept_all.tolist() and len(kept_all) == 6


def test_mask_boxes_margin_is_clipped_at_the_borders():
    masks = torch.zeros(3, 50, 80, dtype=torch.bool)
    _rect(masks, 0, slice(10, 20), slice(30, 50))  # middle: grows freely
    _rect(masks, 1, slice(0, 5), slice(0, 10))  # top-left corner
    _rect(masks, 2, slice(45, 50), slice(70, 80))  # bottom-right corner
    _, boxes = mask_boxes(masks, min_area=0.01, max_area=0.8, margin=0.5)
    assert boxes.tolist() == [
        [20.0, 5.0, 60.0, 25.0],  # +10 px in x, +5 px in y on every side
        [0.0, 0.0, 15.0, 7.5],  # (-5, -2.5, 15, 7.5) clipped
        [65.0, 42.5, 80.0, 50.0],  # (65, 42.5, 85, 52.5) clipped
    ]


def test_mask_boxes_of_a_non_rectangular_mask():
    mask = torch.zeros(1, 50, 80, dtype=torch.bool)
    mask[0, 20:30, 5] = True  # vertical bar
    mask[0, 29, 5:25] = True  # horizontal bar: an L
    kept, boxes = mask_boxes(mask, min_area=0.0, max_area=1.0)
    assert kept.tolist() == [0] and boxes.tolist() == [[5.0, 20.0, 25.0, 30.0]]
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        mask_boxes(mask[0])
