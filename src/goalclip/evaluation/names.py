"""The names ``goalclip eval`` reports scores under, torch-free so training's config can check them."""

from __future__ import annotations

from typing import Literal

Direction = Literal["i2t", "t2i"]

DIRECTIONS: tuple[Direction, ...] = ("i2t", "t2i")
JOINT_K = 10  # the joint test's mAP@K, as the papers report it
