"""Benchmark scripts run end to end at tiny shapes, so they cannot rot (no assertion on time)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_gpu_suite_runs_every_section_at_reduced_shapes(tmp_path, capsys):
    bench = _load("gpu_suite")
    out = tmp_path / "suite.json"
    result = bench.main(["--shapes", "reduced", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    sections = [row["section"] for row in result["rows"]]
    assert set(sections) == set(bench.SECTIONS) and "| section | variant | throughput |" in printed
    for row in result["rows"]:
        assert row["throughput"] > 0, row  # every section measured something
    steps = [row for row in result["rows"] if row["section"] == "step-b16"]
    assert [row["variant"] for row in steps] == ["reference-style, fp32", "goalclip, fp32"] and steps[-1]["speedup"] > 0
    assert steps[0]["model_tflop_per_step"] == steps[1]["model_tflop_per_step"] > 0
    [trainer] = [row for row in result["rows"] if row["section"] == "trainer"]
    assert trainer["speed_path"] == {"attention": "sdpa", "fused_adamw": False, "pin_memory": False, "compile": False}
    [gradcache] = [row for row in result["rows"] if row["section"] == "gradcache"]
    assert "needs grad cache" not in gradcache.get("note", "")  # gradient caching is merged: it is measured
    assert json.loads(out.read_text())["rows"] == result["rows"]


def test_model_flops_of_a_goal_step_follow_the_formula():
    bench = _load("gpu_suite")
    from transformers import CLIPConfig

    config = CLIPConfig(text_config={"hidden_size": 8, "intermediate_size": 32, "num_hidden_layers": 2,
                                     "num_attention_heads": 2},
                        vision_config={"hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 3,
                                       "num_attention_heads": 2,
                                       "image_size": 32, "patch_size": 16})
    batch = {"pixel_values": torch.zeros(6, 3, 32, 32), "caption_ids": torch.zeros(3, 10, dtype=torch.long),
             "sentence_ids": torch.zeros(3, 4, dtype=torch.long)}
    vision = 6 * 3 * (2 * 5 * (4 * 16 * 16 + 2 * 16 * 64) + 4 * 25 * 16) + 6 * 2 * 4 * 3 * 256 * 16
    text = 3 * 2 * (2 * 10 * (4 * 64 + 2 * 8 * 32) + 4 * 100 * 8) + 3 * 2 * (2 * 4 * (4 * 64 + 2 * 8 * 32) + 4 * 16 * 8)
    assert bench.goal_step_flops(config, batch) == 3 * (vision + text)


# The suite sizes each section to fit the GPU and survives a section that does not: at ViT-B/16 batch 128 and
# ViT-L/14 batch 64 the reference-style step alone needs more than an 80 GB card, and results used to be
# written only at the end, so the first out-of-memory error lost every section.


@pytest.mark.parametrize("section", ["step-b16", "step-l14"])
def test_the_real_step_sections_are_sized_to_fit_75_gib(section, tmp_path):
    bench = _load("gpu_suite")
    plan = bench.plan_step(section, "real", tmp_path)  # the real shapes on the meta device: no compute
    assert plan["estimated_gib"] <= bench.BUDGET_GIB == 75
    assert plan["batch"] >= 16 and plan["bytes_per_token"] > 0
    if plan["batch"] < plan["configured_batch"]:
        assert plan["estimated_gib_configured"] > bench.BUDGET_GIB


def test_a_section_out_of_memory_is_a_row_and_each_section_is_written_when_done(tmp_path, capsys, monkeypatch):
    bench = _load("gpu_suite")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "interleaved", out_of_memory)  # the step section's timed steps
    monkeypatch.setattr(bench, "train", interrupted)  # the gradcache section's run
    out = tmp_path / "suite.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--shapes", "reduced", "--device", "cpu", "--sections", "step-b16,eval,gradcache",
                    "--out", str(out)])
    printed = capsys.readouterr().out
    for section in ("step-b16", "eval", "gradcache"):
        assert f"{section}: estimated peak" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [row["section"] for row in rows] == ["step-b16", "eval"]
    assert rows[0]["throughput"] is None and rows[0]["note"].startswith("did not fit: CUDA out of memory")
    assert rows[1]["throughput"] > 0
