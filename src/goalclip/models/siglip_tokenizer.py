"""SigLIP's tokenizers as goalclip needs them: fast (SentencePiece-only ones converted), lowercasing, right-padding.

SigLIP (v1) checkpoints ship only ``spiece.model``: transformers loads them as the slow ``SiglipTokenizer``,
which has no offset mapping. goalclip needs offsets (training locates each mined sentence's tokens in its
caption for the text TSL term, :func:`goalclip.core.text.token_span`), so the slow tokenizer is converted
once at load time. transformers has no converter for it, and its generic SentencePiece one is not enough:
``SiglipTokenizer`` first canonicalises the text (lowercase, ASCII punctuation removed, runs of whitespace
made one space, ends stripped). Here those steps are the fast tokenizer's normalizer, which keeps track of
where each character came from, so the offsets point into the text as given. The saved folder then holds a
``tokenizer.json`` that any transformers loads fast, without sentencepiece.

Known difference: a special token written inside a text (a literal ``</s>``) is followed by a word-start
piece here and not in the slow tokenizer, which drops it there; captions do not contain them.

SigLIP and SigLIP 2 were trained on lowercased text (big_vision lowercases before tokenising), but the
tokenizer SigLIP 2's fixed-resolution folders name (``GemmaTokenizer``) keeps case and pads on the left:
:func:`siglip_tokenizer` lowercases (as transformers' own ``Siglip2Tokenizer`` does) and pads on the right.
"""

from __future__ import annotations

import functools
import re
import string

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter


@functools.cache
def _whitespace() -> str:
    r"""Python's ``\s`` (what SiglipTokenizer's ``re.sub(r"\s+", " ")`` matches) spelled out: the tokenizers
    library's regex ``\s`` leaves out a few of its characters (e.g. U+001C..U+001F). Built on first use: a
    scan of every code point, which every command importing this module would otherwise pay."""
    return "".join(chr(code) for code in range(0x110000) if chr(code).isspace())


class SiglipConverter(SpmConverter):
    """transformers' SentencePiece converter with SiglipTokenizer's canonicalisation and ``</s>`` appended."""

    def normalizer(self, proto) -> normalizers.Normalizer:
        """SiglipTokenizer.canonicalize_text, then SentencePiece's own normalisation (its charsmap, e.g.
        NFKC, and the extra-whitespace removal)."""
        steps = [normalizers.Lowercase()] if self.original_tokenizer.do_lower_case else []
        steps += [
            normalizers.Replace(Regex(f"[{re.escape(string.punctuation)}]"), ""),
            normalizers.Replace(Regex(f"[{re.escape(_whitespace())}]+"), " "),
            normalizers.Strip(),
        ]
        if proto.normalizer_spec.precompiled_charsmap:
            steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
        return normalizers.Sequence(steps)

    def pre_tokenizer(self, replacement: str, add_prefix_space: bool) -> pre_tokenizers.PreTokenizer:
        """Spaces become ``▁`` and the text starts with one (SentencePiece's dummy prefix)."""
        return pre_tokenizers.Metaspace(replacement=replacement, prepend_scheme="always")

    def post_processor(self) -> processors.PostProcessor:
        """``text </s>``, as SiglipTokenizer builds its inputs."""
        eos = str(self.original_tokenizer.eos_token)
        return processors.TemplateProcessing(single=["$A", eos], pair=["$A", eos, "$B", eos],
                                             special_tokens=[(eos, self.original_tokenizer.eos_token_id)])


CONVERTERS = {"SiglipTokenizer": SiglipConverter}
"""Slow tokenizer classes goalclip converts, by class name (as transformers' own ``SLOW_TO_FAST_CONVERTERS``)."""


def fast_tokenizer(slow: PreTrainedTokenizerBase) -> PreTrainedTokenizerFast | None:
    """The fast equivalent of a slow tokenizer goalclip knows how to convert, else None."""
    converter = CONVERTERS.get(type(slow).__name__)
    if converter is None:
        return None
    backend: Tokenizer = converter(slow).converted()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **slow.special_tokens_map,
                                   model_max_length=slow.model_max_length,
                                   model_input_names=list(slow.model_input_names))


def siglip_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """A SigLIP tokenizer that lowercases and pads on the right, as SigLIP and SigLIP 2 were trained.

    Lowercasing becomes the first normalizer step (unless it lowercases already), which keeps the offsets
    pointing into the text as written. The result is a plain fast tokenizer: a model-specific class such as
    ``GemmaTokenizer`` rebuilds its pipeline from its vocabulary when loaded, dropping the added step, and
    pads on the left by default; a plain one loads the saved ``tokenizer.json`` and padding side as they are.
    """
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is None or backend.normalizer.normalize_str("A") != "a":
        steps = [normalizers.Lowercase()] + ([backend.normalizer] if backend.normalizer is not None else [])
        backend.normalizer = normalizers.Sequence(steps)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, **tokenizer.special_tokens_map, model_max_length=tokenizer.model_max_length,
        model_input_names=list(tokenizer.model_input_names), padding_side="right", truncation_side="right",
    )
