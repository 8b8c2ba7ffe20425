"""The goalclip recipe's weight-decay groups on SigLIP: its temperature, bias and pooling-head probe are not decayed."""

from __future__ import annotations

from goalclip.training.optimizer import build_optimizer


def test_siglip_temperature_bias_and_probe_are_not_decayed(tiny_siglip_bundle) -> None:
    model = tiny_siglip_bundle.model
    optimizer = build_optimizer(model, 1e-3, 0.05, decay_all=False)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for group in optimizer.param_groups if group["weight_decay"] == 0
                 for p in group["params"]}
    assert {"logit_scale", "logit_bias", "vision_model.head.probe",
            "text_model.embeddings.position_embedding.weight"} <= undecayed
    assert "vision_model.head.attention.in_proj_weight" not in undecayed
