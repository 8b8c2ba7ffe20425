"""Caption text: CLIP-style cleaning, sentence splitting and exact sentence token spans.

Mining and training must agree on what a sentence is and where its tokens are, so both use
this module. Token spans come from the fast tokenizer's offset mapping of the WHOLE caption:
tokenising sentences separately and concatenating is wrong whenever BPE merges across a
boundary (e.g. a missing space after a period), and ``split('.')`` breaks on abbreviations
and decimals.

Real long captions (DOCCI, DCI, Urban1k) break a plain pysbd split in a few recurring ways: line
breaks without end punctuation, quotes left open or spaced (``"TAXI. " There``), spaced numbers,
URLs and abbreviations (``1. 5``, ``www. x. com``, ``p. m.``) and stray end marks. The splitter
keeps pysbd as its base and repairs exactly those cases.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

import ftfy
import pysbd

_SPACES = re.compile(r"[^\S\n]+")
_LINE_BREAKS = re.compile(r"\s*\n\s*")
_LINE = re.compile(r"[^\n]+")
# A sentence end glued to the next sentence ("red.The", "red.A dog"): pysbd keeps these as one
# sentence. Two lowercase letters/digits/closing brackets before the mark and a capitalised word
# (or the word "A") after it, so "Mr.Smith", "U.S.A." and "e.g.This" are left alone.
_GLUED_BOUNDARY = re.compile(r"(?<=[a-z0-9)\]]{2}[.!?])(?=[A-Z][a-z]|A )")
# A closing quote after an end mark with a stray space before it (`"TAXI. " There`) or no space
# after it (`"STOP."The`): pysbd keeps the next sentence with the quote.
_QUOTED_END = re.compile(r'[.!?] ?"(?= ?["(]?[A-Z])')
# Splits caused by a spaced writing style (`1. 5`, `p. m.`, `U. S.`, `www. x. com`, `No. 5`) or by
# a title glued to the sentence before (`bicycle.Dr. Patel`): the end of the piece before and the
# start of the piece after that together mean "no boundary".
_NOT_A_BOUNDARY = (
    (re.compile(r"\d\.$"), re.compile(r"^\d")),
    (re.compile(r"(?:^|[^\w.])[a-z]\.$"), re.compile(r"^[a-z]")),
    (re.compile(r"(?:^|[^\w.])[A-Z]\.$"), re.compile(r"^[A-Z]\.")),
    (re.compile(r"(?:^|[^\w.])www\.$", re.IGNORECASE), re.compile(r"^\w")),
    (re.compile(r"\w\.$"), re.compile(r"^(?:com|org|net|edu|gov|info|io|co|uk)\b")),
    (re.compile(r"(?:^|[^\w.])(?:no|nos|approx|fig|vol|pp?)\.$", re.IGNORECASE), re.compile(r"^\d")),
    (re.compile(r"(?:^|[^\w])(?:Mr|Mrs|Ms|Dr|Prof|Capt|Sgt|Lt|Rev)\.$"), re.compile(r"^[A-Z]")),
)


def clean_text(text: str) -> str:
    """Clean text the way OpenAI's CLIP tokenizer does before BPE (ftfy, html unescape, spaces).

    The fast tokenizer skips this step; without it curly quotes and HTML entities tokenise
    differently from the original CLIP, so every caller cleans first. Whitespace folds to one
    space, except that a run holding a line break folds to one ``\\n``: line breaks are sentence
    boundaries (DCI-style captions end lines without punctuation), and the tokenizer reads
    ``\\n`` as a space, so token ids are unchanged.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = _SPACES.sub(" ", _LINE_BREAKS.sub("\n", text.strip()))
    return "\n".join(_space_glued_opening_quote(line) for line in text.split("\n"))


def _space_glued_opening_quote(line: str) -> str:
    """``keyboard."ZETA" is``  ->  ``keyboard. "ZETA" is``: a space between a sentence end and a glued
    opening quote.

    CLIP's BPE merges ``."`` into one token, which two sentences would then share, so neither
    could get an exact token span; the space (what the writer left out) makes them two tokens.
    Only an opening quote (it pairs with a later one, see :func:`_quote_roles`) after a word's end
    mark is spaced: ``"STOP."The`` ends a quote and stays as it is.
    """
    opening = [at for at in _quote_roles(line)[2] if at >= 2 and line[at - 1] in ".!?" and line[at - 2].isalnum()]
    for at in reversed(opening):
        line = line[:at] + " " + line[at:]
    return line


@dataclass(frozen=True)
class Sentence:
    """A sentence of a cleaned caption with its character span ``text == caption[start:end]``."""

    text: str
    start: int
    end: int


@functools.lru_cache(maxsize=1)
def _segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False)


def _pysbd_starts(text: str) -> list[int]:
    """Where pysbd's sentences start in ``text``.

    Found left to right here because pysbd's own ``char_span`` may place a short sentence
    (``". "``) at an earlier occurrence, overlapping the sentence before it. A sentence that
    cannot be found (pysbd changed its text) stays part of the sentence before it.
    """
    starts, position = [], 0
    for sentence in _segmenter().segment(text):
        found = text.find(sentence.strip(), position)
        if sentence.strip() and found >= 0:
            starts.append(found)
            position = found + len(sentence.strip())
    return starts


