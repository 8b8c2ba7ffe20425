"""benchmarks/feed.py runs end to end at tiny shapes, so it cannot rot (no assertion on time)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_feed_benchmark_runs_at_tiny_shapes(tmp_path, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_feed", BENCHMARKS / "feed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "feed.json"
    result = bench.main(["--shapes", "tiny", "--workers", "0,1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| mine (FLISM, 15 regions) |" in printed and "DOCCI" in printed
    assert result["mine_outputs_equal"] and out.is_file()
    for stage in ("mine", "train"):
        assert result[stage]["main_ms"] > 0 and result[stage]["ceiling_16"] > 0
