"""Learned TSL projections (FAST-GOAL's psi_v, psi_t): trainable heads used only for the TSL pooled features.

With ``--tsl-heads shared`` (the reference code's choice) TSL sends pooled tokens through CLIP's own
post-layernorm and projection. ``separate`` gives TSL its own LayerNorm + Linear per tower,
initialised as copies of CLIP's, so at the first step both choices compute the same loss. The heads
are not part of the ``CLIPModel``: they are saved beside the exported model
(``tsl_heads.safetensors`` + ``tsl_heads.json``) so the export stays a plain CLIP folder, and a
later run with ``--model <that folder> --tsl-heads separate`` picks them up again.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

from goalclip.core.manifest import atomic_path, atomic_write

logger = logging.getLogger(__name__)

HEADS_FILE = "tsl_heads.safetensors"
HEADS_META = "tsl_heads.json"
HEADS_FORMAT = "goalclip-tsl-heads"


class TslHeads(torch.nn.Module):
    """psi_v = Linear(LayerNorm(.)) on pooled patch tokens, psi_t the same on pooled caption tokens."""

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.vision_norm = copy.deepcopy(clip.vision_model.post_layernorm)
        self.vision_proj = copy.deepcopy(clip.visual_projection)
        self.text_norm = copy.deepcopy(clip.text_model.final_layer_norm)
        self.text_proj = copy.deepcopy(clip.text_projection)

    def project_patches(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.vision_proj(self.vision_norm(pooled))

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.text_norm(pooled))


def save_heads(heads: TslHeads, folder: Path, initialised_from: str) -> None:
    """Write the heads (as float32) and a small JSON saying what they are next to an exported model."""
    state = {k: v.detach().float().contiguous().cpu() for k, v in heads.state_dict().items()}
    with atomic_path(folder / HEADS_FILE) as tmp:
        save_file(state, str(tmp))
    meta = {"format": HEADS_FORMAT, "version": 1, "initialised_from": initialised_from,
            "use": "TSL projections psi_v/psi_t for continued training with --tsl-heads separate; "
                   "not used at inference (the CLIP in this folder is complete without them)"}
    with atomic_write(folder / HEADS_META) as handle:
        handle.write(json.dumps(meta, indent=2) + "\n")


def build_heads(clip: CLIPModel, model_source: str) -> tuple[TslHeads, str]:
    """Heads for a run starting from ``model_source``: its saved heads when it has them, else CLIP copies.

    Returns the heads and where they came from (the folder, or ``"clip"``), for the run record.
    """
    if not isinstance(clip, CLIPModel):
        raise ValueError(f"{model_source}: --tsl-heads separate learns copies of CLIP's post-layernorm and "
                         f"projection; a {clip.config.model_type} model pools regions with its own attention "
                         "head: use --tsl-heads shared")
    heads = TslHeads(clip)
    saved = Path(model_source) / HEADS_FILE
    if not saved.is_file():
        return heads, "clip"
    try:
        heads.load_state_dict(load_file(str(saved)))
    except (RuntimeError, OSError) as exc:
        raise ValueError(f"{saved}: TSL heads do not fit this model ({str(exc).splitlines()[0]})") from None
    logger.info("loaded TSL heads from %s", saved)
    return heads, model_source
