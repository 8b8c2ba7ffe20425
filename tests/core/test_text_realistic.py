"""Sentence splitting on the failure kinds of real long captions, with OpenAI's real CLIP BPE.

Each test composes a caption showing one kind of mis-split seen on DOCCI/DCI/Urban1k-style
captions, asserts the exact sentences, and checks that every sentence's token span (from the
offset mapping of the whole caption) decodes back to exactly that sentence. The tokenizer is
OpenAI's vocabulary as shipped inside open_clip's wheel, so BPE merges such as ``."`` are the
real ones.
"""

from __future__ import annotations

import json

from goalclip.cli import main
from goalclip.core.records import read_manifest
from goalclip.core.text import Sentence, clean_text, split_sentences, token_span
from goalclip.training.data import TrainDataset, load_examples


def _squash(text: str) -> str:
    """What CLIP's BPE keeps of a text: lowercase, no whitespace."""
    return "".join(text.lower().split())


def _spans(tokenizer, caption: str, sentences: list[Sentence]) -> tuple[list, list[tuple[int, int] | None]]:
    enc = tokenizer(caption, return_offsets_mapping=True, return_special_tokens_mask=True)
    spans = [token_span(enc["offset_mapping"], enc["special_tokens_mask"], (s.start, s.end)) for s in sentences]
    return enc["input_ids"], spans


def _assert_split(tokenizer, caption: str, expected: list[str]) -> None:
    """The sentences are ``expected``, spans are exact in characters and in tokens."""
    sentences = split_sentences(caption)
    assert [s.text for s in sentences] == expected
    for s in sentences:
        assert caption[s.start : s.end] == s.text
    ids, spans = _spans(tokenizer, caption, sentences)
    for sentence, span in zip(sentences, spans):
        assert span is not None, sentence
        assert _squash(tokenizer.decode(ids[span[0] : span[1]])) == _squash(sentence.text)


def test_space_before_closing_quote_is_still_a_boundary(clip_tokenizer) -> None:
    """(a) ``"TAXI. " There``: the quote closes, the next sentence starts after it."""
    _assert_split(
        clip_tokenizer,
        'A yellow car has a roof sign that says "TAXI. " There are two cars behind it. The sky is grey.',
        ['A yellow car has a roof sign that says "TAXI. "', "There are two cars behind it.", "The sky is grey."],
    )
    _assert_split(
        clip_tokenizer,
        'The poster shouts "SALE! " Below it, prices are listed.',
        ['The poster shouts "SALE! "', "Below it, prices are listed."],
    )


def test_inch_mark_does_not_swallow_the_next_sentences(clip_tokenizer) -> None:
    """(b) an unpaired ``"`` (an inch mark) pairs with the next quote and protects what lies between."""
    _assert_split(
        clip_tokenizer,
        'A man about 6\'2" tall stands by a door. The sign above says "OPEN". The door is red.',
        ["A man about 6'2\" tall stands by a door.", 'The sign above says "OPEN".', "The door is red."],
    )


def test_unclosed_quote_does_not_swallow_the_next_sentences(clip_tokenizer) -> None:
    """(b) a quote never closed in its sentence stays with its word and protects nothing."""
    _assert_split(
        clip_tokenizer,
        'The sign says "OPEN. A cat sits on the mat. A label below says "GO" in green letters.',
        ['The sign says "OPEN.', "A cat sits on the mat.", 'A label below says "GO" in green letters.'],
    )
    _assert_split(
        clip_tokenizer,
        'A red door. "A cat sits on the mat. A dog sleeps.',
        ["A red door.", '"A cat sits on the mat.', "A dog sleeps."],
    )


def test_line_breaks_are_boundaries_after_cleaning(clip_tokenizer) -> None:
    """(c) DCI-style lines without end punctuation: cleaning keeps one line break per run."""
    raw = "A red car parked by the road\nThe car has four doors  \r\n\n  A tall tree stands behind it."
    caption = clean_text(raw)
    assert caption == "A red car parked by the road\nThe car has four doors\nA tall tree stands behind it."
    _assert_split(
        clip_tokenizer,
        caption,
        ["A red car parked by the road", "The car has four doors", "A tall tree stands behind it."],
    )
    # The line break tokenises as a space: same ids as the one-line caption.
    assert clip_tokenizer(caption)["input_ids"] == clip_tokenizer(caption.replace("\n", " "))["input_ids"]


