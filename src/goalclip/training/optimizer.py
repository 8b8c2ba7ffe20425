"""The optimizer: AdamW with CLIP's weight-decay groups (or the reference recipe's one group), fused on a GPU."""

from __future__ import annotations

import torch


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Fused AdamW (one kernel for every parameter instead of a loop over them) needs every
    parameter on a CUDA device and floating point; elsewhere AdamW's default implementation runs."""
    return bool(params) and all(p.device.type == "cuda" and p.is_floating_point() for p in params)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, decay_all: bool) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in one group when ``decay_all`` (the reference recipe),
    else with no weight decay on biases, norms, embeddings and the logit scale (as CLIP trains), nor on
    SigLIP's logit bias and attention-pooling probe (a learned query token, as CLIP's class embedding is).

    Fused when :func:`fused_adamw_supported` (so move the model to its device first)."""
    params = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    fused = {"fused": True} if fused_adamw_supported([p for _, p in params]) else {}
    if decay_all:
        return torch.optim.AdamW([{"params": [p for _, p in params], "weight_decay": weight_decay}], lr=lr, **fused)
    decay, no_decay = [], []
    for name, param in params:
        flat = param.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("head.probe")
        (no_decay if flat else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, **fused)
