"""Output checks see through option values that are text, not paths (core/paths.py)."""

from __future__ import annotations

from goalclip.core.paths import check_outputs


def test_a_text_value_longer_than_a_file_name_is_not_taken_for_an_input_file(tmp_path):
    query = "A long caption sentence. " * 20  # 500 characters: no file system takes it as a name
    check_outputs({"--out": (str(tmp_path / "out.json"), "file")}, {"--query": query})
