"""Sentence spans on composed captions of the kinds that still failed on real captions (issue #20, item 10).

Measured on real DOCCI/DCI/Urban1k captions, offset-mapped spans were exact for 99.64% of
sentences; the misses were of three kinds, composed here one test each with OpenAI's real CLIP
BPE (shipped in open_clip's wheel), so merges such as ``."`` are the real ones. The last tests
compose kinds that are NOT fixed yet (strict xfail): each says which real-data property it imitates.
"""

from __future__ import annotations

import pytest

from goalclip.core.text import clean_text, split_sentences, token_span


def _exact(tokenizer, raw: str, expected: list[str]) -> None:
    """After cleaning, the sentences are ``expected`` and each token span decodes to exactly its sentence."""
    caption = clean_text(raw)
    sentences = split_sentences(caption)
    assert [s.text for s in sentences] == expected
    enc = tokenizer(caption, return_offsets_mapping=True, return_special_tokens_mask=True)
    for sentence in sentences:
        assert caption[sentence.start : sentence.end] == sentence.text
        span = token_span(enc["offset_mapping"], enc["special_tokens_mask"], (sentence.start, sentence.end))
        assert span is not None, sentence
        decoded = tokenizer.decode(enc["input_ids"][span[0] : span[1]])
        assert "".join(decoded.lower().split()) == "".join(sentence.text.lower().split()), sentence


def test_period_glued_to_an_opening_quote(clip_tokenizer) -> None:
    """Most of the real misses: ``keyboard."ZETA" is printed``. BPE merges ``."``, a token two sentences
    would share; cleaning puts back the space the writer left out, so both spans are exact."""
    _exact(clip_tokenizer,
           'A laptop sits open on a desk. A sticker is on the keyboard."ZETA" is printed on it in white. It is new.',
           ["A laptop sits open on a desk.", "A sticker is on the keyboard.", '"ZETA" is printed on it in white.',
            "It is new."])
    _exact(clip_tokenizer, 'The door is shut!"EXIT" glows above it.', ["The door is shut!", '"EXIT" glows above it.'])
    assert clean_text('He said "no".The dog runs.') == 'He said "no".The dog runs.'  # a closing quote stays glued
    assert clean_text('The sign reads "STOP."The car waits.') == 'The sign reads "STOP."The car waits.'
    assert clean_text(clean_text('on it."ZETA" is')) == 'on it. "ZETA" is'  # cleaning twice changes nothing more


def test_spaced_closing_quote_before_the_period_stays_in_its_sentence(clip_tokenizer) -> None:
    """``it reads "Keep Out? ".``: the quote after a space closes (an end mark follows), so the sentence
    keeps its closing ``".`` instead of losing it to a dropped piece."""
    _exact(clip_tokenizer, 'A metal sign hangs on the gate and it reads "Keep Out? ". The gate is closed.',
           ['A metal sign hangs on the gate and it reads "Keep Out? ".', "The gate is closed."])
    _exact(clip_tokenizer, 'The label says "FRAGILE! ", in red. A box.',
           ['The label says "FRAGILE! ", in red.', "A box."])


def test_quoted_sign_text_over_several_lines_is_one_sentence(clip_tokenizer) -> None:
    """DCI-style captions copy a sign line by line: a quote opened on one line and closed on a later one
    holds one sentence; the line breaks outside it stay boundaries."""
    _exact(clip_tokenizer,
           'A white sign is on the pole. It reads "NO\nPARKING\nANY TIME" in red letters\nThe pole is grey',
           ["A white sign is on the pole.", 'It reads "NO\nPARKING\nANY TIME" in red letters', "The pole is grey"])
    # an inch mark is no open quote, and a quote never closed within reach joins no lines
    _exact(clip_tokenizer, 'A man 6\'2" tall\nA screen 27" wide\nA dog.', ['A man 6\'2" tall', 'A screen 27" wide',
                                                                        "A dog."])
    _exact(clip_tokenizer, 'It says "OPEN\nA cat\nA dog\nA cow\nA hen" here.',
           ['It says "OPEN', "A cat", "A dog", "A cow", 'A hen" here.'])


@pytest.mark.xfail(strict=True, reason="not fixed: single quotes are apostrophes too, so a glued '.'' is ambiguous")
def test_unfixed_period_glued_to_an_opening_single_quote(clip_tokenizer) -> None:
    """Real-data property: captions that quote sign text with single quotes (``keyboard.'ZETA' is``),
    the same missing space as the double-quote kind; BPE merges ``.'`` just as it merges ``."``."""
    _exact(clip_tokenizer, "A sticker is on the keyboard.'ZETA' is printed on it. It is new.",
           ["A sticker is on the keyboard.", "'ZETA' is printed on it.", "It is new."])


@pytest.mark.xfail(strict=True, reason="not fixed: the glued-boundary rule needs two letters or digits before the "
                   "mark, so that 'No.5' and 'U.S.' are left alone")
def test_unfixed_boundary_glued_after_a_one_digit_number(clip_tokenizer) -> None:
    """Real-data property: a missing space after a sentence that ends in a one-digit count or price
    (``costs 5.The box``), as in captions typed without a space after numbers."""
    _exact(clip_tokenizer, "The ticket costs 5.The box next to it is red.",
           ["The ticket costs 5.", "The box next to it is red."])


@pytest.mark.xfail(strict=True, reason="not fixed: pysbd keeps a lower-case start after an end mark in its sentence")
def test_unfixed_lower_case_sentence_after_an_end_mark(clip_tokenizer) -> None:
    """Real-data property: DCI-style captions whose sentences start in lower case (``a black window with
    a dented side``), here after an exclamation mark on the same line."""
    _exact(clip_tokenizer, "Scratches on the tree are visible! a black window with a dented side",
           ["Scratches on the tree are visible!", "a black window with a dented side"])
