"""Load, stretch and save CLIP and SigLIP models; the tower forwards that training and embedding share.

A model is a ``ClipBundle``: a ``transformers.CLIPModel`` or ``SiglipModel`` (the kind read from its
config, see :mod:`goalclip.models.backbone`) with its fast tokenizer and image processor, so that
``save_clip`` writes a folder that ``AutoModel.from_pretrained`` and ``AutoProcessor.from_pretrained``
load directly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    SiglipModel,
)

from goalclip.core.manifest import atomic_folder
from goalclip.models.backbone import ClipBackbone, backbone_for, model_class
from goalclip.models.open_clip import is_open_clip
from goalclip.models.siglip_tokenizer import CONVERTERS, fast_tokenizer

logger = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


class ModelLoadError(ValueError):
    """A checkpoint cannot be loaded; the message names the keys or files involved."""


@dataclass
class ClipBundle:
    """A CLIP or SigLIP model with the tokenizer and image processor that belong to it."""

    model: CLIPModel | SiglipModel
    tokenizer: CLIPTokenizer
    image_processor: CLIPImageProcessor
    image_tokens: ClassVar[int] = 1  # embeddings per image (a BLIP-2 image has one per query token)

    @property
    def backbone(self) -> ClipBackbone:
        return backbone_for(self.model)

    @property
    def kind(self) -> str:
        """``clip`` or ``siglip``: what the run record and model card say."""
        return self.backbone.kind

    @property
    def max_text_len(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def patch_grid(self) -> int:
        cfg = self.model.config.vision_config
        return int(cfg.image_size) // int(cfg.patch_size)


def is_state_dict_file(source: str) -> bool:
    return os.path.isfile(source) and source.endswith(STATE_DICT_SUFFIXES)


def load_clip(
    source: str,
    *,
    base: str | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> ClipBundle:
    """Load a CLIP from a hub id, a local folder, or a bare state-dict file on top of ``base``.

    Weights are loaded as ``dtype`` (fp32 by default) whatever the checkpoint stores: transformers
    would keep a half-precision folder in half precision, and training would then update fp16
    weights although mixed precision promises fp32 master weights. The stored and loaded dtypes are
    logged. Half-precision compute is autocast's job (or a caller's explicit cast, as bf16-weights).

    Loading is strict either way, so a broken checkpoint stops here instead of producing
    garbage later: a folder's missing, unexpected or mismatched weights, an unreadable weights
    file, a missing tokenizer or image processor are each a ``ModelLoadError`` naming the
    folder or file. Bare state dicts (e.g. the GOAL authors' released ``.pth`` with 248 text
    positions) get the base's text positions resized to the file's length first. An ``open_clip:``
    spec is refused: only evaluation encodes those (``embed.load_encoder``).
    """
    if is_open_clip(source):
        raise ModelLoadError(
            f"{source}: open_clip models work only in 'goalclip eval' (retrieval and classify); "
            "this needs a transformers CLIP (a hub id, a model folder or a state-dict file)"
        )
    if is_state_dict_file(source):
        if base is None:
            raise ModelLoadError(f"{source} is a bare state dict: pass --base with the architecture it fits")
        bundle = load_clip(base, attn_implementation=attn_implementation, dtype=dtype)
        load_state_dict_file(bundle.model, source)
        bundle.model.name_or_path = source
    else:
        if os.path.isfile(source):
            raise ModelLoadError(
                f"{source} is a file but not a state dict ({', '.join(STATE_DICT_SUFFIXES)}); "
                "pass a hub id, a model folder or a state-dict file"
            )
        model = _load_model(source, attn_implementation, dtype)
        tokenizer, image_processor = load_processors(source)
        if len(tokenizer) > model.config.text_config.vocab_size:
            raise ModelLoadError(
                f"{source}: the tokenizer has {len(tokenizer)} tokens but the model's text embedding only "
                f"{model.config.text_config.vocab_size}; the tokenizer belongs to another model"
            )
        tokenizer = backbone_for(model).text_tokenizer(tokenizer)
        bundle = ClipBundle(model, tokenizer, image_processor)
    bundle.model.to(device)
    return bundle


def _load_model(source: str, attn_implementation: str | None, dtype: torch.dtype) -> CLIPModel | SiglipModel:
    """``CLIPModel``/``SiglipModel.from_pretrained`` (by the config's kind), refusing what transformers only reports.

    transformers initialises missing (and, when told to ignore them, mismatched) weights randomly
    and drops unexpected ones with a printed load report; a model folder that does not hold
    exactly this model's weights is an error here naming the keys, like a state-dict file
    (``load_state_dict_file``).
    """
    config = AutoConfig.from_pretrained(source)
    absent = [tower for tower in ("text", "vision") if getattr(config, f"{tower}_config", None) is None]
    if absent:
        raise ModelLoadError(
            f"{source}: a '{config.model_type}' checkpoint has no {' and no '.join(absent)} tower; "
            "goalclip needs a full CLIP with both towers"
        )
    try:
        cls = model_class(config, source)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model, info = cls.from_pretrained(
            source, output_loading_info=True, ignore_mismatched_sizes=True, dtype=dtype, **kwargs
        )
    except SafetensorError as exc:
        files = ", ".join(str(p) for p in _weight_files(source)) or source
        raise ModelLoadError(f"{files}: cannot be read as model weights ({exc})") from None
    mismatched = [f"{key}: file {tuple(file)} vs config {tuple(own)}" for key, file, own in info["mismatched_keys"]]
    problems = key_problems(info["missing_keys"], info["unexpected_keys"], mismatched)
    if problems:
        raise ModelLoadError(f"{source}: the weights do not fit its config; {problems}")
    logger.info("%s: weights stored in %s, loaded as %s", source, getattr(config, "dtype", None) or "an unstated dtype",
                model.dtype)
    return model


def _weight_files(source: str) -> list[Path]:
    folder = Path(source)
    return sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")) if folder.is_dir() else []


def load_processors(source: str) -> tuple[CLIPTokenizer, CLIPImageProcessor]:
    """The fast tokenizer and image processor of a hub id or folder, found by transformers.

    A slow tokenizer (SigLIP v1's SentencePiece-only ``SiglipTokenizer``) is converted to a fast one with
    the same ids (:mod:`goalclip.models.siglip_tokenizer`): training needs its offsets for exact spans.
    Both layouts a folder may have work: ``preprocessor_config.json`` (what ``save_clip``
    writes) and transformers 5's ``processor_config.json`` with the image processor nested.
    The image processor is the PIL backend where transformers has one: images are processed
    one at a time in DataLoader workers on the CPU, where it is about 10x faster than the
    torchvision one (1.5 vs 16 ms per image measured here), and its saved config is the same
    ``CLIPImageProcessor`` any transformers version loads.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, TypeError, ValueError, ImportError) as exc:  # no tokenizer files, or sentencepiece missing
        reason = str(exc).splitlines()[0]
        hint = ("; SigLIP's SentencePiece tokenizer needs the siglip extra: pip install 'goalclip[siglip]'"
                if "sentencepiece" in str(exc).lower() or "protobuf" in str(exc).lower() else "")
        raise ModelLoadError(f"{source}: no usable tokenizer ({reason}){hint}") from None
    # Without tokenizer files transformers builds an empty CLIP tokenizer (only its special
    # tokens), which would turn every word into the unknown token.
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ModelLoadError(
            f"{source}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt); "
            "copy them from the model this one was trained from"
        )
    if not tokenizer.is_fast:
        converted = fast_tokenizer(tokenizer)
        if converted is None:
            raise ModelLoadError(f"{source}: a fast tokenizer is needed (offset mappings give exact spans); "
                                 f"goalclip converts {', '.join(CONVERTERS)} only, not {type(tokenizer).__name__}")
        tokenizer = converted
    try:
        try:
            image_processor = AutoImageProcessor.from_pretrained(source, backend="pil")
        except (TypeError, ValueError):  # transformers without a PIL backend
            image_processor = AutoImageProcessor.from_pretrained(source)
    except OSError:
        raise ModelLoadError(
            f"{source}: no image processor (preprocessor_config.json or processor_config.json); "
            "cannot turn images into pixel values for this model"
        ) from None
    return tokenizer, image_processor


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch pickle, unwrapping common containers."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, not a checkpoint, pickle with non-tensor objects...
        raise ModelLoadError(f"{path}: cannot be read as a state dict ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}


def load_state_dict_file(model: CLIPModel, path: str) -> None:
    """Strictly load a state-dict file into ``model``, resizing text positions to the file's."""
    state = read_state_dict(path)
    pos_key = "text_model.embeddings.position_embedding.weight"
    if pos_key in state and state[pos_key].shape[0] != model.config.text_config.max_position_embeddings:
        set_text_positions(model, state[pos_key].clone())
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    problems = key_problems(missing, unexpected, mismatched)
    if problems:
        raise ModelLoadError(f"{path} does not fit the base model; {problems}")
    model.load_state_dict(state, strict=True)


def key_problems(missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[str]) -> str:
    """``missing (n): a, b ...; unexpected (n): ...`` listing at most ten keys of each kind; empty if none."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        keys = sorted(keys)
        if keys:
            parts.append(f"{label} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}")
    return "; ".join(parts)


def set_text_positions(model: CLIPModel, weight: torch.Tensor) -> None:
    """Replace the text position table, keeping embedding, position-id buffer and config in step."""
    embeddings = model.text_model.embeddings
    old = embeddings.position_embedding
    new = torch.nn.Embedding(weight.shape[0], weight.shape[1], device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
    embeddings.position_embedding = new
    embeddings.position_ids = torch.arange(weight.shape[0], device=old.weight.device).expand((1, -1))
    model.config.text_config.max_position_embeddings = int(weight.shape[0])


def stretched_positions(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Long-CLIP knowledge-preserving stretch of an ``[L, D]`` position table to ``4L - 3*keep``.

    The first ``keep`` positions (well trained on short captions) are copied; each remaining
    position ``p_i`` becomes four: ``p_i + j/4 * (p_{i+1} - p_i)`` for j = 0..3, where the step
    after the last position is extrapolated from the last two (77 -> 248 with keep 20).
    """
    length = weight.shape[0]
    if not 0 <= keep <= length - 2:
        raise ValueError(f"keep_positions={keep} must be between 0 and {length - 2} for {length} positions")
    rest = weight[keep:]
    nxt = torch.cat([rest[1:], (2 * rest[-1] - rest[-2]).unsqueeze(0)])
    fractions = torch.arange(4, dtype=weight.dtype, device=weight.device).view(1, 4, 1) / 4
    interpolated = rest.unsqueeze(1) + fractions * (nxt - rest).unsqueeze(1)
    return torch.cat([weight[:keep], interpolated.reshape(-1, weight.shape[1])])


def stretch_positions(model: CLIPModel, *, keep: int = 20, target: int | None = None) -> int:
    """Stretch the text positions in place (Long-CLIP style); returns the new context length.

    ``target`` may shorten the stretched table (never lengthen past ``4L - 3*keep``).
    """
    weight = model.text_model.embeddings.position_embedding.weight.detach()
    stretched = stretched_positions(weight, keep)
    if target is not None:
        if target > stretched.shape[0]:
            most_kept = (4 * weight.shape[0] - target) // 3
            raise ValueError(
                f"max_text_len={target} exceeds the stretch limit 4*{weight.shape[0]}-3*{keep}={stretched.shape[0]} "
                f"of a {weight.shape[0]}-position text tower: ask for at most {stretched.shape[0]}"
                + (f", or keep at most {most_kept} positions (--keep-positions)" if most_kept >= 0 else "")
            )
        stretched = stretched[:target]
    set_text_positions(model, stretched)
    return stretched.shape[0]


def prepare_text_positions(bundle: ClipBundle, max_text_len: int, keep: int) -> int:
    """Stretch the text positions Long-CLIP style when the model's context is shorter than asked.

    A model that already has ``max_text_len`` or more positions (a GOAL checkpoint, a folder
    from an earlier run) is left alone, so two-stage training is simply two runs.
    """
    current = bundle.max_text_len
    if current >= max_text_len:
        return current
    new_len = stretch_positions(bundle.model, keep=keep, target=max_text_len)
    bundle.tokenizer.model_max_length = new_len
    logger.info("stretched text positions %d -> %d (keep %d)", current, new_len, keep)
    return new_len


def save_clip(bundle: ClipBundle, out_dir: str | os.PathLike) -> Path:
    """Save model (safetensors), tokenizer and image processor into one folder every CLIP class loads."""
    out = Path(out_dir)
    bundle.backbone.align_config()
    bundle.tokenizer.model_max_length = bundle.max_text_len
    with atomic_folder(out) as tmp:
        bundle.model.save_pretrained(tmp, safe_serialization=True)
        bundle.tokenizer.save_pretrained(tmp)
        bundle.image_processor.save_pretrained(tmp)
    return out


# ----------------------------------------------------------------------------- tower forwards


def compile_towers(model: CLIPModel | SiglipModel) -> None:
    """``torch.compile`` the transformer encoders of both towers in place, with dynamic shapes.

    The encoders are where the compute is, and their inputs vary only in size (rows per chunk, crops and
    pairs per batch, text lengths): per grad mode (gradient caching encodes once without gradients) one graph
    serves the vision encoder and two the text encoder (transformers passes it no mask when no row is padded),
    whatever the batch. Compiling the whole step instead guarded on chunk bounds, on which streams a chunk
    holds and on pair counts, and recompiled until torch fell back to eager; compiling whole towers breaks
    the graph in transformers' hidden-state capture. Parameter names, checkpoints and DDP wrapping are
    unchanged (``Module.compile`` works in place).
    """
    for tower in (model.vision_model, model.text_model):
        tower.encoder.compile(dynamic=True)


def image_forward(model: CLIPModel | SiglipModel, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised image embeddings and the patch tokens TSL pools (``Backbone.image``)."""
    return backbone_for(model).image(pixel_values)


def text_forward(
    model: CLIPModel | SiglipModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
    token_states: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unnormalised text embeddings and, optionally, the token states TSL pools (``Backbone.text``)."""
    return backbone_for(model).text(input_ids, attention_mask, token_states=token_states)
