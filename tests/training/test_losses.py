"""Losses checked against independent hand computations (explicit math loops) on tiny tensors.

The gathered (several-process) path is checked where it runs, in tests/training/test_distributed.py:
two processes against one, with a no-gather negative control.
"""

from __future__ import annotations

import math

import pytest
import torch

from goalclip.training.losses import (
    METHOD_TERMS,
    LossWeights,
    combine_losses,
    contrastive_loss,
    masked_mean,
    tsl_loss,
)

IMAGES = [[1.0, 2.0, 0.5], [-1.0, 0.3, 2.0], [0.2, -0.7, 1.1]]
TEXTS = [[0.9, 1.5, 0.1], [-0.5, 0.2, 1.0], [1.0, 0.0, -1.0]]


def _unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in row))
    return [v / norm for v in row]


def _cosine_matrix(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    ua, ub = [_unit(r) for r in a], [_unit(r) for r in b]
    return [[sum(x * y for x, y in zip(ra, rb)) for rb in ub] for ra in ua]


def _cross_entropy_rows(logits: list[list[float]]) -> float:
    """Mean over rows of -log softmax(row)[row index], written out with math.exp/log."""
    total = 0.0
    for i, row in enumerate(logits):
        total += math.log(sum(math.exp(v) for v in row)) - row[i]
    return total / len(logits)


def _hand_clip_loss(images: list[list[float]], texts: list[list[float]], scale: float) -> float:
    cos = _cosine_matrix(images, texts)
    per_image = [[scale * v for v in row] for row in cos]
    per_text = [[per_image[i][j] for i in range(len(cos))] for j in range(len(cos))]
    return 0.5 * (_cross_entropy_rows(per_image) + _cross_entropy_rows(per_text))


def test_contrastive_matches_hand_computation() -> None:
    scale = 2.5
    loss = contrastive_loss(
        torch.tensor(IMAGES, dtype=torch.float64),
        torch.tensor(TEXTS, dtype=torch.float64),
        torch.tensor(scale, dtype=torch.float64),
    )
    assert loss.item() == pytest.approx(_hand_clip_loss(IMAGES, TEXTS, scale), rel=1e-12)


def test_contrastive_is_symmetric_and_normalises_inside() -> None:
    img = torch.tensor(IMAGES, dtype=torch.float64)
    txt = torch.tensor(TEXTS, dtype=torch.float64)
    scale = torch.tensor(3.0, dtype=torch.float64)
    loss = contrastive_loss(img, txt, scale)
    assert contrastive_loss(txt, img, scale).item() == pytest.approx(loss.item(), rel=1e-12)
    rescaled = contrastive_loss(img * torch.tensor([[2.0], [0.1], [7.0]]), txt * 5.0, scale)
    assert rescaled.item() == pytest.approx(loss.item(), rel=1e-12)
    # A batch whose pairs are perfectly aligned and mutually orthogonal beats the random pairing.
    eye = torch.eye(3, dtype=torch.float64)
    assert contrastive_loss(eye, eye, scale).item() < loss.item()


def test_contrastive_logit_scale_gradient() -> None:
    """dL/ds = 1/2 * sum over both directions of mean_i (sum_j p_ij c_ij - c_ii), by hand."""
    s = 1.7
    scale = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss(
        torch.tensor(IMAGES, dtype=torch.float64), torch.tensor(TEXTS, dtype=torch.float64), scale
    )
    loss.backward()
    cos = _cosine_matrix(IMAGES, TEXTS)
    n = len(cos)
    expected = 0.0
    for matrix in (cos, [[cos[i][j] for i in range(n)] for j in range(n)]):
        for i, row in enumerate(matrix):
            weights = [math.exp(s * v) for v in row]
            z = sum(weights)
            expected += (sum(w * v for w, v in zip(weights, row)) / z - row[i]) / n
    assert scale.grad is not None
    assert scale.grad.item() == pytest.approx(0.5 * expected, rel=1e-10)


def test_contrastive_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[b, D\]"):
        contrastive_loss(torch.zeros(3, 4), torch.zeros(2, 4), torch.tensor(1.0))


POOLED = [[1.0, 0.0, 1.0], [0.5, 0.5, -1.0], [2.0, 1.0, 0.0], [0.3, -0.2, 0.9]]
TARGET = [[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [-0.3, 0.2, 0.4]]


def _hand_cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(_unit(a), _unit(b)))


def test_tsl_matches_hand_computation_over_valid_rows_only() -> None:
    valid = [True, False, True, True]
    pooled = torch.tensor(POOLED, dtype=torch.float64)
    pooled[1] = float("nan")  # a garbage masked row must not leak into the loss or its gradient
    pooled.requires_grad_(True)
    target = torch.tensor(TARGET, dtype=torch.float64, requires_grad=True)
    loss, cosines = tsl_loss(pooled, target, torch.tensor(valid))
    rows = [i for i, ok in enumerate(valid) if ok]
    expected = sum((_hand_cos(POOLED[i], TARGET[i]) - 1.0) ** 2 for i in rows) / len(rows)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    for i in rows:
        assert cosines[i].item() == pytest.approx(_hand_cos(POOLED[i], TARGET[i]), rel=1e-12)
    assert math.isnan(cosines[1].item())
    assert not cosines.requires_grad
    loss.backward()
    assert pooled.grad is not None and target.grad is not None
    assert torch.isfinite(pooled.grad).all() and torch.isfinite(target.grad).all()
    assert torch.equal(pooled.grad[1], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(target.grad[1], torch.zeros(3, dtype=torch.float64))
    assert pooled.grad[0].abs().sum() > 0


def test_tsl_all_invalid_is_zero_with_a_graph() -> None:
    pooled = torch.tensor(POOLED, requires_grad=True)
    target = torch.tensor(TARGET, requires_grad=True)
    loss, cosines = tsl_loss(pooled, target, torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert pooled.grad is not None and torch.equal(pooled.grad, torch.zeros_like(pooled))
    assert torch.isnan(cosines).all()


def test_tsl_perfect_alignment_is_zero_and_shapes_are_checked() -> None:
    x = torch.tensor(POOLED)
    loss, cosines = tsl_loss(x, 3.0 * x, torch.ones(4, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(cosines, torch.ones(4))
    with pytest.raises(ValueError, match=r"\[b, D\]"):
        tsl_loss(x, x[:2], torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid"):
        tsl_loss(x, x, torch.ones(3, dtype=torch.bool))


def test_masked_mean_matches_loop_and_empty_rows_are_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(3, 5, 4, generator=generator)
    mask = torch.tensor(
        [[True, False, True, True, False], [False] * 5, [False, False, False, False, True]]
    )
    pooled = masked_mean(states, mask)
    for b in range(3):
        chosen = [states[b, t] for t in range(5) if mask[b, t]]
        expected = sum(chosen) / len(chosen) if chosen else torch.zeros(4)
        assert torch.allclose(pooled[b], expected, atol=1e-6)
    assert torch.equal(pooled[1], torch.zeros(4))


def test_masked_mean_long_bf16_span_is_exact() -> None:
    """A box over 300 patch cells: a bf16 count would round 300 and bias the mean."""
    states = torch.ones(1, 400, 2, dtype=torch.bfloat16)
    mask = torch.zeros(1, 400, dtype=torch.bool)
    mask[0, :300] = True
    pooled = masked_mean(states, mask)
    assert pooled.dtype == torch.bfloat16
    assert torch.equal(pooled, torch.ones(1, 2, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"\[B, L, D\]"):
        masked_mean(states, mask[:, :10])


TERMS = {
    "global": torch.tensor(2.0),
    "local": torch.tensor(3.0),
    "tsl_image": torch.tensor(0.25),
    "tsl_text": torch.tensor(0.5),
}


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("goal", 1.0 * 2.0 + 0.5 * 3.0 + 1.0 * 0.25 + 1.0 * 0.5),
        ("wo-tsl", 1.0 * 2.0 + 0.5 * 3.0),
        ("global", 2.0),
        ("local", 3.0),  # the local baseline is the local loss alone
    ],
)
def test_combine_losses_default_weights(method: str, expected: float) -> None:
    assert combine_losses(TERMS, method, LossWeights()).item() == pytest.approx(expected)


def test_combine_losses_custom_weights_and_only_needed_terms() -> None:
    weights = LossWeights(global_=0.1, local=2.0, tsl=4.0)
    total = combine_losses(TERMS, "goal", weights)
    assert total.item() == pytest.approx(0.1 * 2.0 + 2.0 * 3.0 + 4.0 * 0.25 + 4.0 * 0.5)
    # weights balance terms: a single-term method trains on its term unweighted
    assert combine_losses({"global": TERMS["global"]}, "global", weights).item() == pytest.approx(2.0)
    assert combine_losses({"local": TERMS["local"]}, "local", weights).item() == pytest.approx(3.0)
    assert set(METHOD_TERMS) == {"goal", "wo-tsl", "global", "local"}


def test_combine_losses_errors() -> None:
    with pytest.raises(ValueError, match="goal, wo-tsl, global, local"):
        combine_losses(TERMS, "tsl-only", LossWeights())
    with pytest.raises(ValueError, match="tsl_text"):
        combine_losses({k: v for k, v in TERMS.items() if k != "tsl_text"}, "goal", LossWeights())
