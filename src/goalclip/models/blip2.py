"""BLIP-2 retrieval checkpoints as evaluation rows (``goalclip eval --model Salesforce/blip2-itm-vit-g``).

GOAL's supplementary C compares against BLIP-2 on long-caption retrieval. A checkpoint whose config says
``model_type: blip-2`` is loaded as transformers' ``Blip2ForImageTextRetrieval`` and scored with its
image-text contrastive (ITC) head, what the model computes with ``use_image_text_matching_head=False``:

* an image is its Q-Former's query tokens (32 for the released checkpoints) attending to the frozen
  ViT's patches, each through the vision projection: several embeddings per image;
* a text is the Q-Former's text-only pass, its first ([CLS]) token through the text projection;
* their score is the highest cosine over the query tokens (``evaluation.metrics.similarity``).

A ``Blip2Bundle`` is driven by the shared encode path (``models/embed.py``) like an open_clip one: its
model answers ``encode_image`` / ``encode_text`` and the bundle tokenizes itself. Texts are cut at the
Q-Former's position table (512 for the released checkpoints; ``--max-text-len`` or ``--context`` cut them
shorter) with the tokenizer's own right truncation, which keeps the closing [SEP]. Only encoding is offered:
training, mining, search and viz need a CLIP or SigLIP and refuse these checkpoints by their model type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Blip2ForImageTextRetrieval, PretrainedConfig

from goalclip.core.text import clean_text
from goalclip.models.clip import ModelLoadError, key_problems, load_processors

MODEL_TYPE = "blip-2"


def is_blip2(source: str) -> bool:
    """Whether a hub id or folder holds a BLIP-2 checkpoint (its ``config.json``'s ``model_type``).

    Anything without a readable config (a state-dict file, a missing folder) is not: ``load_clip`` then
    says what is wrong with it.
    """
    if os.path.isfile(source):
        return False
    try:
        config, _ = PretrainedConfig.get_config_dict(source)
    except (OSError, ValueError):
        return False
    return config.get("model_type") == MODEL_TYPE


class Blip2Encoder(torch.nn.Module):
    """The two ITC towers of a ``Blip2ForImageTextRetrieval`` under open_clip's ``encode_*`` names."""

    def __init__(self, model: Blip2ForImageTextRetrieval, pad_token_id: int):
        super().__init__()
        self.retrieval = model
        self.pad_token_id = pad_token_id
        self.name_or_path = model.name_or_path  # what errors about its embeddings name

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, queries, D]`` unnormalised query embeddings of each image."""
        model = self.retrieval
        patches = model.vision_model(pixel_values=pixel_values).last_hidden_state
        patch_mask = torch.ones(patches.shape[:-1], dtype=torch.long, device=patches.device)
        queries = model.query_tokens.expand(patches.shape[0], -1, -1)
        states = model.qformer(query_embeds=queries, encoder_hidden_states=patches,
                               encoder_attention_mask=patch_mask).last_hidden_state
        return model.vision_projection(states.to(model.vision_projection.weight.dtype))

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` unnormalised text embeddings; the pad ids (the batch's right padding) are masked out."""
        model = self.retrieval
        mask = (input_ids != self.pad_token_id).long()
        states = model.qformer(query_embeds=model.embeddings(input_ids=input_ids), query_length=0,
                               attention_mask=mask).last_hidden_state
        return model.text_projection(states[:, 0].to(model.text_projection.weight.dtype))


@dataclass
class Blip2Bundle:
    """A BLIP-2 retrieval model with its BERT tokenizer and image processor, encoded like a ``ClipBundle``."""

    model: Blip2Encoder
    tokenizer: Any
    image_processor: Any

    @property
    def image_tokens(self) -> int:
        """Embeddings per image: the query tokens."""
        return int(self.model.retrieval.config.num_query_tokens)

    @property
    def embed_dim(self) -> int:
        return int(self.model.retrieval.config.image_text_hidden_size)

    @property
    def max_text_len(self) -> int:
        """The Q-Former's position table: the most tokens a text can have."""
        return int(self.model.retrieval.config.qformer_config.max_position_embeddings)

    def tokenize(self, texts: list[str], max_len: int | None = None) -> dict[str, torch.Tensor]:
        """Token ids padded to the longest text and cut at ``max_len`` (at most the context), [SEP] kept last."""
        max_len = min(max_len or self.max_text_len, self.max_text_len)
        tokens = self.tokenizer([clean_text(t) for t in texts], padding="longest", truncation=True,
                                max_length=max_len, return_tensors="pt")
        return {"input_ids": tokens["input_ids"]}

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text, [CLS] and [SEP] included, before any cut."""
        return [len(ids) for ids in self.tokenizer([clean_text(t) for t in texts], verbose=False)["input_ids"]]


def load_blip2(source: str, *, device: str | torch.device = "cpu") -> Blip2Bundle:
    """Load a BLIP-2 retrieval checkpoint strictly (in fp32) with its tokenizer and image processor."""
    model, info = Blip2ForImageTextRetrieval.from_pretrained(source, output_loading_info=True,
                                                             dtype=torch.float32)
    problems = key_problems(info["missing_keys"], info["unexpected_keys"], [])  # a size mismatch raises
    if problems:
        raise ModelLoadError(f"{source}: the weights do not fit a Blip2ForImageTextRetrieval; {problems}")
    tokenizer, image_processor = load_processors(source)
    if tokenizer.pad_token_id is None or tokenizer.padding_side != "right":
        raise ModelLoadError(f"{source}: its tokenizer must pad on the right with a pad token (BERT's does)")
    model.eval()
    return Blip2Bundle(Blip2Encoder(model, tokenizer.pad_token_id).to(device), tokenizer, image_processor)
