"""Caption text: cleaning, sentence splitting with exact character spans, and token spans."""

from __future__ import annotations

import pytest

from goalclip.core.text import Sentence, clean_text, locate_sentence, split_sentences, token_span, usable_span


# ----------------------------------------------------------------------------- clean_text


def test_clean_text_quotes_entities_and_whitespace() -> None:
    raw = "  \u201cStop\u201d &amp; it\u2019s a &lt;b&gt; sign\t with   &amp;amp; spaces \n\n\tand lines  "
    assert clean_text(raw) == "\"Stop\" & it's a <b> sign with & spaces\nand lines"


def test_clean_text_fixes_mojibake_and_leaves_clean_text_alone() -> None:
    assert clean_text("caf\u00c3\u00a9 table") == "caf\u00e9 table"  # UTF-8 read as Latin-1
    clean = 'A red ball. It is 3.5 m wide, "round" & shiny.'
    assert clean_text(clean) == clean
    assert clean_text(clean_text("  \u201ca\u201d  ")) == clean_text("  \u201ca\u201d  ") == '"a"'


# ----------------------------------------------------------------------------- split_sentences


def _texts(caption: str) -> list[str]:
    return [s.text for s in split_sentences(caption)]


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        (
            "Dr. Smith stands by a 3.5 m tall door. It is open.",
            ["Dr. Smith stands by a 3.5 m tall door.", "It is open."],
        ),
        ('He says "hello there." Then a dog barks.', ['He says "hello there."', "Then a dog barks."]),
        ("The sign reads \"STOP\". A car waits.", ['The sign reads "STOP".', "A car waits."]),
        ("A red ball on the left. A blue cube on the right", ["A red ball on the left.", "A blue cube on the right"]),
        ("A red ball.The blue cube is large.", ["A red ball.", "The blue cube is large."]),
        ("A red ball.A blue cube is large.", ["A red ball.", "A blue cube is large."]),
        ("It is 3.5 m tall.The door is red.", ["It is 3.5 m tall.", "The door is red."]),
        ("The U.S.A. flag flies.The sky is blue.", ["The U.S.A. flag flies.", "The sky is blue."]),
        ("Mr.Smith waves at e.g.This dog.", ["Mr.Smith waves at e.g.This dog."]),
        ("a red ball and a blue cube with no boundary at all", ["a red ball and a blue cube with no boundary at all"]),
        ("A dog!A cat? A bird.", ["A dog!", "A cat?", "A bird."]),
    ],
)
def test_split_sentences_hard_cases(caption: str, expected: list[str]) -> None:
    sentences = split_sentences(caption)
    assert [s.text for s in sentences] == expected
    for s in sentences:
        assert caption[s.start : s.end] == s.text
        assert s.text == s.text.strip()
    starts = [s.start for s in sentences]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_split_sentences_spans_of_repeated_sentences_are_distinct() -> None:
    caption = "A cat.  A cat. A dog. A cat."
    sentences = split_sentences(caption)
    assert sentences == [
        Sentence("A cat.", 0, 6),
        Sentence("A cat.", 8, 14),
        Sentence("A dog.", 15, 21),
        Sentence("A cat.", 22, 28),
    ]


def test_split_sentences_empty_and_blank() -> None:
    assert split_sentences("") == []
    assert split_sentences("   ") == []


# ----------------------------------------------------------------------------- locate_sentence


def test_locate_sentence_first_occurrence_and_absent() -> None:
    caption = "A cat sits. A dog runs. A cat sits."
    assert locate_sentence(caption, "A cat sits.") == (0, 11)
    assert locate_sentence(caption, "A dog runs.") == (12, 23)
    assert caption[12:23] == "A dog runs."
    assert locate_sentence(caption, "A bird sings.") is None
    assert locate_sentence(caption, "") is None


def test_locate_sentence_finds_a_sentence_across_a_line_break() -> None:
    # Mined before line breaks were kept in cleaned captions: one sentence over two lines.
    caption = clean_text("A red car\nparked by the road. A tree.")
    assert caption == "A red car\nparked by the road. A tree."
    assert locate_sentence(caption, "A red car parked by the road.") == (0, 29)
    assert locate_sentence(caption, "A tree.") == (30, 37)


def test_locate_sentence_substring_fallback() -> None:
    # Not a splitter sentence, but present: its first occurrence.
    caption = "A red ball, a blue cube and a red ball."
    assert locate_sentence(caption, "a blue cube") == (12, 23)


# ----------------------------------------------------------------------------- token_span


