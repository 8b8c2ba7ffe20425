"""open_clip models as evaluation rows (``goalclip eval --model open_clip:...``).

The papers compare against EVA-CLIP and other checkpoints that only open_clip loads (EVA's towers
have no transformers ``CLIPModel`` layout, so ``goalclip import-checkpoint`` cannot help). Such a model is an
``OpenClipBundle``, which the shared encode path (``models/embed.py``) drives like a ``ClipBundle``:
images go through open_clip's own eval transform, texts through open_clip's own tokenizer at the
model's own context, embeddings come from its ``encode_image`` / ``encode_text``. Only encoding is
offered; training, mining, search and viz need transformers internals and refuse these specs.

A spec names what open_clip loads, in one of four forms:

- ``open_clip:ARCH/TAG``: a pretrained tag open_clip downloads (``open_clip:EVA02-B-16/merged2b_s8b_b131k``);
- ``open_clip:ARCH:CHECKPOINT``: a local checkpoint file of that architecture (what open_clip's
  training writes, e.g. ``epoch_32.pt``, or a ``.safetensors``);
- ``open_clip:hf-hub:ORG/REPO`` and ``open_clip:local-dir:FOLDER``: open_clip's own schemas, config
  and weights together (a hub repo, or a folder with ``open_clip_config.json`` and the weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from goalclip.core.fingerprint import fingerprint
from goalclip.core.text import clean_text

PREFIX = "open_clip:"
EXTRA = "pip install 'goalclip[open_clip]'"
SCHEMAS = ("hf-hub:", "local-dir:")
FORMS = "open_clip:ARCH/TAG, open_clip:ARCH:CHECKPOINT, open_clip:hf-hub:ORG/REPO or open_clip:local-dir:FOLDER"


class OpenClipError(ValueError):
    """An open_clip spec that cannot be loaded; the message names the spec."""


def is_open_clip(source: str) -> bool:
    return str(source).startswith(PREFIX)


@dataclass(frozen=True)
class OpenClipSpec:
    """What ``open_clip.create_model_and_transforms`` is given for one spec."""

    source: str  # the spec as written
    name: str  # an architecture, or a schema-prefixed hub repo / folder
    pretrained: str | None = None  # a tag, or a checkpoint file with ``checkpoint``
    checkpoint: bool = False

    @property
    def local_path(self) -> str | None:
        """The file or folder holding the weights, when they are local (the cache keys on its contents)."""
        if self.checkpoint:
            return self.pretrained
        return self.name.removeprefix("local-dir:") if self.name.startswith("local-dir:") else None


def parse_spec(source: str) -> OpenClipSpec:
    """Split a spec into what open_clip loads (syntax only: nothing is imported or read)."""
    rest = source.removeprefix(PREFIX)
    if rest.startswith(SCHEMAS) and rest.split(":", 1)[1]:
        return OpenClipSpec(source, rest)
    arch, sep, pretrained = rest.partition(":")  # architecture names and tags never hold ':'
    if not sep:
        arch, sep, pretrained = rest.partition("/")
    if not arch or not pretrained:
        raise OpenClipError(f"{source}: an open_clip model needs its weights; write {FORMS}")
    return OpenClipSpec(source, arch, pretrained, checkpoint=sep == ":")


def spec_fingerprint(source: str) -> str:
    """The spec, plus the size and mtime of every local weights file it names (cache key)."""
    local = parse_spec(source).local_path
    return f"{source}|{fingerprint(local)}" if local else source


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise OpenClipError(f"open_clip models need the open_clip extra: {EXTRA}") from None
    return open_clip


def _check_known(open_clip: Any, spec: OpenClipSpec) -> None:
    """Refuse an unknown architecture, tag or file before open_clip tries the network."""
    if spec.name.startswith(SCHEMAS):
        return
    if spec.name not in open_clip.list_models():
        raise OpenClipError(
            f"{spec.source}: unknown open_clip architecture '{spec.name}' (open_clip.list_models() lists them; "
            "register a custom config with open_clip.add_model_config, or use open_clip:local-dir:FOLDER)"
        )
    if spec.checkpoint:
        if not os.path.isfile(spec.pretrained):
            raise OpenClipError(f"{spec.source}: no checkpoint file {spec.pretrained}")
    elif not open_clip.get_pretrained_cfg(spec.name, spec.pretrained):
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        known = f"known tags: {', '.join(tags)}" if tags else "it has no pretrained tags"
        raise OpenClipError(
            f"{spec.source}: open_clip has no pretrained tag '{spec.pretrained}' for {spec.name} ({known}); "
            f"a local checkpoint is open_clip:{spec.name}:PATH"
        )


class OpenClipImageProcessor:
    """open_clip's eval transform behind the call form ``core.images.pixel_values`` uses."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, images: list[Any], return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([self.transform(image) for image in images])}


