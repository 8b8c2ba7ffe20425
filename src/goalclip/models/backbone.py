"""The two image-text backbones goalclip trains: what training and embedding need from a model, per kind.

A backbone wraps a loaded ``CLIPModel`` or ``SiglipModel`` (SigLIP and SigLIP 2's fixed-resolution
checkpoints) and answers the same questions for both: the image and text embeddings, the patch and
text token states that TSL pools, how a subset of those tokens is pooled into the embedding space,
the temperature (and SigLIP's bias) of the contrastive logits, and how texts are padded. Everything
else (training loop, mining, evaluation, search, viz) asks the backbone, so the differences between
the two models live in this file only. The kind comes from the checkpoint's ``config.json``
(``model_type``).

Where the two differ:

* image embedding: CLIP projects the post-layernormed CLS token; SigLIP has no CLS token and pools
  the post-layernormed patch tokens with its attention-pooling head (``vision_model.head``).
* a region's TSL feature (``pool_patches``): CLIP averages the region's patch tokens and sends the
  mean through the post-layernorm and projection (the GOAL reference); SigLIP applies its
  attention-pooling head to the region's patch tokens only (the other keys masked out).
* text embedding: CLIP's causal tower pools the EOS token; SigLIP's bidirectional tower pools the
  last position of a text padded to the full context (the way it was trained), with no attention
  mask (SigLIP attends to its pad tokens in training, so masking them would change the embedding).
* a sentence's TSL feature (``pool_text``): both average the span's last-layer token states and send
  the mean through the tower's own final layernorm and text projection (CLIP) / head (SigLIP).
* tokenizer (``text_tokenizer``): CLIP's is used as it is; SigLIP's lowercases and pads on the right, as SigLIP
  and SigLIP 2 were trained, also where the folder's tokenizer does not (SigLIP 2's Gemma tokenizer).
* contrastive loss: CLIP's softmax InfoNCE with a temperature clamped to at most 100; SigLIP's
  sigmoid loss with a learnable temperature and bias, not clamped (as SigLIP trains).
"""

from __future__ import annotations

import math

import torch
from transformers import CLIPConfig, CLIPModel, PretrainedConfig, PreTrainedTokenizerFast, SiglipModel

from goalclip.models.siglip_tokenizer import siglip_tokenizer

KINDS = {"clip": CLIPModel, "siglip": SiglipModel}


