"""Import OpenAI-layout CLIP checkpoints (OpenAI CLIP, open_clip, Long-CLIP) as ``transformers.CLIPModel``.

Everything downstream (training, mining, evaluation) works on a ``ClipBundle``; this module turns
the other common checkpoint layout into one, so that a Long-CLIP ``.pt`` can be fine-tuned or
evaluated next to hub models and shipped as a folder that ``CLIPModel.from_pretrained`` loads.

The architecture is read from tensor shapes, as OpenAI's own ``build_model`` does: widths from
the layer norms and convolutions, depths from the resblock indices, patch and image size from the
patch convolution and the position table, context length and vocabulary from the text tables.
Heads cannot be read from shapes: OpenAI (and Long-CLIP) always use ``width // 64``; other
models pass the count explicitly.

Long-CLIP (github.com/beichenzbc/Long-CLIP, ``model/model_longclip.py``) keeps two 248-row text
position tables, ``positional_embedding`` and ``positional_embedding_res``, and adds them through
fixed masks: ``x + pos * mask1 + pos_res * mask2`` with ``mask1`` = 1 on rows 0..19 and ``mask2``
= 1 on rows 20..247 (plain tensors, not in the state dict). Only one of the two masks is non-zero
on any row, so the sum equals one table: rows 0..19 of ``positional_embedding`` followed by rows
20.. of ``positional_embedding_res``. Adding an exact zero changes no float, so the folded table
reproduces Long-CLIP's text embeddings exactly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase

from goalclip.models.backbone import align_sub_configs
from goalclip.models.clip import (
    ClipBundle,
    ModelLoadError,
    load_processors,
)
from goalclip.models.embed import crop_geometry

logger = logging.getLogger(__name__)

# Long-CLIP's mask boundary: rows below it come from ``positional_embedding``.
LONGCLIP_KEEP = 20
OPENAI_HEAD_WIDTH = 64
# Entries that are not weights: OpenAI's JIT archives carry the first three, and some open_clip
# versions saved the causal mask as a persistent buffer.
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")

_BLOCK_KEYS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP_KEYS = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
# OpenAI multiplies ``x @ proj``; a Linear layer computes ``x @ W.T``, so these are transposed.
_TRANSPOSED_KEYS = {
    "text_projection": "text_projection.weight",
    "visual.proj": "visual_projection.weight",
}


def fold_longclip_positions(state_dict: Mapping[str, Tensor], keep: int = LONGCLIP_KEEP) -> dict[str, Tensor]:
    """Merge Long-CLIP's masked pair of text position tables into one ``positional_embedding``.

    Returns a new dict without ``positional_embedding_res``; a state dict without it is returned
    unchanged (as a copy). See the module docstring for the masks this reproduces.
    """
    state = dict(state_dict)
    residual = state.pop("positional_embedding_res", None)
    if residual is None:
        return state
    base = state["positional_embedding"]
    if residual.shape != base.shape:
        raise ModelLoadError(
            f"positional_embedding {tuple(base.shape)} and positional_embedding_res "
            f"{tuple(residual.shape)} differ in shape; this is not a Long-CLIP checkpoint"
        )
    if not 0 <= keep <= base.shape[0]:
        raise ModelLoadError(f"keep={keep} is outside the {base.shape[0]} text positions")
    state["positional_embedding"] = torch.cat([base[:keep], residual[keep:]])
    return state


def _layer_count(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    if indices != set(range(len(indices))) or not indices:
        raise ModelLoadError(f"resblocks under {prefix!r} are missing or not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def _heads(width: int, override: int | None, tower: str) -> int:
    heads = override if override is not None else width // OPENAI_HEAD_WIDTH
    if heads < 1 or width % heads:
        hint = "" if override is not None else f" (OpenAI's rule width // {OPENAI_HEAD_WIDTH}); pass the head count"
        raise ModelLoadError(f"{tower} width {width} cannot be split into {heads} heads{hint}")
    return heads


def _require(state: Mapping[str, Tensor], *keys: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ModelLoadError(f"not an OpenAI-layout CLIP ViT state dict: missing {', '.join(missing)}")


def infer_openai_config(
    state_dict: Mapping[str, Tensor],
    *,
    text_heads: int | None = None,
    vision_heads: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> CLIPConfig:
    """A ``CLIPConfig`` for an OpenAI-layout ViT state dict, read from its tensor shapes.

    Special token ids come from ``tokenizer`` (they are defined there, not in the weights):
    ``CLIPModel`` pools text at the first ``eos_token_id``, so it must be the tokenizer's.
    """
    token_ids = (
        {}
        if tokenizer is None
        else {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    if "visual.attnpool.c_proj.weight" in state_dict or "visual.layer1.0.conv1.weight" in state_dict:
        raise ModelLoadError("ResNet CLIP image towers have no transformers.CLIPModel equivalent; use a ViT checkpoint")
    _require(
        state_dict, "visual.conv1.weight", "visual.positional_embedding", "visual.proj",
        "token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection",
    )
    patch_weight = state_dict["visual.conv1.weight"]
    vision_width, channels, patch_size = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    if grid * grid + 1 != state_dict["visual.positional_embedding"].shape[0]:
        raise ModelLoadError("visual.positional_embedding is not a square patch grid plus a class token")
    text_width = state_dict["ln_final.weight"].shape[0]
    projection_dim = state_dict["text_projection"].shape[1]
    if state_dict["visual.proj"].shape[1] != projection_dim:
        raise ModelLoadError(
            f"visual.proj {tuple(state_dict['visual.proj'].shape)} and text_projection "
            f"{tuple(state_dict['text_projection'].shape)} project to different widths"
        )
    text_prefix, vision_prefix = "transformer.resblocks.", "visual.transformer.resblocks."
    text_layers = _layer_count(state_dict, text_prefix)
    vision_layers = _layer_count(state_dict, vision_prefix)
    return align_sub_configs(CLIPConfig(
        text_config={
            "vocab_size": state_dict["token_embedding.weight"].shape[0],
            "hidden_size": text_width,
            "intermediate_size": state_dict[f"{text_prefix}0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": text_layers,
            "num_attention_heads": _heads(text_width, text_heads, "text"),
            "max_position_embeddings": state_dict["positional_embedding"].shape[0],
            "hidden_act": "quick_gelu",
            **token_ids,
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": state_dict[f"{vision_prefix}0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": vision_layers,
            "num_attention_heads": _heads(vision_width, vision_heads, "vision"),
            "num_channels": channels,
            "image_size": grid * patch_size,
            "patch_size": patch_size,
            "hidden_act": "quick_gelu",
        },
        projection_dim=projection_dim,
    ))


def openai_to_hf_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and split/transpose) OpenAI-layout tensors to ``CLIPModel`` keys.

    Fused attention ``in_proj`` weights are split into q, k, v in that order (the order
    ``nn.MultiheadAttention`` uses). A key that maps nowhere raises, naming it, so a layout this
    function does not know is never half-converted.
    """
    out: dict[str, Tensor] = {}
    unknown = []
    towers = (
        ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
        ("transformer.resblocks.", "text_model.encoder.layers."),
    )
    for key, value in state_dict.items():
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = value
            continue
        if key in _TRANSPOSED_KEYS:
            out[_TRANSPOSED_KEYS[key]] = value.T.contiguous()
            continue
        for source, target in towers:
            if key.startswith(source):
                index, _, rest = key[len(source) :].partition(".")
                prefix = f"{target}{index}."
                if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                    kind = rest.rsplit("_", 1)[1]
                    for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                        out[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
                elif rest in _BLOCK_KEYS:
                    out[prefix + _BLOCK_KEYS[rest]] = value
                else:
                    unknown.append(key)
                break
        else:
            unknown.append(key)
    if unknown:
        raise ModelLoadError(
            f"{len(unknown)} keys have no CLIPModel equivalent: {', '.join(sorted(unknown)[:10])}"
            f"{' ...' if len(unknown) > 10 else ''}"
        )
    return out


def convert_openai_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    tokenizer_source: str | ClipBundle,
    text_heads: int | None = None,
    vision_heads: int | None = None,
    longclip_keep: int = LONGCLIP_KEEP,
) -> ClipBundle:
    """Build a ``ClipBundle`` from an OpenAI-layout ViT CLIP state dict (OpenAI, open_clip, Long-CLIP).

    The tokenizer and image processor come from ``tokenizer_source`` (a hub id or folder such as
    ``openai/clip-vit-large-patch14``, or an existing bundle); their token ids are written into
    the text config so pooling happens at the tokenizer's end token. Long-CLIP position tables are
    folded first (``fold_longclip_positions``). Weights are converted to float32 (released
    checkpoints are often fp16). Heads default to ``width // 64`` per tower, as OpenAI's.
    """
    renamed = {key.removeprefix("module."): value for key, value in state_dict.items()}
    state = {key: value.float() for key, value in renamed.items() if key not in NON_WEIGHT_KEYS}
    folded = "positional_embedding_res" in state
    state = fold_longclip_positions(state, keep=longclip_keep)
    if isinstance(tokenizer_source, ClipBundle):
        tokenizer, processor = tokenizer_source.tokenizer, tokenizer_source.image_processor
    else:
        tokenizer, processor = load_processors(tokenizer_source)
    config = infer_openai_config(state, text_heads=text_heads, vision_heads=vision_heads, tokenizer=tokenizer)
    text_config = config.text_config
    if len(tokenizer) > text_config.vocab_size:
        raise ModelLoadError(
            f"the tokenizer has {len(tokenizer)} tokens but the checkpoint's embedding only {text_config.vocab_size}"
        )
    image_size = int(config.vision_config.image_size)
    *_, width, height = crop_geometry(processor, image_size, image_size)
    if (width, height) != (image_size, image_size):
        processed = f"{width}px" if width == height else f"{width}x{height}px"
        raise ModelLoadError(
            f"the image processor makes {processed} images but the checkpoint expects {image_size}px; "
            "pass the processor of the matching model (e.g. a -336 checkpoint needs a 336px processor)"
        )
    model = CLIPModel(config)
    hf_state = openai_to_hf_keys(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(hf_state))
    mismatched = sorted(k for k in set(own) & set(hf_state) if own[k].shape != hf_state[k].shape)
    if missing or mismatched:
        raise ModelLoadError(f"converted state dict does not fit: missing {missing[:10]}, mismatched {mismatched[:10]}")
    model.load_state_dict(hf_state, strict=True)
    model.eval()
    tokenizer.model_max_length = int(text_config.max_position_embeddings)
    logger.info(
        "converted CLIP: vision %d layers x %d wide (patch %d, %dpx), text %d layers x %d wide, %d positions%s",
        config.vision_config.num_hidden_layers, config.vision_config.hidden_size, config.vision_config.patch_size,
        image_size, text_config.num_hidden_layers, text_config.hidden_size, text_config.max_position_embeddings,
        " (Long-CLIP tables folded)" if folded else "",
    )
    return ClipBundle(model, tokenizer, processor)