def test_spaced_urls_numbers_and_abbreviations_are_not_split(clip_tokenizer) -> None:
    """(d) ``www. x. com``, ``1. 5``, ``p. m.``: the spaces came from the caption writer, not a boundary."""
    _assert_split(
        clip_tokenizer,
        "A banner reads visit www. example. com for more. The pole is 1. 5 m tall. "
        "The clock shows 3 p. m. in the afternoon. A dog sits.",
        [
            "A banner reads visit www. example. com for more.",
            "The pole is 1. 5 m tall.",
            "The clock shows 3 p. m. in the afternoon.",
            "A dog sits.",
        ],
    )
    _assert_split(
        clip_tokenizer,
        "The price tag shows $2. 99 in red. It is on a shelf.",
        ["The price tag shows $2. 99 in red.", "It is on a shelf."],
    )


def test_sentences_without_a_letter_or_digit_are_dropped(clip_tokenizer) -> None:
    """(e) stray end marks are not sentences."""
    _assert_split(
        clip_tokenizer,
        "A red ball. . The cube is blue. . . A cone. .",
        ["A red ball.", "The cube is blue.", "A cone."],
    )
    assert split_sentences(". . !") == []


def test_merged_quote_period_token_goes_to_the_earlier_sentence(clip_tokenizer) -> None:
    """(f) ``."`` is one BPE token; split 1/1 by a boundary it must not start the next sentence."""
    caption = 'He left the room."Stop," she said. A car waits.'
    sentences = split_sentences(caption)
    assert [s.text for s in sentences] == ["He left the room.", '"Stop," she said.', "A car waits."]
    ids, spans = _spans(clip_tokenizer, caption, sentences)
    tokens = clip_tokenizer.convert_ids_to_tokens(ids)
    assert tokens[spans[0][1] - 1] == '."</w>'
    assert tokens[spans[1][0]] == "stop</w>"
    assert spans[0][1] == spans[1][0] and spans[1][1] == spans[2][0]


def test_glued_quote_and_period_keep_exact_spans(clip_tokenizer) -> None:
    """(f) ``."The`` and ``".The``: the merged token lies inside the first sentence."""
    _assert_split(
        clip_tokenizer,
        'The sign reads "STOP."The car waits at the line.',
        ['The sign reads "STOP."', "The car waits at the line."],
    )
    _assert_split(
        clip_tokenizer,
        'He said "no".The dog runs away.',
        ['He said "no".', "The dog runs away."],
    )


def test_title_after_a_glued_boundary_stays_with_its_name(clip_tokenizer) -> None:
    """``bicycle.Dr. Patel``: the glued boundary is before the title, not after it."""
    _assert_split(
        clip_tokenizer,
        "A green bicycle.Dr. Patel's clinic sign hangs above the door. It is red.",
        ["A green bicycle.", "Dr. Patel's clinic sign hangs above the door.", "It is red."],
    )


def test_mine_and_train_data_on_dci_style_captions(tiny_world, tiny_bundle, tmp_path) -> None:
    """User path: ``goalclip mine`` on captions whose lines lack end punctuation mines one line,
    and the training data finds that sentence's exact token span in the caption."""
    records = [json.loads(line) for line in tiny_world.captions.read_text().splitlines()]
    lines = {}
    for record in records:
        record["image"] = str(tiny_world.root / record["image"])
        object_line = split_sentences(record["caption"])[1].text.rstrip(".")  # "A red square is drawn here"
        lines[record["id"]] = ["The picture has a plain white background", object_line, "Nothing else"]
        record["caption"] = "\n".join(lines[record["id"]])
    data = tmp_path / "dci.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "mined.jsonl"
    args = ["mine", "--model", str(tiny_world.model), "--data", str(data), "--out", str(out)]
    assert main([*args, "--regions", "grid", "--num-workers", "0", "--no-progress"]) == 0
    mined = read_manifest(out)
    assert len(mined) == len(records)
    for record in mined:
        assert record["local"]["sentence"] in lines[record["id"]]

    examples = load_examples(out, need_local=True)
    dataset = TrainDataset(examples, tiny_bundle, need_local=True)
    tokenizer = tiny_bundle.tokenizer
    for index, example in enumerate(examples):
        assert example.caption[slice(*example.sentence_chars)] == example.sentence
        enc = tokenizer(example.caption, return_offsets_mapping=True, return_special_tokens_mask=True)
        span = token_span(enc["offset_mapping"], enc["special_tokens_mask"], example.sentence_chars)
        assert _squash(tokenizer.decode(enc["input_ids"][span[0] : span[1]])) == _squash(example.sentence)
        assert dataset[index]["pairs"][0]["span"] in (span, None)  # None: past the tiny model's 16 tokens