def model_class(config: PretrainedConfig, source: str) -> type[CLIPModel] | type[SiglipModel]:
    """The transformers class of a checkpoint's kind (``config.model_type``); others are refused by name."""
    try:
        return KINDS[config.model_type]
    except KeyError:
        raise ValueError(
            f"{source}: a '{config.model_type}' model; goalclip trains and encodes {' and '.join(KINDS)} models "
            "(CLIPModel, SiglipModel: SigLIP and SigLIP 2's fixed-resolution checkpoints); 'goalclip eval' also "
            "scores BLIP-2 retrieval and open_clip models"
        ) from None


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` [B, L, D] over the positions where ``mask`` [B, L] is True -> [B, D].

    One batched matmul replaces the reference's per-sample Python loops (token spans for text TSL,
    patch cells touching a box for image TSL). A row whose mask is empty has nothing to average and
    gives zeros; the caller must mark that row invalid (e.g. ``valid = mask.any(1)``) so the TSL
    loss masks it. The count is kept in float32 so means over more than 256 positions stay exact
    under bf16.
    """
    if states.dim() != 3 or mask.shape != states.shape[:2]:
        raise ValueError(
            f"states must be [B, L, D] and mask [B, L]; got {tuple(states.shape)} "
            f"and {tuple(mask.shape)}"
        )
    mask = mask.to(device=states.device, dtype=torch.bool)
    summed = torch.bmm(mask.to(states.dtype).unsqueeze(1), states).squeeze(1)
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1).to(torch.float32)
    return (summed / counts).to(states.dtype)


class ClipBackbone:
    """``transformers.CLIPModel``: CLS-token images, causal EOS-pooled texts, softmax InfoNCE."""

    kind = "clip"
    max_logit_scale: float | None = 100.0  # open_clip's clamp
    pads_to_context = False  # causal attention: right padding never changes the real tokens
    first_patch = 1  # vision tokens: CLS, then the patches

    def __init__(self, model: CLIPModel):
        self.model = model

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected (unnormalised) image embeddings and last-layer patch tokens (before post-LN)."""
        out = self.model.vision_model(pixel_values=pixel_values)
        return self.model.visual_projection(out.pooler_output), out.last_hidden_state[:, 1:]

    def text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
             token_states: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected (unnormalised) text embeddings and, optionally, last-layer token states before
        the final layernorm (what text TSL pools over)."""
        out = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask,
                                    output_hidden_states=token_states)
        return self.model.text_projection(out.pooler_output), (out.hidden_states[-1] if token_states else None)

    def pool_patches(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A region's feature before ``project_patches``: the mean of its patch tokens."""
        return masked_mean(tokens, mask)

    def project_patches(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled patch tokens through the vision post-layernorm and projection (as CLS is)."""
        return self.model.visual_projection(self.model.vision_model.post_layernorm(pooled))

    def pool_text(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A span's feature before ``project_text``: the mean of its token states."""
        return masked_mean(states, mask)

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled text token states through the final layernorm and text projection."""
        return self.model.text_projection(self.model.text_model.final_layer_norm(pooled))

    def text_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
        """The model's own tokenizer as goalclip uses it: CLIP's as it is (it lowercases by itself)."""
        return tokenizer

    def logit_bias(self) -> torch.Tensor | None:
        """The bias of the contrastive logits: none (CLIP's loss is a softmax)."""
        return None

    def pooling_attention(self, weights: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, H, P]``: how the pooled image token attends to each patch, from the last layer's attention
        ``weights`` [N, H, T, T] (CLIP: the CLS row) or the last hidden state [N, T, D] (SigLIP's head)."""
        return weights[:, :, 0, 1:]

    def align_config(self) -> None:
        """Copy the top-level ``projection_dim`` into the text and vision sub-configs (in place).

        ``CLIPConfig(projection_dim=...)`` leaves the sub-configs at their default 512, and
        ``CLIPTextModelWithProjection`` / ``CLIPVisionModelWithProjection`` (what diffusers and
        most downstream users load) build their projection from the sub-config: a folder must
        agree everywhere or those classes fail with a size mismatch.
        """
        align_sub_configs(self.model.config)


class SiglipBackbone(ClipBackbone):
    """``transformers.SiglipModel``: attention-pooled images, last-position texts padded to the context,
    the sigmoid loss with a learnable bias."""

    kind = "siglip"
    max_logit_scale = None  # SigLIP trains its temperature unclamped
    pads_to_context = True
    first_patch = 0  # no CLS token

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    def image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embeddings (the attention-pooling head's output) and the post-layernormed patch tokens
        that head pools (SigLIP has no CLS token)."""
        out = self.model.vision_model(pixel_values=pixel_values)
        return out.pooler_output, out.last_hidden_state

    def text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
             token_states: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings (the last position through the head) and, optionally, last-layer token states
        before the final layernorm. ``attention_mask`` is ignored: SigLIP attends to its pads in training."""
        out = self.model.text_model(input_ids=input_ids, output_hidden_states=token_states)
        return out.pooler_output, (out.hidden_states[-1] if token_states else None)

    def pool_patches(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A region's embedding: the attention-pooling head applied to the region's patch tokens only.

        A row with an empty mask (an unusable box, which the TSL loss masks) attends to every token,
        so it holds finite numbers and no NaN reaches the backward pass.
        """
        head = self.model.vision_model.head
        keep = mask.to(device=tokens.device, dtype=torch.bool)
        keep = keep | ~keep.any(dim=1, keepdim=True)
        probe = head.probe.expand(tokens.shape[0], -1, -1)
        hidden = head.attention(probe, tokens, tokens, key_padding_mask=~keep, need_weights=False)[0]
        hidden = hidden + head.mlp(head.layernorm(hidden))
        return hidden[:, 0]

    def project_patches(self, pooled: torch.Tensor) -> torch.Tensor:
        """Identity: the attention-pooling head already gives an embedding."""
        return pooled

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled text token states through the final layernorm and the text head (as the last position is)."""
        return self.model.text_model.head(self.model.text_model.final_layer_norm(pooled))

    def text_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
        """Lowercasing and padding on the right, as SigLIP and SigLIP 2 were trained (SigLIP 2's Gemma tokenizer
        keeps case and pads on the left)."""
        return siglip_tokenizer(tokenizer)

    def logit_bias(self) -> torch.Tensor | None:
        return self.model.logit_bias

    def pooling_attention(self, weights: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.vision_model.head
        hidden = hidden.to(head.probe.dtype)
        probe = head.probe.expand(hidden.shape[0], -1, -1)
        _, per_head = head.attention(probe, hidden, hidden, need_weights=True, average_attn_weights=False)
        return per_head[:, :, 0].float()

    def align_config(self) -> None:
        """Nothing to align: SigLIP's sub-configs hold their own sizes."""


def backbone_for(model: CLIPModel | SiglipModel) -> ClipBackbone:
    """The backbone of a loaded model (a ``SiglipModel`` or a ``CLIPModel``)."""
    return SiglipBackbone(model) if isinstance(model, SiglipModel) else ClipBackbone(model)


def clamp_temperature(model: CLIPModel | SiglipModel) -> None:
    """Keep CLIP's temperature in [1, 100] by clamping the parameter (as open_clip does); SigLIP's is free.

    Clamping ``exp(logit_scale)`` inside the forward instead would zero its gradient for OpenAI
    weights, which store exactly ln(100), and freeze the temperature for the whole run.
    """
    bound = backbone_for(model).max_logit_scale
    if bound is not None:
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(bound))


def align_sub_configs(config: CLIPConfig) -> CLIPConfig:
    """Copy a CLIP config's top-level ``projection_dim`` into its text and vision sub-configs (in place)."""
    config.text_config.projection_dim = config.projection_dim
    config.vision_config.projection_dim = config.projection_dim
    return config
