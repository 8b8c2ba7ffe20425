"""Caption text: CLIP-style cleaning, sentence splitting and exact sentence token spans.

Mining and training must agree on what a sentence is and where its tokens are, so both use
this module. Token spans come from the fast tokenizer's offset mapping of the WHOLE caption:
tokenising sentences separately and concatenating is wrong whenever BPE merges across a
boundary (e.g. a missing space after a period), and ``split('.')`` breaks on abbreviations
and decimals (DESIGN.md has the measured numbers).
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

import ftfy
import pysbd

_WHITESPACE = re.compile(r"\s+")
# A sentence end glued to the next sentence ("red.The"): pysbd keeps these as one sentence. Two
# lowercase letters/digits/closing brackets before the mark and a capitalised word after it, so
# "Mr.Smith", "U.S.A." and "e.g.This" are left alone.
_GLUED_BOUNDARY = re.compile(r"(?<=[a-z0-9)\]]{2}[.!?])(?=[A-Z][a-z])")


def clean_text(text: str) -> str:
    """Clean text the way OpenAI's CLIP tokenizer does before BPE (ftfy, html unescape, spaces).

    The fast tokenizer skips this step; without it curly quotes and HTML entities tokenise
    differently from the original CLIP, so every caller cleans first.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Sentence:
    """A sentence of a cleaned caption with its character span ``text == caption[start:end]``."""

    text: str
    start: int
    end: int


@functools.lru_cache(maxsize=1)
def _segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def split_sentences(caption: str) -> list[Sentence]:
    """Split a CLEANED caption into sentences with exact character spans.

    pysbd handles abbreviations, decimals and quotes; a sentence end with no space after it
    ("red.The") is split as well; a caption without any boundary is one sentence. Surrounding
    whitespace is trimmed from each span; empty pieces are dropped.
    """
    sentences = []
    for piece in _segmenter().segment(caption):
        cuts = [0, *(m.start() for m in _GLUED_BOUNDARY.finditer(piece.sent)), len(piece.sent)]
        for a, b in zip(cuts, cuts[1:]):
            raw = piece.sent[a:b]
            start = piece.start + a + (len(raw) - len(raw.lstrip()))
            end = piece.start + a + len(raw.rstrip())
            if end > start:
                sentences.append(Sentence(caption[start:end], start, end))
    return sentences


def locate_sentence(caption: str, sentence: str) -> tuple[int, int] | None:
    """Character span of ``sentence`` inside ``caption`` (both cleaned), or None if absent.

    A splitter sentence is preferred (so spans agree with mining); a sentence repeated in the
    caption resolves to its first occurrence, which has the same tokens as the others.
    """
    for candidate in split_sentences(caption):
        if candidate.text == sentence:
            return candidate.start, candidate.end
    start = caption.find(sentence)
    if start < 0 or not sentence:
        return None
    return start, start + len(sentence)


def token_span(
    offsets: Sequence[tuple[int, int]],
    special: Sequence[int],
    char_span: tuple[int, int],
) -> tuple[int, int] | None:
    """Token index span ``[first, last + 1)`` of a character span, from an offset mapping.

    ``offsets`` and ``special`` are the fast tokenizer's ``offset_mapping`` and
    ``special_tokens_mask`` for the whole caption. A token belongs to the span when its
    character midpoint lies inside it, i.e. a token straddling a sentence boundary goes to the
    sentence holding most of it. Returns None when no token falls inside.
    """
    lo, hi = char_span
    first = last = None
    for index, ((a, b), is_special) in enumerate(zip(offsets, special)):
        if is_special or b <= a:
            continue
        if lo <= (a + b) / 2 < hi:
            if first is None:
                first = index
            last = index
    if first is None:
        return None
    return first, last + 1


def usable_span(span: tuple[int, int] | None, max_len: int) -> tuple[int, int] | None:
    """The span if it survives truncation to ``max_len`` tokens, else None.

    Truncation keeps tokens ``0 .. max_len - 2`` and puts EOS at ``max_len - 1``; a sentence
    that reaches past that is masked out rather than pooled over whatever tokens remain.
    """
    if span is None or span[1] > max_len - 1:
        return None
    return span
