"""Gradient caching is exact for SigLIP as for CLIP: the same loss and gradients (temperature and bias
included) as one full-batch step, with top-2 weighted pairs and TSL through SigLIP's pooling head."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from goalclip.models.clip import load_clip, prepare_text_positions
from goalclip.training.config import LossWeights
from goalclip.training.data import Collate, TrainDataset, load_examples
from goalclip.training.gradcache import grad_cache_step
from goalclip.training.step import ChunkedStepModule, StepModule
from tests.training.test_gradcache import topk_manifest  # noqa: F401 (a fixture: the top-2 manifest)

BATCH, CHUNK = 6, 2


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_grad_cache_step_equals_the_plain_step_for_siglip(tiny_siglip, topk_manifest) -> None:  # noqa: F811
    bundle = load_clip(str(tiny_siglip))
    context = prepare_text_positions(bundle, 52, 4)
    examples = load_examples(topk_manifest, need_local=True, local_pairs=2, pair_weighting="similarity")
    dataset = TrainDataset(examples[:BATCH], bundle, need_local=True, pair_weighting="similarity")
    batch = dataset.to_device(Collate(pad_id=bundle.tokenizer.pad_token_id, weighted=True, pad_to=context)(
        [dataset[i] for i in range(BATCH)]), "cpu")
    assert batch["caption_ids"].shape[1] == batch["sentence_ids"].shape[1] == context
    module = ChunkedStepModule(bundle.model, "goal", LossWeights())
    want_loss, _ = StepModule(module.clip, "goal", LossWeights())(batch)
    want_loss.backward()
    want = _grads(module)
    module.zero_grad(set_to_none=True)
    AcceleratorState._reset_state()
    try:
        loss, logs = grad_cache_step(Accelerator(cpu=True), module, batch, CHUNK)
    finally:
        AcceleratorState._reset_state()
    assert logs["grad_cache_chunks"].item() >= BATCH // CHUNK
    assert loss == pytest.approx(want_loss.item(), rel=1e-6)
    got = _grads(module)
    assert got.keys() == want.keys() and {"clip.logit_scale", "clip.logit_bias"} <= want.keys()
    assert want["clip.vision_model.head.probe"].abs().sum() > 0  # TSL and the image embedding train the head
    scale = max(g.abs().max().item() for g in want.values())
    for name, value in want.items():
        assert torch.allclose(got[name], value, rtol=0, atol=1e-5 * scale), name
