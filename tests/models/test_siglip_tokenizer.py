"""A SigLIP v1 folder as the hub ships it (SentencePiece only) loads with a fast tokenizer equal to the slow one."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
from transformers import AutoTokenizer, SiglipTokenizer

from goalclip.core.text import token_span
from goalclip.models.clip import load_clip, save_clip
from tests.conftest import siglip_corpus, tiny_caption

# What SiglipTokenizer canonicalises (case, ASCII punctuation, whitespace runs, ends) and what
# SentencePiece normalises (NFKC: ligatures, full-width letters, no-break spaces) or does not know.
TRICKY = [
    "Hello, World!  A RED dog-on the left.", "  leading and trailing  ", "tabs\tand\nnewlines\r\n here",
    "über café naïve ﬁne Ⅻ ½ ｆｕｌｌ", "don't stop (ok) [x] {y} <z> a_b", "", ".", "...", "a.b.c", "emoji 😀 here",
    "red▁blue", "\u00a0nbsp\u00a0inside\u2009thin", "x\x1cy\x1dz", "İstanbul ΣΑΣ", "A red square—is drawn here…",
]


def random_texts(count: int) -> list[str]:
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.punctuation + " \t\n" + "éü—…😀ﬁ\u00a0"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def test_the_hub_folder_has_only_a_sentencepiece_tokenizer(hub_siglip: Path) -> None:
    assert not (hub_siglip / "tokenizer.json").exists()
    assert type(AutoTokenizer.from_pretrained(hub_siglip)) is SiglipTokenizer  # slow: no offsets


def test_it_loads_with_a_fast_tokenizer_giving_the_slow_tokenizers_ids(hub_siglip: Path, tiny_world) -> None:
    bundle = load_clip(str(hub_siglip))
    slow = SiglipTokenizer.from_pretrained(hub_siglip)
    assert bundle.kind == "siglip" and bundle.tokenizer.is_fast
    texts = [*siglip_corpus(tiny_world.texts), *TRICKY, *random_texts(500)]
    assert bundle.tokenizer(texts)["input_ids"] == slow(texts)["input_ids"]
    assert (bundle.tokenizer.pad_token_id, bundle.tokenizer.eos_token_id) == (slow.pad_token_id, slow.eos_token_id)
    assert bundle.tokenizer.model_input_names == ["input_ids"]


def test_offsets_point_into_the_caption_as_written(hub_siglip: Path) -> None:
    """The text TSL span of a sentence holds that sentence's own tokens, although case and punctuation went.

    A bare word-start piece (``▁`` before a word with no ``▁word`` piece) stands for the space before the
    word, so :func:`token_span` leaves it with the previous sentence.
    """
    tokenizer = load_clip(str(hub_siglip)).tokenizer
    caption, sentence = tiny_caption("Red", "square")
    enc = tokenizer(caption, return_offsets_mapping=True, return_special_tokens_mask=True)
    start = caption.index(sentence)
    first, end = token_span(enc["offset_mapping"], enc["special_tokens_mask"], (start, start + len(sentence)))
    own = tokenizer(sentence)["input_ids"][:-1]  # without its </s>
    if tokenizer.convert_ids_to_tokens(own[0]) == "▁":
        assert enc["offset_mapping"][first - 1] == (start - 1, start)  # the space before the sentence
        own = own[1:]
    assert enc["input_ids"][first:end] == own


def test_the_saved_folder_loads_fast_anywhere_with_the_same_ids(hub_siglip: Path, tmp_path: Path) -> None:
    saved = save_clip(load_clip(str(hub_siglip)), tmp_path / "saved")
    assert (saved / "tokenizer.json").exists()
    again = AutoTokenizer.from_pretrained(saved)
    slow = SiglipTokenizer.from_pretrained(hub_siglip)
    assert again.is_fast and again(TRICKY)["input_ids"] == slow(TRICKY)["input_ids"]


def test_without_sentencepiece_the_error_names_the_extra_to_install(hub_siglip: Path, monkeypatch) -> None:
    """transformers' own words when sentencepiece is missing (its last fallback for a SentencePiece-only folder)."""
    from goalclip.models import clip

    def missing(*args, **kwargs):
        raise ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a `tokenizers` library "
                         "serialization file, \n(2) a slow tokenizer instance to convert or \n(3) an equivalent slow "
                         "tokenizer class to instantiate and convert. \nYou need to have sentencepiece or tiktoken "
                         "installed to convert a slow tokenizer to a fast one.")

    monkeypatch.setattr(clip.AutoTokenizer, "from_pretrained", missing)
    wanted = r"hub_siglip: no usable tokenizer .* pip install 'goalclip\[siglip\]'"
    with pytest.raises(clip.ModelLoadError, match=wanted):
        clip.load_processors(str(hub_siglip))
