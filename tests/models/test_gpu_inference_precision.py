"""``--precision`` of mine and search: bf16 autocast by default on CUDA, fp32 (with TF32 matmuls on CUDA) else.

No GPU here: bf16 runs under CPU autocast, which rounds the same matmul inputs to bf16 as CUDA autocast. The
stated tolerance: every pair's score within 0.01 of fp32, the best pair's too; which pair is best may change
where fp32 had a runner-up that close (the untrained tiny model has exact ties between identical background
crops).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from goalclip.cli import main
from goalclip.models.precision import inference_precision, resolve_precision


def _mine(tiny_world, out, precision):
    assert main(["mine", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--regions", "flism",
                 "--boxes", str(tiny_world.boxes), "--out", str(out), "--device", "cpu", "--precision", precision,
                 "--num-workers", "0", "--no-progress"]) == 0
    return {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}


def _scores(record):
    return {(c["sentence"], tuple(c["box"])): c["score"] for c in record["candidates"]}


def test_mining_in_bf16_scores_within_tolerance_of_fp32(tiny_world, tmp_path, caplog):
    fp32 = _mine(tiny_world, tmp_path / "fp32.jsonl", "fp32")
    with caplog.at_level(logging.INFO, logger="goalclip.mining.mine"):
        bf16 = _mine(tiny_world, tmp_path / "bf16.jsonl", "bf16")
    assert "mining in bf16 autocast over torch.float32 weights on cpu" in caplog.text
    assert bf16.keys() == fp32.keys() and len(fp32) == len(tiny_world.ids)
    for image_id, record in fp32.items():
        want, got = _scores(record), _scores(bf16[image_id])
        assert all(got[key] == pytest.approx(score, abs=0.01) for key, score in want.items() if key in got)
        assert bf16[image_id]["local"]["score"] == pytest.approx(record["local"]["score"], abs=0.01)


def test_auto_is_bf16_on_cuda_and_fp32_with_tf32_matmuls_elsewhere(monkeypatch):
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"
    with pytest.raises(ValueError, match="--precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", torch.device("cpu"))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        with inference_precision("fp32", torch.device("cpu")):
            assert torch.get_float32_matmul_precision() == "highest"  # TF32 is a CUDA matter
        with inference_precision("fp32", torch.device("cuda", 0)):
            assert torch.get_float32_matmul_precision() == "high"  # TF32 tensor cores where fp32 is kept
        assert torch.get_float32_matmul_precision() == "highest"
        with inference_precision("bf16", torch.device("cpu")):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    finally:
        torch.set_float32_matmul_precision(before)


def test_search_in_bf16_ranks_within_tolerance_of_fp32_and_keeps_its_own_index(tiny_world, tmp_path, caplog):
    def search(precision):
        out = tmp_path / f"{precision}.json"
        assert main(["search", "--model", str(tiny_world.model), "--images", str(tiny_world.root / "images"),
                     "--query", "A red circle is drawn here.", "--query", "A blue square.", "--k", "8",
                     "--index-dir", str(tmp_path / "index"), "--device", "cpu", "--precision", precision,
                     "--out", str(out), "--no-progress"]) == 0
        summary = json.loads(out.read_text())
        return summary, [{hit["path"]: hit["score"] for hit in result["hits"]} for result in summary["results"]]

    _, fp32 = search("fp32")
    with caplog.at_level(logging.INFO, logger="goalclip.cli.search"):
        summary, bf16 = search("bf16")
    assert "searching in bf16 autocast over torch.float32 weights on cpu" in caplog.text
    assert summary["embedded"] == len(tiny_world.ids)  # not the fp32 index's embeddings
    for want, got in zip(fp32, bf16, strict=True):
        assert got.keys() == want.keys()
        assert all(got[path] == pytest.approx(score, abs=0.01) for path, score in want.items())


def test_eval_auto_precision_is_fp32_on_cpu_and_bf16_stays_within_tolerance(tiny_world, tmp_path, caplog):
    def evaluate(*precision):
        out = tmp_path / f"{'-'.join(precision) or 'default'}.json"
        assert main(["eval", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--ks", "1", "5",
                     "--device", "cpu", *precision, "--out", str(out), "--no-progress"]) == 0
        return json.loads(out.read_text())

    with caplog.at_level(logging.INFO, logger="goalclip.evaluation.retrieval"):
        default = evaluate()
    assert default["config"]["precision"] == "fp32"  # auto: fp32 on a CPU
    assert "encoding with torch.float32 weights on cpu" in caplog.text
    bf16 = evaluate("--precision", "bf16")
    assert bf16["config"]["precision"] == "bf16"
    want, got = default["models"][0]["metrics"], bf16["models"][0]["metrics"]
    assert got.keys() == want.keys() and len(want) == 4
    assert all(got[metric] == pytest.approx(value, abs=12.5) for metric, value in want.items())  # 1 of 8 images