def test_token_span_straddling_token_goes_to_majority_side() -> None:
    # Hand-made offset mapping: BOS, "abcd" (0-4), "efghi" (4-9), "jkl" (9-12), EOS.
    offsets = [(0, 0), (0, 4), (4, 9), (9, 12), (0, 0)]
    special = [1, 0, 0, 0, 1]
    # Boundary at 7: the middle token has 3 chars in the first sentence, 2 in the second.
    assert token_span(offsets, special, (0, 7)) == (1, 3)
    assert token_span(offsets, special, (7, 12)) == (3, 4)
    # Boundary at 6: 2 chars in the first sentence, 3 in the second.
    assert token_span(offsets, special, (0, 6)) == (1, 2)
    assert token_span(offsets, special, (6, 12)) == (2, 4)
    # A span holding no token midpoint, and special tokens are never part of a span.
    assert token_span(offsets, special, (4, 5)) is None
    assert token_span([(0, 0), (0, 0)], [1, 1], (0, 10)) is None


def test_token_span_even_split_goes_to_the_earlier_sentence() -> None:
    # BOS, "left" (3-7), '."' (7-9), "stop" (9-13), EOS: the boundary at 8 splits '."' 1/1.
    offsets = [(0, 0), (3, 7), (7, 9), (9, 13), (0, 0)]
    special = [1, 0, 0, 0, 1]
    assert token_span(offsets, special, (3, 8)) == (1, 3)
    assert token_span(offsets, special, (8, 13)) == (3, 4)


def test_token_span_skips_empty_tokens() -> None:
    offsets = [(0, 0), (0, 3), (3, 3), (4, 7), (0, 0)]
    special = [1, 0, 0, 0, 1]
    assert token_span(offsets, special, (3, 7)) == (3, 4)


def _encode(tokenizer, caption: str) -> dict:
    return tokenizer(caption, return_offsets_mapping=True, return_special_tokens_mask=True)


def test_token_span_from_real_offsets_matches_sentence_alone(tiny_bundle) -> None:
    tokenizer = tiny_bundle.tokenizer
    caption = clean_text("The picture has a plain white background. A red square is drawn here. Nothing else is in it.")
    enc = _encode(tokenizer, caption)
    ids = enc["input_ids"]
    spans = []
    for sentence in split_sentences(caption):
        span = token_span(enc["offset_mapping"], enc["special_tokens_mask"], (sentence.start, sentence.end))
        assert span is not None
        spans.append(span)
        alone = tokenizer(sentence.text)["input_ids"]
        assert alone[0] == tokenizer.bos_token_id and alone[-1] == tokenizer.eos_token_id
        # No BPE merge crosses these boundaries (a space follows each period): same tokens.
        assert ids[span[0] : span[1]] == alone[1:-1]
        assert tokenizer.decode(ids[span[0] : span[1]]).replace(" .", ".").strip() == sentence.text.lower()
    # The sentences tile the caption's tokens between BOS and EOS.
    assert spans[0][0] == 1 and spans[-1][1] == len(ids) - 1
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_token_span_glued_boundary(tiny_bundle) -> None:
    """"red.The": the sentence gets the period token, the next one starts after it."""
    tokenizer = tiny_bundle.tokenizer
    caption = "A red ball.The blue cube."
    enc = _encode(tokenizer, caption)
    first, second = split_sentences(caption)
    a = token_span(enc["offset_mapping"], enc["special_tokens_mask"], (first.start, first.end))
    b = token_span(enc["offset_mapping"], enc["special_tokens_mask"], (second.start, second.end))
    assert a is not None and b is not None and a[1] == b[0]
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[a[1] - 1] == ".</w>" and tokens[b[0]] == "the</w>"
    assert tokenizer.decode(enc["input_ids"][a[0] : a[1]]).replace(" .", ".").strip() == "a red ball."


def test_usable_span_past_the_context(tiny_bundle) -> None:
    tokenizer = tiny_bundle.tokenizer
    max_len = tiny_bundle.max_text_len  # 16: tokens 0..14 survive truncation, EOS at 15
    assert max_len == 16
    caption = "The picture has a plain white background. A red square is drawn here. Nothing else is in it."
    enc = _encode(tokenizer, caption)
    first, second, _ = split_sentences(caption)
    span1 = token_span(enc["offset_mapping"], enc["special_tokens_mask"], (first.start, first.end))
    span2 = token_span(enc["offset_mapping"], enc["special_tokens_mask"], (second.start, second.end))
    assert span1 == (1, 9) and span2 == (9, 16)
    assert usable_span(span1, max_len) == span1
    assert usable_span(span2, max_len) is None  # its last token would be replaced by EOS
    assert usable_span(span2, max_len + 1) == span2
    truncated = tokenizer(caption, truncation=True, max_length=max_len)["input_ids"]
    assert truncated[span1[0] : span1[1]] == enc["input_ids"][span1[0] : span1[1]]
    assert truncated[-1] == tokenizer.eos_token_id and len(truncated) == max_len
    assert usable_span(None, max_len) is None
    assert usable_span((3, 15), 16) == (3, 15)
    assert usable_span((3, 16), 16) is None
