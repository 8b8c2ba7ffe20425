"""``goalclip serve`` refuses what it cannot serve before it listens: one line on stderr, exit 1."""

from __future__ import annotations

import pytest

from goalclip.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "--host 0.0.0.0: only loopback addresses"),
        (["--host", "example.org"], "--host example.org: only loopback addresses"),
        (["--model", "a", "--model", "b", "--model", "c", "--images", "."], "at most two models side by side"),
        (["--model", "a"], "--model needs --images DIR or --data MANIFEST"),
    ],
)
def test_serve_refuses_bad_flags_with_one_line(argv, message, capsys):
    assert main(["serve", "--port", "0", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
