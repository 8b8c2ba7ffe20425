"""goalclip: fine-tune CLIP for long captions with GOAL / FAST-GOAL, and evaluate it."""

__version__ = "0.1.0"
