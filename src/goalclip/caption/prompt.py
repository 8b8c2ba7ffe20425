"""The captioning prompt: a built-in default, or the user's own file; its hash travels with every record.

Torch-free (the CLI reads its defaults here without loading torch), so the default captioner lives here too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "llava-hf/llava-v1.6-mistral-7b-hf"  # LLaVA-NeXT (Mistral 7B)

# Asks for what FAST-GOAL's training captions need: long, visually grounded descriptions that
# cover the scene, each object's attributes and where things are, and nothing that cannot be seen
# (a sentence about something invisible becomes a wrong local pair when mined).
DEFAULT_PROMPT = (
    "Write a detailed description of this image as one paragraph of plain sentences. "
    "First say what kind of scene or setting it is. Then go through the things you can see, one after "
    "another: what each is, its colour, shape, material, size and state, any visible text, and what "
    "people or animals are doing. Say where each thing is in the picture and how it is placed relative "
    "to the others (left or right of, in front of, behind, above, below, next to). "
    "Describe only what is visible in the image. Do not guess names, places, intentions, sounds or "
    "anything else that cannot be seen, and do not use lists or headings."
)


@dataclass(frozen=True)
class Prompt:
    """Prompt text with its sha256, so a record says exactly which prompt produced it."""

    text: str
    sha256: str
    source: str  # "built-in" or the file's path


def load_prompt(path: str | None = None) -> Prompt:
    """The built-in prompt, or the text of ``path`` (stripped; an empty file is an error)."""
    if path is None:
        text, source = DEFAULT_PROMPT, "built-in"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise OSError(f"{path}: cannot read the prompt file ({exc.strerror or exc})") from None
        if not text:
            raise ValueError(f"{path}: the prompt file is empty")
        source = str(path)
    return Prompt(text, hashlib.sha256(text.encode("utf-8")).hexdigest(), source)
