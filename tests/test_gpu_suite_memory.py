"""``benchmarks/gpu_suite.py`` sizes each section to fit the GPU and survives a section that does not.

At ViT-B/16 batch 128 and ViT-L/14 batch 64 the reference-style step alone needs more than an 80 GB card;
the suite wrote its results only at the end, so the first out-of-memory error lost every section.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_benchmarks_smoke import _load


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
