"""Readings of the papers in the loss (issue #20, items 2 and 3).

Top-k pairs (FAST-GOAL Table VIII): the paper's text puts the K pairs and their weights into TSL;
L_local uses the best pair. Pairs of one image must never be each other's negatives. TSL target:
GOAL's Eq. 14 compares the n x n similarity matrix with the identity; the authors' code (default)
penalises only its diagonal.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from goalclip.cli import main
from goalclip.training.losses import contrastive_loss, local_pair_loss, tsl_loss

SCALE = torch.tensor(10.0)


def _pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    owner = torch.tensor([0, 0, 0, 1, 2, 2])  # image 0 has 3 pairs, image 2 has 2; best first
    weight = torch.tensor([0.5, 0.3, 0.2, 1.0, 0.7, 0.3])
    return torch.randn(6, 4), torch.randn(6, 4), owner, weight


def _infonce_rows(crops: torch.Tensor, sentences: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per pair: the mean of its two cross-entropies, over the columns ``keep[p]`` allows."""
    crops, sentences = F.normalize(crops, dim=-1), F.normalize(sentences, dim=-1)
    rows = []
    for p in range(len(crops)):
        columns = keep[p].nonzero().flatten().tolist()
        target = columns.index(p)
        i2t = -torch.log_softmax(SCALE * crops[p] @ sentences[columns].T, dim=0)[target]
        t2i = -torch.log_softmax(SCALE * sentences[p] @ crops[columns].T, dim=0)[target]
        rows.append((i2t + t2i) / 2)
    return torch.stack(rows)


def test_default_local_loss_takes_each_images_best_pair() -> None:
    crops, sentences, owner, weight = _pairs()
    best = [0, 3, 4]
    expected = _infonce_rows(crops[best], sentences[best], torch.ones(3, 3, dtype=torch.bool)).mean()
    assert float(local_pair_loss(crops, sentences, SCALE, owner, weight)) == pytest.approx(float(expected), rel=1e-6)


def test_same_image_pairs_are_never_each_others_negatives() -> None:
    crops, sentences, owner, weight = _pairs()
    keep = (owner[:, None] != owner[None, :]) | torch.eye(6, dtype=torch.bool)
    expected = (weight * _infonce_rows(crops, sentences, keep)).sum() / weight.sum()
    got = local_pair_loss(crops, sentences, SCALE, owner, weight, reading="all")
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    # a sentence of the same image that matches crop 0 perfectly changes nothing for row 0 ...
    moved = sentences.clone()
    moved[1] = crops[0] * 3
    rows = _infonce_rows(crops, moved, keep)
    assert float(rows[0]) == pytest.approx(float(_infonce_rows(crops, sentences, keep)[0]), rel=1e-6)
    # ... and the loss has no gradient from row 0 through the other same-image pairs' embeddings
    crops.requires_grad_(True)
    only_first = torch.tensor([1.0, 0, 0, 0, 0, 0])
    contrastive_loss(crops, sentences, SCALE, weights=only_first, groups=owner).backward()
    assert torch.all(crops.grad[1:3] == 0) and crops.grad[3:].abs().sum() > 0


def test_identity_tsl_target_is_the_matrix_against_the_identity() -> None:
    torch.manual_seed(1)
    pooled, target = torch.randn(4, 5), torch.randn(4, 5)
    valid = torch.tensor([True, True, False, True])
    similarity = F.normalize(pooled, dim=-1) @ F.normalize(target, dim=-1).T
    use = [0, 1, 3]  # invalid rows and columns are masked
    expected = ((similarity[use][:, use] - torch.eye(3)) ** 2).mean()
    loss, _ = tsl_loss(pooled, target, valid, tsl_target="identity")
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    diagonal, _ = tsl_loss(pooled, target, valid)
    assert float(diagonal) == pytest.approx(float(((similarity.diagonal()[use] - 1) ** 2).mean()), rel=1e-6)
    # with one row the two readings agree; same-image columns are left out of a row's identity term
    one, _ = tsl_loss(pooled[:1], target[:1], valid[:1], tsl_target="identity")
    assert float(one) == pytest.approx(float((similarity[0, 0] - 1) ** 2), rel=1e-6)
    grouped, _ = tsl_loss(pooled, target, valid, tsl_target="identity", groups=torch.tensor([0, 0, 1, 2]))
    rows = [((similarity[0, [0, 3]] - torch.tensor([1.0, 0])) ** 2).mean(),
            ((similarity[1, [1, 3]] - torch.tensor([1.0, 0])) ** 2).mean(),
            ((similarity[3, [0, 1, 3]] - torch.tensor([0, 0, 1.0])) ** 2).mean()]
    assert float(grouped) == pytest.approx(float(torch.stack(rows).mean()), rel=1e-6)


def test_train_cli_records_the_loss_readings(tiny_world, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_world.model), "--data", str(tiny_world.mined), "--out", str(out),
                 "--local-pairs", "2", "--local-pair-loss", "all", "--tsl-target", "identity", "--max-steps", "1",
                 "--batch-size", "2", "--max-text-len", "52", "--keep-positions", "4", "--num-workers", "0",
                 "--no-progress"]) == 0
    config = json.loads((out / "train_config.json").read_text())["config"]
    assert (config["local_pair_loss"], config["tsl_target"]) == ("all", "identity")
    with pytest.raises(SystemExit):
        main(["train", "--model", "m", "--data", "d", "--out", "o", "--tsl-target", "offdiag"])
    assert "invalid choice" in capsys.readouterr().err
