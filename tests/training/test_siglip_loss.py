"""SigLIP's sigmoid loss: equal to a plain-torch recomputation and to transformers' own, and the same
with 2 processes at batch B as with 1 process at batch 2B (gradients included)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from goalclip.training.losses import local_pair_loss, sigmoid_loss

WORKER = Path(__file__).with_name("siglip_dist_worker.py")


def _worker():
    spec = importlib.util.spec_from_file_location("goalclip_tests_siglip_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigmoid_loss_equals_plain_recomputation() -> None:
    torch.manual_seed(0)
    images, texts, weights = torch.randn(5, 4), torch.randn(5, 4), torch.rand(5) + 0.1
    scale, bias = torch.tensor(7.0), torch.tensor(-3.0)
    img, txt = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    cells = []
    for i in range(5):
        row = [-F.logsigmoid((1.0 if i == j else -1.0) * (scale * img[i] @ txt[j] + bias)) for j in range(5)]
        cells.append(torch.stack(row).sum())
    rows = torch.stack(cells)
    assert torch.allclose(sigmoid_loss(images, texts, scale, bias), rows.mean(), atol=1e-6)
    weighted = sigmoid_loss(images, texts, scale, bias, weights=weights)
    assert torch.allclose(weighted, (weights * rows).sum() / weights.sum(), atol=1e-6)


def test_sigmoid_loss_equals_siglip_models_own_loss(tiny_siglip_bundle) -> None:
    """transformers' ``SiglipModel(return_loss=True)`` (big_vision's formula) on the same inputs."""
    model, tokenizer = tiny_siglip_bundle.model, tiny_siglip_bundle.tokenizer
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-4.0)
    ids = tokenizer(["a red square", "a blue circle", "nothing else"], padding="max_length",
                    return_tensors="pt")["input_ids"]
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, return_loss=True)
        ours = sigmoid_loss(out.image_embeds, out.text_embeds, model.logit_scale.exp(), model.logit_bias)
    assert torch.allclose(ours, out.loss, atol=1e-5)


@pytest.mark.multiprocess
def test_two_processes_equal_one_process_at_twice_the_batch(tmp_path: Path, launch_ranks) -> None:
    done = launch_ranks([WORKER, f"--out={tmp_path}"], n=2)
    assert done.returncode == 0, done.stderr[-3000:]
    results = torch.load(tmp_path / "results.pt")
    worker = _worker()
    for weighted in (False, True):
        loss, grads = worker.loss_and_grads(slice(0, worker.BATCH), weighted)
        for split in worker.SPLITS:
            got = results[f"{split}/{'weighted' if weighted else 'plain'}"]
            assert torch.allclose(got["loss"], loss, atol=1e-6), (split, weighted)
            for name, grad in grads.items():
                assert torch.allclose(got[name], grad, atol=1e-6), (split, weighted, name)


def test_sigmoid_loss_leaves_same_image_pairs_out_of_each_others_cells() -> None:
    """Top-k pairs under ``--local-pair-loss all``: the cells of a row's other same-image pairs are neither
    positives nor negatives (as contrastive_loss's groups), and L_local's readings reach the sigmoid loss."""
    torch.manual_seed(1)
    images, texts, weights = torch.randn(5, 4), torch.randn(5, 4), torch.rand(5) + 0.1
    groups = torch.tensor([0, 0, 1, 2, 2])
    scale, bias = torch.tensor(5.0), torch.tensor(-2.0)
    img, txt = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    rows = []
    for i in range(5):
        cells = [-F.logsigmoid((1.0 if i == j else -1.0) * (scale * img[i] @ txt[j] + bias))
                 for j in range(5) if i == j or groups[i] != groups[j]]
        rows.append(torch.stack(cells).sum())
    rows = torch.stack(rows)
    grouped = sigmoid_loss(images, texts, scale, bias, weights=weights, groups=groups)
    assert torch.allclose(grouped, (weights * rows).sum() / weights.sum(), atol=1e-6)
    contrast = functools.partial(sigmoid_loss, logit_bias=bias)
    every = local_pair_loss(images, texts, scale, groups, weights, "all", contrast=contrast)
    assert torch.allclose(every, grouped, atol=1e-6)
    best = local_pair_loss(images, texts, scale, groups, weights, "best", contrast=contrast)
    first = torch.tensor([True, False, True, True, False])
    assert torch.allclose(best, sigmoid_loss(images[first], texts[first], scale, bias), atol=1e-6)
