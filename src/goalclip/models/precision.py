"""The precision inference runs in (``--precision`` of ``goalclip mine`` and ``goalclip search``).

Weights stay fp32 (:func:`goalclip.models.clip.load_clip`); ``bf16`` autocasts the forwards, which puts the
matmuls on bf16 tensor cores, and ``fp32`` keeps fp32 activations with TF32 matmuls on CUDA (tensor cores
with a 10-bit mantissa, as PyTorch's ``high`` float32 matmul precision). ``auto`` is bf16 on CUDA, where
mining's pair scores stay within 0.01 of fp32 (the best pair may change where fp32 had a runner-up that
close; tests/models/test_gpu_inference_precision.py, on CPU autocast), and fp32 elsewhere (CPU bf16 without AMX is
slower than fp32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from goalclip.core.options import INFERENCE_PRECISIONS


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``precision`` on ``device``; ValueError for anything else."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


@contextlib.contextmanager
def inference_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block in ``precision`` (resolved) on ``device``: bf16 autocast, or fp32 with TF32 matmuls on CUDA."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    before = torch.get_float32_matmul_precision()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def describe(precision: str, model: torch.nn.Module, device: torch.device) -> str:
    """The log line's words: e.g. 'bf16 autocast over torch.float32 weights on cuda:0'."""
    dtype = next(model.parameters()).dtype
    mode = "bf16 autocast" if precision == "bf16" else "fp32 (TF32 matmuls)" if device.type == "cuda" else "fp32"
    return f"{mode} over {dtype} weights on {device}"
