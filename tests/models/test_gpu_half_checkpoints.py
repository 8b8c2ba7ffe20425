"""A CLIP folder stored in half precision trains with fp32 weights unless --precision bf16-weights says otherwise.

transformers' ``from_pretrained`` loads a folder's own dtype; an fp16 folder then trained in fp16 (and
fused AdamW on fp16 weights), although the default precision promises fp32 master weights.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from goalclip.cli import main
from goalclip.models.clip import load_clip, save_clip


@pytest.fixture(scope="module")
def fp16_model(tiny_world, tmp_path_factory):
    bundle = load_clip(str(tiny_world.model))
    bundle.model.half()
    folder = save_clip(bundle, tmp_path_factory.mktemp("fp16") / "model")
    assert {t.dtype for t in load_file(str(folder / "model.safetensors")).values()} == {torch.float16}
    return folder


def test_an_fp16_folder_trains_with_fp32_weights_and_a_finite_loss(tiny_world, fp16_model, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", str(fp16_model), "--data", str(tiny_world.mined), "--out", str(out),
                 "--max-steps", "2", "--batch-size", "2", "--max-text-len", "40", "--keep-positions", "4",
                 "--checkpoint-every", "1", "--log-every", "1", "--num-workers", "0", "--no-progress"]) == 0
    checkpoint = load_file(str(out / "checkpoints" / "step-1" / "model.safetensors"))
    assert {t.dtype for t in checkpoint.values()} == {torch.float32}
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_loading_states_the_dtype_it_keeps(fp16_model, caplog):
    with caplog.at_level(logging.INFO, logger="goalclip.models.clip"):
        assert load_clip(str(fp16_model)).model.dtype == torch.float32
        assert load_clip(str(fp16_model), dtype=torch.bfloat16).model.dtype == torch.bfloat16
    assert "stored in torch.float16, loaded as torch.float32" in caplog.text
