"""Clean-up of generated captions: prompt echo, role labels, whitespace, a sentence cut off by the limit."""

from __future__ import annotations

import re
from dataclasses import dataclass

from goalclip.core.text import clean_text, split_sentences

# Chat models sometimes start their answer with the role they play or the template's closing tag.
_ROLE_PREFIX = re.compile(r"^\s*(?:\[/INST\]|<\|im_start\|>assistant|(?:ASSISTANT|assistant|Assistant)\s*:?)\s*")
# A finished sentence ends with . ! or ? , possibly followed by closing quotes or brackets.
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")


@dataclass(frozen=True)
class CleanCaption:
    """A cleaned caption and whether a final sentence cut off by the token limit was dropped."""

    text: str
    cut_sentence: bool


def clean_caption(text: str, prompt: str, hit_limit: bool) -> CleanCaption:
    """Strip an echoed prompt and role label, normalise whitespace, and, when generation stopped at
    the token limit, drop the unfinished last sentence (a half sentence is a bad mining target).

    A caption that was all one unfinished sentence becomes empty; the caller skips and counts it.
    """
    text = text.strip()
    echo = prompt.strip()
    if echo and text.startswith(echo):
        text = text[len(echo):]
    text = clean_text(_ROLE_PREFIX.sub("", text))
    if not hit_limit or not text or _SENTENCE_END.search(text):
        return CleanCaption(text, False)
    sentences = split_sentences(text)
    return CleanCaption(text[: sentences[-1].start].rstrip(), True)
