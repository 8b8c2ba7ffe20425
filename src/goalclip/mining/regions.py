"""Which region proposer ``goalclip mine --regions KIND`` builds.

Mining (docs/design.md, "Mining local pairs") needs candidate regions for every image:

- FLISM (FAST-GOAL): object-detector boxes plus 5 fixed boxes (4 quadrants and a centre box), so an
  image the detector finds nothing in still gets local candidates;
- LISM (GOAL): bounding boxes of SAM's automatic masks, plus the whole image, so that a pair is
  discarded when the whole image matches a sentence better than any region;
- boxes the user already has (a dataset's own annotations, another detector's output).

The geometry lives in :mod:`goalclip.mining.boxes`, the interface and the model-free proposers in
:mod:`goalclip.mining.proposers`, the model-backed ones in :mod:`goalclip.mining.detector` and
:mod:`goalclip.mining.sam` (they import transformers when constructed, so grid/external mining never
pays for that import). The model-backed proposers run one batched forward over all the images they
are given, so the caller's batch size is also the memory knob.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from goalclip.mining.detector import DetectorProposer
from goalclip.mining.proposers import (
    CombinedProposer, ExternalProposer, GridProposer, RegionProposer, WholeImageProposer,
)
from goalclip.mining.sam import SamProposer

logger = logging.getLogger(__name__)

REGION_KINDS = ("grid", "whole", "detector", "sam", "external", "flism", "lism")

Boxes = str | Path | Mapping[str, Sequence[Sequence[float]]]


def build_proposer(
    kind: str,
    *,
    detector: str | None = None,
    sam: str | None = None,
    boxes: Boxes | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    threshold: float = 0.3,
    max_boxes: int = 10,
    min_area: float = 0.01,
    max_area: float = 0.8,
    margin: float = 0.0,
    points_per_side: int = 32,
    points_per_batch: int = 64,
) -> RegionProposer:
    """The proposer for ``goalclip mine --regions KIND``; a comma-separated KIND combines kinds.

    Kinds: ``grid`` (5 fixed boxes), ``whole``, ``detector`` (needs ``--detector``), ``sam``
    (needs ``--sam``), ``external`` (needs ``--boxes``; the grid is NOT added), ``flism`` =
    detector boxes and/or external boxes (either may stand in for the other: the demo uses the
    synthetic world's true boxes as its detector) + grid, ``lism`` = SAM + whole image.
    Each model is loaded once even if several kinds name it; repeated boxes keep their first source.
    """
    atoms = region_atoms(kind, detector=detector, boxes=boxes)
    check_sources(kind, atoms, detector=detector, sam=sam, boxes=boxes)
    proposers: list[RegionProposer] = []
    for atom in atoms:
        if atom == "grid":
            proposers.append(GridProposer())
        elif atom == "whole":
            proposers.append(WholeImageProposer())
        elif atom == "external":
            proposers.append(ExternalProposer(boxes))
        elif atom == "detector":
            proposers.append(DetectorProposer(detector, threshold, max_boxes, device=device, dtype=dtype))
        else:
            proposers.append(SamProposer(sam, min_area=min_area, max_area=max_area, margin=margin,
                                         points_per_batch=points_per_batch, points_per_side=points_per_side,
                                         device=device, dtype=dtype))
    return proposers[0] if len(proposers) == 1 else CombinedProposer(proposers)


def region_atoms(kind: str, *, detector: str | None, boxes: Boxes | None) -> list[str]:
    """``--regions KIND`` as the single proposers it names, each once, first position winning
    (``flism`` and ``lism`` expand; ``flism`` takes the detector and/or the boxes it is given)."""
    parts = [p.strip().lower() for p in kind.split(",") if p.strip()]
    if not parts:
        raise ValueError("--regions is empty; choose from " + ", ".join(REGION_KINDS))
    unknown = [p for p in parts if p not in REGION_KINDS]
    if unknown:
        raise ValueError(f"unknown --regions kind {unknown[0]!r}; choose from {', '.join(REGION_KINDS)}")
    atoms: list[str] = []
    for part in parts:
        if part == "flism":
            if detector is None and boxes is None:
                raise ValueError(
                    "--regions flism needs --detector (an object-detection checkpoint, e.g. "
                    "hustvl/yolos-tiny) or --boxes (an external-boxes JSONL)"
                )
            atoms += (["detector"] if detector is not None else []) + (["external"] if boxes is not None else [])
            atoms.append("grid")
        elif part == "lism":
            atoms += ["sam", "whole"]
        else:
            atoms.append(part)
    return list(dict.fromkeys(atoms))


def check_sources(kind: str, atoms: list[str], *, detector: str | None, sam: str | None,
                  boxes: Boxes | None) -> None:
    """Refuse a proposer whose model or boxes option is missing; warn about an option no proposer uses."""
    if "detector" in atoms and detector is None:
        raise ValueError("--regions detector needs --detector (an object-detection checkpoint)")
    if "sam" in atoms and sam is None:
        raise ValueError(f"--regions {kind} needs --sam (a SAM checkpoint, e.g. facebook/sam-vit-base)")
    if "external" in atoms and boxes is None:
        raise ValueError("--regions external needs --boxes (an external-boxes JSONL)")
    options = (("--detector", detector, "detector"), ("--sam", sam, "sam"), ("--boxes", boxes, "external"))
    for option, value, atom in options:
        if value is not None and atom not in atoms:
            logger.warning("%s is given but --regions %s does not use it", option, kind)
