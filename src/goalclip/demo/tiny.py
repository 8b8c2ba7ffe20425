"""A small CLIP and a small SigLIP built from scratch for the demo and the tests, which cannot download one.

``build_tiny_clip`` makes a randomly initialised ``CLIPModel`` with a CLIP-style BPE tokenizer
trained on the given texts; everything downstream treats it exactly like
``openai/clip-vit-base-patch16`` loaded from a folder. ``build_tiny_siglip`` does the same for a
``SiglipModel``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import transformers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from goalclip.core.text import clean_text
from goalclip.models.backbone import align_sub_configs
from goalclip.models.clip import ClipBundle


def train_tokenizer(texts: Sequence[str], vocab_size: int = 1000) -> CLIPTokenizer:
    """Train a small CLIP-style BPE tokenizer (same normaliser, pre-tokeniser, ``</w>`` suffix).

    The demo and the tests cannot download OpenAI's vocabulary. Words come from the real CLIP
    fast tokenizer's normaliser and pre-tokeniser (tokenizers library); the merges are learned
    here because the library's BPE trainer breaks frequency ties in a different order on each
    run, which would make the demo irreproducible. Ties go to the lexicographically smallest
    pair. Every byte, and every byte as a word end (``x</w>``), is in the vocabulary as in
    OpenAI's, so no word becomes the unknown token (which is ``<|endoftext|>``, where the text
    tower pools).
    """
    from collections import Counter

    from tokenizers.pre_tokenizers import ByteLevel

    template = CLIPTokenizer().backend_tokenizer
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        normalized = template.normalizer.normalize_str(clean_text(text))
        for word, _ in template.pre_tokenizer.pre_tokenize_str(normalized):
            words[tuple(word[:-1]) + (word[-1] + "</w>",)] += 1
    alphabet = sorted(ByteLevel.alphabet())
    vocab_list = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    while len(vocab_list) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab_list.append(best[0] + best[1])
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def build_tiny_clip(
    texts: Sequence[str],
    *,
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 128,
    text_width: int | None = None,
    layers: int = 4,
    heads: int = 4,
    projection_dim: int = 128,
    context_length: int = 32,
    vocab_size: int = 1000,
    seed: int = 0,
) -> ClipBundle:
    """A small randomly initialised CLIP with a tokenizer trained on ``texts``.

    ``width`` is the vision tower's and, unless ``text_width`` is given, the text tower's.
    """
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.model_max_length = context_length
    common = {"num_hidden_layers": layers, "num_attention_heads": heads, "hidden_act": "quick_gelu"}
    text_width = text_width or width
    config = align_sub_configs(CLIPConfig(
        text_config={
            **common,
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": context_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            **common,
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=projection_dim,
    ))
    torch.manual_seed(seed)
    model = CLIPModel(config)
    processor_class = getattr(transformers, "CLIPImageProcessorPil", CLIPImageProcessor)
    processor = processor_class(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return ClipBundle(model, tokenizer, processor)


def siglip_tokenizer(texts: Sequence[str], context_length: int) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer in SigLIP's layout, built from ``texts`` (SigLIP's SentencePiece
    vocabulary cannot be downloaded here).

    Like SigLIP's: lowercased, ``</s>`` appended to every text and used as the pad token, ``<unk>`` for
    unknown words, and only ``input_ids`` as model input (SigLIP's text tower takes no attention mask).
    A real SigLIP tokenizer is a SentencePiece model; everything downstream only needs a fast
    tokenizer's ids and offsets, which this one gives too.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for text in texts for w, _ in pre.pre_tokenize_str(clean_text(text).lower())})
    vocab = {token: index for index, token in enumerate(["<pad>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>", unk_token="<unk>",
                                   model_max_length=context_length, model_input_names=["input_ids"])


def build_tiny_siglip(
    texts: Sequence[str],
    *,
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 4,
    heads: int = 4,
    context_length: int = 16,
    seed: int = 0,
) -> ClipBundle:
    """A small randomly initialised ``SiglipModel`` (SigLIP's temperature and bias init) with a tokenizer
    from ``texts``; downstream it is treated exactly like ``google/siglip-base-patch16-224`` in a folder."""
    tokenizer = siglip_tokenizer(texts, context_length)
    common = {"num_hidden_layers": layers, "num_attention_heads": heads, "hidden_size": width,
              "intermediate_size": 4 * width}
    config = SiglipConfig(
        text_config={**common, "vocab_size": len(tokenizer), "max_position_embeddings": context_length,
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "bos_token_id": tokenizer.eos_token_id},
        vision_config={**common, "image_size": image_size, "patch_size": patch_size},
    )
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():  # SigLIP's initial temperature 10 and bias -10 (transformers initialises both to 0)
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    processor_class = getattr(transformers, "SiglipImageProcessorPil", SiglipImageProcessor)
    processor = processor_class(size={"height": image_size, "width": image_size})
    return ClipBundle(model, tokenizer, processor)
