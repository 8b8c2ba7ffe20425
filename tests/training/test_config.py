"""Training settings whose defaults depend on the model: the text context by backbone kind."""

from __future__ import annotations

import argparse

from goalclip.core.options import add_options
from goalclip.training.config import TEXT_CONTEXTS, TrainConfig


def test_the_text_context_default_is_the_backbones_own_and_a_given_one_wins() -> None:
    config = TrainConfig(model="m", data="d", out="o")
    assert config.max_text_len is None and config.keep_positions == 20
    assert (config.text_context("clip"), config.text_context("siglip")) == (248, 196)
    assert TrainConfig(model="m", data="d", out="o", max_text_len=100).text_context("siglip") == 100


def test_each_default_is_the_longest_stretch_of_the_stock_context_keeping_20() -> None:
    """Long-CLIP's rule, 4L - 3*keep, from CLIP's 77 and SigLIP's 64 text positions."""
    assert TEXT_CONTEXTS == {"clip": 4 * 77 - 3 * 20, "siglip": 4 * 64 - 3 * 20}


def test_the_help_states_each_default() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, TrainConfig, ["max_text_len", "recipe"])
    text = " ".join(parser.format_help().split())
    assert "248 for a CLIP, 196 for a SigLIP" in text
    assert "A SigLIP model gets the same choices" in text
