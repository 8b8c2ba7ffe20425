"""A tiny randomly initialised LLaVA-NeXT, built offline, for tests and benchmarks.

A CLIP vision tower and a Llama-style language model of a few thousand parameters, a word-level
tokenizer built with the ``tokenizers`` library and a Mistral-style chat template, saved as a
folder that ``AutoModelForImageTextToText`` / ``AutoProcessor`` load exactly like
``llava-hf/llava-v1.6-mistral-7b-hf``. Its text is noise; it exercises the plumbing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

WORDS = [
    "a", "the", "an", "red", "blue", "green", "yellow", "white", "black", "square", "circle", "shape",
    "picture", "image", "background", "plain", "small", "large", "left", "right", "top", "bottom", "of", "on",
    "in", "next", "to", "above", "below", "is", "are", "and", "with", "near", ".", ",",
    # Words that end a sentence when decoded (never produced by encoding), so random generations contain
    # finished sentences and the clean-up has something to keep.
    "here.", "there.", "it.", "them.", "too.",
]
SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "[INST]", "[/INST]")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %} [/INST]{% else %}{% for c in m['content'] %}{{ c['text'] }}"
    "{% endfor %}{{ eos_token }}{% endif %}{% endfor %}"
)
GRID = [[32, 64], [64, 32], [64, 64]]


def build_tiny_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A word-level fast tokenizer (words joined by spaces when decoded) with an optional chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(dict.fromkeys(SPECIAL + tuple(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=["<image>", "[INST]", "[/INST]"], padding_side="left")
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_llava_next(
    out_dir: str | os.PathLike, *, seed: int = 0, chat_template: bool = True, width: int = 32, layers: int = 2
) -> Path:
    """Save a tiny LLaVA-NeXT (model, processor, tokenizer) to ``out_dir``; returns the folder.

    ``width`` and ``layers`` size the language model (the benchmark uses a larger one than the tests).
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = build_tiny_tokenizer(CHAT_TEMPLATE if chat_template else None)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=GRID)
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE if chat_template else None,
        patch_size=8, vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                                num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=1024,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id, initializer_range=0.2),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=GRID,
        vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    # Random weights loop on one token; a repetition penalty (in the saved generation config, as real
    # checkpoints ship theirs) makes greedy output varied, with sentence ends and some end-of-sequence.
    model.generation_config.repetition_penalty = 3.0
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if not chat_template:
        (out / "chat_template.jinja").unlink(missing_ok=True)
    return out