def split_sentences(caption: str) -> list[Sentence]:
    """Split a CLEANED caption into sentences with exact character spans.

    Every line is split on its own (a line break is a boundary, except inside a quote that a
    later line closes: sign text written over several lines) by pysbd, which handles
    abbreviations, decimals and quotes; then ``_line_spans`` repairs what pysbd gets wrong on
    real captions. A caption without any boundary is one sentence. Surrounding whitespace is
    trimmed from each span; pieces without a letter or digit (stray ``.``) are dropped.
    """
    sentences = []
    for first, last in _quoted_line_runs(list(_LINE.finditer(caption))):
        for a, b in _line_spans(caption[first:last]):
            start, end = first + a, first + b
            sentences.append(Sentence(caption[start:end], start, end))
    return sentences


def _quoted_line_runs(lines: list[re.Match[str]], reach: int = 3) -> list[tuple[int, int]]:
    """Character ranges of lines, a line whose quote is still open at its end joined with the next
    ``reach`` lines or fewer up to the one whose first quote closes it (``reads "NO`` / ``PARKING`` /
    ``ANY TIME" in red``). Without such a line the lines stay apart."""
    runs, index = [], 0
    while index < len(lines):
        stop = index
        if _quote_roles(lines[index].group())[3] is not None:
            for later in range(index + 1, min(index + 1 + reach, len(lines))):
                text = lines[later].group()
                at = text.find('"')
                if at > 0 and not text[at - 1].isspace():
                    stop = later
                    break
                if at >= 0:
                    break
        runs.append((lines[index].start(), lines[stop].end()))
        index = stop + 1
    return runs


def _line_spans(line: str) -> list[tuple[int, int]]:
    """Sentence spans ``[start, end)`` of one line.

    pysbd runs on a copy of the line where unpaired quotes are blanked, so that a quote left open
    cannot protect the following sentences from splitting (same length, so offsets carry over);
    a blanked quote then rejoins the word it touches. Extra boundaries: a sentence end glued to
    the next sentence and a closing quote after an end mark; splits inside spaced numbers,
    URLs and abbreviations are joined again.
    """
    unpaired, closing, _, _ = _quote_roles(line)
    shadow = "".join(" " if i in unpaired or c == "\n" else c for i, c in enumerate(line))
    cuts = {0, len(line)}
    cuts.update(_pysbd_starts(shadow))
    cuts.update(m.start() for m in _GLUED_BOUNDARY.finditer(shadow))
    cuts.update(m.end() for m in _QUOTED_END.finditer(shadow) if m.end() - 1 in closing)
    bounds = sorted(cuts)
    spans: list[tuple[int, int]] = []
    for a, b in zip(bounds, bounds[1:]):
        piece = shadow[a:b]
        start, end = a + len(piece) - len(piece.lstrip()), a + len(piece.rstrip())
        if end <= start:
            continue
        while start - 1 in unpaired and start - 1 >= (spans[-1][1] if spans else 0):
            start -= 1
        while end in unpaired:
            end += 1
        if spans and _continues(line[spans[-1][0] : spans[-1][1]], line[start:end]):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return [(a, b) for a, b in spans if any(c.isalnum() for c in line[a:b])]


def _quote_roles(line: str) -> tuple[set[int], set[int], list[int], int | None]:
    """Positions of the unpaired, the closing and the (paired) opening double quotes of a line,
    and of a quote still open at its end (or None).

    Quotes pair left to right. With none open, a quote opens when no word precedes it and
    something follows (``"OPEN``, ``."Stop``); otherwise it is unpaired (``6'2" tall``). An open
    quote is closed by the next quote, unless that one clearly opens (space before, a word or an
    opening mark after): then the open quote was never closed. ``Out? ".`` closes (an end mark
    after a spaced quote). A quote still open at the line's end is unpaired within the line.
    """
    unpaired: set[int] = set()
    closing: set[int] = set()
    opening: list[int] = []
    open_at = None
    for match in re.finditer('"', line):
        at = match.start()
        before = line[at - 1] if at else " "
        after = line[at + 1] if at + 1 < len(line) else " "
        if open_at is None:
            if after.isspace() or before.isalnum():
                unpaired.add(at)
            else:
                open_at = at
        elif before.isspace() and not after.isspace() and after not in ".,;:!?":
            unpaired.add(open_at)
            open_at = at
        else:
            closing.add(at)
            opening.append(open_at)
            open_at = None
    if open_at is not None:
        unpaired.add(open_at)
    return unpaired, closing, opening, open_at


def _continues(before: str, after: str) -> bool:
    """Whether pysbd split a spaced number, URL or abbreviation (``1. 5``, ``p. m.``)."""
    return any(end.search(before) and start.search(after) for end, start in _NOT_A_BOUNDARY)


def locate_sentence(caption: str, sentence: str) -> tuple[int, int] | None:
    """Character span of ``sentence`` inside ``caption`` (both cleaned), or None if absent.

    A splitter sentence is preferred (so spans agree with mining); a sentence repeated in the
    caption resolves to its first occurrence, which has the same tokens as the others. The
    substring search reads line breaks as spaces, so a sentence mined before line breaks were
    kept is still found.
    """
    for candidate in split_sentences(caption):
        if candidate.text == sentence:
            return candidate.start, candidate.end
    start = caption.replace("\n", " ").find(sentence)
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
    sentence holding most of it. A tie goes to the earlier sentence: a token split evenly by a
    boundary is an end mark merged with an opening mark (``."`` in ``left."Stop``), and a
    sentence must not start with the previous one's end. Returns None when no token falls inside.
    """
    lo, hi = char_span
    first = last = None
    for index, ((a, b), is_special) in enumerate(zip(offsets, special)):
        if is_special or b <= a:
            continue
        if lo < (a + b) / 2 <= hi:
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
