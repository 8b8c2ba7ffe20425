"""Benchmark scripts run end to end at tiny shapes, so they cannot rot (no assertion on time)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lism_vs_flism_runs_at_tiny_shapes(tmp_path, capsys):
    bench = _load("lism_vs_flism")
    out = tmp_path / "bench.json"
    result = bench.main(["--shapes", "tiny", "--images", "2", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "LISM/FLISM processing time" in printed and "| LISM |" in printed and "| FLISM |" in printed
    for method in ("lism", "flism"):
        assert set(result[method]["stage_seconds"]) == {"load", "decode", "propose", "crop", "embed", "match"}
        assert result[method]["processing_s"] > 0
    assert "grid" in result["flism"]["sources"] or result["flism"]["pairs"] == 0
    assert result["ratio_lism_over_flism"] > 0 and out.is_file()


def test_grad_cache_benchmark_runs_at_tiny_shapes(tmp_path, capsys):
    bench = _load("grad_cache")
    out = tmp_path / "bench.json"
    result = bench.main(["--batch", "4", "--chunk", "2", "--small", "2", "--steps", "1", "--warmup", "0",
                         "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| batch 4, --grad-cache-chunk 2 |" in printed and "| plain batch 2 |" in printed
    check = result["loss_check"]
    assert abs(check["plain"] - check["grad_cache"]) < 1e-5 * abs(check["plain"])  # the same big-batch step
    assert set(result["median_s"]) == {"2", "4", "4:2"} and out.is_file()
