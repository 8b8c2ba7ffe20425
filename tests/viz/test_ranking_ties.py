"""Figures rank as ``goalclip eval`` does: on a tie, irrelevant items first (evaluation/metrics.py's rule)."""

from __future__ import annotations

import json

import torch

from goalclip.cli import main
from goalclip.models.clip import load_clip, save_clip


def _collapsed_model(tiny_world, folder):
    """The tiny CLIP with its text projection zeroed: every caption embeds to zero, so every score ties."""
    bundle = load_clip(str(tiny_world.model))
    with torch.no_grad():
        bundle.model.text_projection.weight.zero_()
    return save_clip(bundle, folder)


def test_retrieval_figure_ranks_ties_pessimistically_as_eval_does(tiny_world, tmp_path) -> None:
    model = _collapsed_model(tiny_world, tmp_path / "collapsed")
    out = tmp_path / "retrieval.png"
    assert main(["viz", "retrieval", "--model", str(model), "--data", str(tiny_world.captions), "--out", str(out),
                 "--queries", "3", "--k", "2", "--device", "cpu"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    gallery = len(result["gallery"])
    [ranks] = [row["gt_rank"] for row in result["t2i"].values()]
    [hits] = [row["hits"] for row in result["t2i"].values()]
    assert ranks == [gallery] * 3  # every other image ties with the ground truth and ranks above it
    assert not any(hit for row in hits for hit in row)
    [i2t] = [row["hits"] for row in result["i2t"].values()]
    assert not any(hit for row in i2t for hit in row)


def test_error_list_counts_a_tied_top_caption_as_a_failure(tiny_world, tmp_path) -> None:
    model = _collapsed_model(tiny_world, tmp_path / "collapsed")
    out = tmp_path / "errors.png"
    assert main(["viz", "errors", "--model", str(model), "--data", str(tiny_world.captions), "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["failures"] == result["images"] == len(tiny_world.ids)  # R@1 = 0, as goalclip eval scores it