@dataclass
class OpenClipBundle:
    """An open_clip model with its tokenizer and eval transform, encoded like a ``ClipBundle``."""

    model: torch.nn.Module
    tokenizer: Any
    image_processor: OpenClipImageProcessor
    embed_dim: int
    image_tokens: ClassVar[int] = 1  # embeddings per image, as ``ClipBundle``

    @property
    def max_text_len(self) -> int:
        return int(self.model.context_length)

    def tokenize(self, texts: list[str], max_len: int | None = None) -> dict[str, torch.Tensor]:
        """Token ids at the model's full context (open_clip adds its whole position table), cut at ``max_len``.

        CLIP's own tokenizer pads with 0 and pools at the end token, so texts cut shorter are
        padded with 0 up to the context; other tokenizers (SigLIP's, HF text towers') are only
        used at the model's own context.
        """
        from open_clip import SimpleTokenizer

        context = self.max_text_len
        max_len = min(max_len or context, context)
        if max_len < context and not isinstance(self.tokenizer, SimpleTokenizer):
            raise OpenClipError(
                f"{self.model.name_or_path}: texts can be cut below the model's {context}-token context only for "
                f"open_clip models with CLIP's tokenizer, not {type(self.tokenizer).__name__}"
            )
        ids = self.tokenizer([clean_text(t) for t in texts], context_length=max_len)
        return {"input_ids": F.pad(ids, (0, context - max_len))}

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text, start and end tokens included, before any cut."""
        from open_clip import SimpleTokenizer

        cleaned = [clean_text(t) for t in texts]
        if isinstance(self.tokenizer, SimpleTokenizer):
            return [len(self.tokenizer.encode(t)) + 2 for t in cleaned]
        # open_clip's HFTokenizer and SigLipTokenizer wrap a transformers tokenizer as ``.tokenizer``
        return [len(ids) for ids in self.tokenizer.tokenizer(cleaned)["input_ids"]]


def load_open_clip(source: str, *, device: str | torch.device = "cpu") -> OpenClipBundle:
    """Load a spec with open_clip's own ``create_model_and_transforms`` and ``get_tokenizer``."""
    spec = parse_spec(source)
    open_clip = _import_open_clip()
    _check_known(open_clip, spec)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec.name, pretrained=spec.pretrained)
        tokenizer = open_clip.get_tokenizer(spec.name)
    except Exception as exc:  # a download, a key mismatch, a corrupt file or config: all the spec's
        # torch lists mismatched keys from the second line on: one line keeps them in the CLI's message
        message = " ".join(str(exc).split())[:600] or type(exc).__name__
        raise OpenClipError(f"{source}: open_clip cannot load it ({message})") from exc
    model.name_or_path = source  # what errors about its embeddings name
    model.to(device).eval()
    with torch.no_grad():  # the width of what encode_text returns, whatever tower the config builds
        embed_dim = int(model.encode_text(tokenizer([""]).to(device)).shape[-1])
    return OpenClipBundle(model, tokenizer, OpenClipImageProcessor(preprocess), embed_dim)
